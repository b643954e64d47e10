"""The live node with the shipped driving model finds the right places on a simulated drive.

Paper protocol on the simulated sequence (map = its scans, queries = its images, correct within
10 m), through the whole ROS path: bag -> player -> node process -> recorder -> scoring.
Skipped until `models/cmirl_driving` is shipped.
"""
from __future__ import annotations

import pytest

MODEL = "cmirl_driving"


@pytest.fixture(scope="module")
def shipped_model():
    from cmirl_ros.models import load_model
    from cmirl_ros.models.checkpoint import WEIGHTS_FILE
    from cmirl_ros.paths import models_dir

    try:
        present = (models_dir() / MODEL / WEIGHTS_FILE).is_file()
    except FileNotFoundError:
        present = False
    if not present:
        pytest.skip(f"models/{MODEL} is not shipped in this checkout")
    return load_model(MODEL, device="cpu")


@pytest.mark.slow
def test_shipped_model_matches_simulated_drive(shipped_model, tmp_path):
    from dataclasses import replace

    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.mapdb import build_map
    from cmirl_ros.ros.bag_eval import evaluate_bag
    from cmirl_ros.ros.bag_writer import write_bag_from_dataset
    from cmirl_ros.sim.sequence import DEMO_SIM, simulate_sequence

    # 60 s of the demo route, one frame every 0.6 s.
    simulate_sequence(replace(DEMO_SIM, frames="0:600:6", workers=1), tmp_path / "sim", "00", progress=False)
    dataset = KittiSequence(tmp_path / "sim", "00")
    build_map(dataset, shipped_model, keyframe_distance=2.0, progress=False).save(tmp_path / "map")
    bag = write_bag_from_dataset(dataset, tmp_path / "bag", progress=False)
    result = evaluate_bag(bag, tmp_path / "map", MODEL, device="cpu", workdir=tmp_path / "run")
    assert result["answered_fraction"] >= 0.95, result
    paper = result["protocols"]["paper"]
    assert paper["recall@1"] >= 0.5, f"Recall@1 {paper['recall@1']:.2f} over {paper['queries']} queries"
