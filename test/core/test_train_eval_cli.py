"""End to end on real 7-Scenes frames: `cmirl train` (a few steps, tiny input, resumed once),
`cmirl map build` with the trained model, `cmirl eval` on that map, and the ablation and
condition tables with in-memory maps."""
import csv
import json

import pytest
import yaml

from cmirl_ros.cli import main

pytestmark = pytest.mark.slow

TINY_MODEL = {"base": "cmirl_lite", "name": "cmirl_tiny",
              "preprocessing": {"height": 64, "width": 96, "crop_top": 0.0, "max_depth": 10.0}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sevenscenes):
    root = tmp_path_factory.mktemp("train")
    (root / "tiny_model.yaml").write_text(yaml.safe_dump(TINY_MODEL))
    config = {
        "model": "tiny_model.yaml",
        "data": {"dataset": "rgbd", "root": str(sevenscenes), "frames": "0:400", "stride": 20},
        "pairs": {"positive_distance": 0.3, "negative_distance": 1.0, "positive_angle_deg": 30, "negative_angle_deg": 90},
        "loss": {"margin": 0.5, "cache_negatives": 1},
        "train": {"batch_size": 4, "max_steps": 3, "steps_per_epoch": 2, "checkpoint_every": 2,
                  "cache_batch_size": 10, "init_centroids": 20},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = root / "model"
    assert main(["train", "--config", str(root / "tiny.yaml"), "--out", str(out), "--no-progress",
                 "--cache-dir", str(root / "cache")]) == 0
    return root, out


def test_train_writes_model_log_and_resumes(trained):
    root, out = trained
    assert (out / "model.safetensors").is_file() and (out / "train_state.pt").is_file()
    # A second run into the same directory must say --resume.
    assert main(["train", "--config", str(root / "tiny.yaml"), "--out", str(out), "--no-progress"]) == 2
    assert main(["train", "--config", str(root / "tiny.yaml"), "--out", str(out), "--resume", "--max-steps", "4",
                 "--no-progress", "--cache-dir", str(root / "cache")]) == 0
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]


