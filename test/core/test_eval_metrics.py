"""Recall metrics and protocols on tiny hand-checked inputs."""
import json

import numpy as np
import pytest

from cmirl_ros.evaluation.metrics import (
    evaluate_protocols,
    evaluate_retrieval,
    top1_percent_k,
)
from cmirl_ros.evaluation.report import markdown_table, plot_recall_curves, write_json


def _poses(xs):
    poses = np.tile(np.eye(4), (len(xs), 1, 1))
    poses[:, 0, 3] = xs
    return poses


def test_top1_percent_k():
    assert top1_percent_k(10) == 1
    assert top1_percent_k(149) == 1
    assert top1_percent_k(151) == 2
    assert top1_percent_k(4541) == 45


def test_recall_curve_known_ranking():
    # 3 map entries on the unit axes; query 0 -> best = entry 0 (correct),
    # query 1 -> ranking 0, 1 (correct is 1, found at rank 2), query 2 -> correct entry 2 ranked last.
    m = np.eye(3, dtype=np.float32)
    q = np.array([[1, 0, 0], [0.9, 0.43589, 0], [0.8, 0.6, 0.0]], dtype=np.float32)
    correct = np.eye(3, dtype=bool)
    r = evaluate_retrieval(q, m, correct, max_n=3)
    assert r.num_queries == 3
    np.testing.assert_allclose(r.recall_curve, [1 / 3, 2 / 3, 1.0])
    assert r.recall_at_1 == pytest.approx(1 / 3)
    assert r.k_1_percent == 1 and r.recall_at_1_percent == pytest.approx(1 / 3)
    assert r.chance_at_1 == pytest.approx(1 / 3)  # one correct out of three
    assert list(r.top1) == [0, 0, 0]


def test_revisit_excludes_window_and_counts_true_revisits_only():
    # Map = the 4 query frames themselves; frames 0 and 3 are at the same place (a revisit).
    poses = _poses([0.0, 50.0, 100.0, 1.0])
    stamps = np.array([0.0, 10.0, 20.0, 100.0])
    desc = np.eye(4, dtype=np.float32)
    desc[3] = [0.6, 0, 0, 0.8]  # closest other entry to query 3 is entry 0
    results = evaluate_protocols(desc, desc, poses, poses, stamps, stamps, radius=5.0, exclude_seconds=15.0)
    paper, revisit = results["paper"], results["revisit"]
    assert paper.num_queries == 4 and paper.recall_at_1 == 1.0  # every query finds its own scan
    assert revisit.num_queries == 2  # only 0 and 3 keep a true match outside the window
    assert revisit.recall_at_1 == 1.0
    assert list(revisit.top1) == [3, -1, -1, 0]


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="descriptor shapes"):
        evaluate_retrieval(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="protocol"):
        evaluate_retrieval(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 2), bool), protocol="x")


def test_report_table_json_and_plot(tmp_path):
    desc = np.eye(3, dtype=np.float32)
    poses = _poses([0.0, 30.0, 60.0])
    res = evaluate_protocols(desc, desc, poses, poses, np.arange(3.0), np.arange(3.0), radius=5.0, exclude_seconds=0.5)
    rows = [("cmirl", {"00": {p: r.to_dict() for p, r in res.items()}})]
    md = markdown_table(rows, title="t")
    assert "| 00 paper R@1 | 00 paper R@1% | 00 revisit R@1 |" in md
    # revisit: no query truly revisits; chance of paper R@1 = one correct entry out of three
    assert "| cmirl | 100.0 | 100.0 | - | - | 33.3 / 33.3 | - / - | 3 / 0 |" in md
    write_json(tmp_path / "r.json", {"rows": rows})
    assert json.loads((tmp_path / "r.json").read_text())["rows"][0][1]["00"]["paper"]["recall@1"] == 1.0
    plot_recall_curves({"cmirl": res["paper"].recall_curve}, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
