"""The shipped indoor models find real places: 7-Scenes colour images against depth scans.

Queries are frames 400-599, which neither model was trained on (training used 0-399); the map is
the depth scans of all 600 frames. Paper protocol and the revisit protocol (map entries within
5 s hidden), correct within 0.5 m and 30 deg. The bars are relative to the chance level of the
same queries and map; docs/results.md has the full-size figures (every query, every map entry).
"""
import json

import pytest

from cmirl_ros.cli import main

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model", ["cmirl_indoor", "modalink_indoor"])
def test_shipped_indoor_model_beats_chance_on_held_out_frames(model, sevenscenes, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", model, "--dataset", "rgbd", "--root", str(sevenscenes),
                 "--frames", "400:600", "--stride", "4", "--map-frames", "0:600",
                 "--radius", "0.5", "--angle", "30", "--exclude-seconds", "5", "--json", str(out)]) == 0
    (results,) = json.loads(out.read_text())["rows"][0]["results"].values()
    for protocol, metrics in results.items():
        print(f"{model} {protocol}: Recall@1 {metrics['recall@1']:.3f} over {metrics['num_queries']} queries, "
              f"chance {metrics['chance@1']:.3f}")
        assert metrics["num_queries"] >= 30, (protocol, metrics["num_queries"])
        assert metrics["recall@1"] >= metrics["chance@1"] + 0.15, (protocol, metrics)