def test_model_flag_swaps_the_network_and_keeps_the_recipe(trained, tmp_path):
    root, _ = trained
    (root / "tiny_rigid.yaml").write_text(yaml.safe_dump({**TINY_MODEL, "base": "cmirl_no_acma", "name": "tiny_rigid"}))
    out = tmp_path / "rigid"
    assert main(["train", "--config", str(root / "tiny.yaml"), "--model", str(root / "tiny_rigid.yaml"),
                 "--out", str(out), "--max-steps", "1", "--no-progress", "--cache-dir", str(root / "cache")]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["alignment"]["name"] == "rigid"
    used = yaml.safe_load((out / "train_config.yaml").read_text())
    assert used["model"] == str(root / "tiny_rigid.yaml") and used["loss"]["cache_negatives"] == 1


def test_map_build_then_eval_both_protocols(trained, sevenscenes, tmp_path):
    _, out = trained
    data = ["--dataset", "rgbd", "--root", str(sevenscenes), "--frames", "300:420"]
    assert main(["map", "build", "--model", str(out), *data, "--out", str(tmp_path / "map")]) == 0
    result = tmp_path / "eval.json"
    assert main(["eval", "--model", str(out), "--map", str(tmp_path / "map"), *data, "--stride", "10",
                 "--radius", "0.5", "--angle", "30", "--exclude-seconds", "1", "--verify", "sequence",
                 "--json", str(result)]) == 0
    report = json.loads(result.read_text())
    assert report["protocol"] == "paper" and report["num_queries"] == 12
    assert report["loop_closure_protocol"] == "revisit" and report["verify"] == "sequence"
    assert {"max_f1", "recall_at_100p", "average_precision", "verified_precision", "verified_recall",
            "pose_error_m_p50", "pose_error_deg_p50"} <= set(report)
    assert (tmp_path / "eval_pr.png").read_bytes()[:4] == b"\x89PNG"
    assert 0.0 <= report["recall@1"] <= report["recall@1%"] <= 1.0
    metrics = report["rows"][0]["results"]["rgbd-7scenes-redkitchen-seq01-frames0000-0599"]
    assert set(metrics) == {"paper", "revisit"}
    assert metrics["revisit"]["num_queries"] <= 12
    assert (tmp_path / "eval.png").read_bytes()[:4] == b"\x89PNG"
    assert "paper R@1" in (tmp_path / "eval.md").read_text()
    # The path check over the top candidates with the frames' poses as odometry: its pick may be a
    # lower-ranked candidate, so its recall is bounded by Recall@3, not Recall@1.
    assert main(["eval", "--model", str(out), "--map", str(tmp_path / "map"), *data, "--stride", "10", "--radius", "0.5",
                 "--protocol", "revisit", "--exclude-seconds", "1", "--verify", "sequence", "--sequence-odometry",
                 "--sequence-length", "2", "--sequence-candidates", "3", "--sequence-zscore", "--sequence-unique", "1",
                 "--sequence-unique-margin", "0.5", "--sequence-min-turn", "1", "--sequence-tolerance-deg", "90",
                 "--sequence-min-score", "-5", "--json", str(tmp_path / "path.json")]) == 0
    path = json.loads((tmp_path / "path.json").read_text())
    assert path["sequence"]["candidates"] == 3 and path["sequence"]["zscore"] and path["verify"] == "sequence"
    revisit = path["rows"][0]["results"]["rgbd-7scenes-redkitchen-seq01-frames0000-0599"]["revisit"]
    assert path["verified_recall"] is None or path["verified_recall"] <= revisit["recall_curve"][2]


def test_ablation_and_condition_tables(trained, sevenscenes, tmp_path):
    root, out = trained
    data = ["--dataset", "rgbd", "--root", str(sevenscenes), "--frames", "300:420", "--map-frames", "300:420",
            "--stride", "20", "--radius", "0.5", "--protocol", "paper"]
    assert main(["eval", *data, "--ablations", f"trained={out}", f"untrained={root / 'tiny_model.yaml'}",
                 "--json", str(tmp_path / "abl.json")]) == 0
    md = (tmp_path / "abl.md").read_text()
    assert "| trained |" in md and "| untrained |" in md and "chance paper R@1 / R@1%" in md
    assert main(["eval", "--model", str(out), *data, "--conditions", f"day={sevenscenes}", f"again={sevenscenes}",
                 "--json", str(tmp_path / "cond.json")]) == 0
    rows = json.loads((tmp_path / "cond.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["day", "again"]
    assert rows[0]["results"] == rows[1]["results"]  # same queries, same map: same figures
    assert main(["eval", *data, "--ablations", "nonsense", "--json", str(tmp_path / "x.json")]) == 2


def test_frozen_stages_train_from_the_feature_cache_and_resume(trained, sevenscenes, tmp_path):
    root, _ = trained
    config = yaml.safe_load((root / "tiny.yaml").read_text())
    config["model"] = str(root / "tiny_model.yaml")
    config["train"].update({"freeze_stages": 2, "image_variants": 1, "cloud_variants": 1})
    config["validation"] = {"dataset": "rgbd", "root": str(sevenscenes), "frames": "10:400", "stride": 40}
    (tmp_path / "frozen.yaml").write_text(yaml.safe_dump(config))
    out, cache = tmp_path / "model", tmp_path / "cache"
    run = ["train", "--config", str(tmp_path / "frozen.yaml"), "--out", str(out), "--no-progress", "--cache-dir", str(cache)]
    assert main(run + ["--max-steps", "2"]) == 0
    features = sorted(cache.glob("*/features-*"))
    assert len(features) == 2 and sorted(len(list(d.glob("*.npy"))) for d in features) == [10, 20]  # validation, training
    assert main(run + ["--resume"]) == 0
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and float(rows[1]["val_recall@1"]) >= 0.0
