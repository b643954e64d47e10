"""Localizer core: matches, self-match guard, threshold, re-ranking, covariance, reload; with a real model."""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from cmirl_ros.geometry.frames import as_given
from cmirl_ros.localization import Localizer, LocalizerConfig, match_covariance
from cmirl_ros.mapdb import IndexConfig, MapDatabase

sys.path.insert(0, str(Path(__file__).parent))
from test_mapdb import FINGERPRINT, make_map  # noqa: E402


@pytest.fixture(scope="module")
def mapdb():
    return make_map(count=800, dim=32, index="hnsw")


def test_top_k_matches_with_poses(mapdb):
    localizer = Localizer(None, mapdb, LocalizerConfig(top_k=4))
    result = localizer.localize_descriptor(mapdb.descriptors[123], stamp=12.3)
    assert [m.keyframe_id for m in result.matches][0] == 123
    assert len(result.matches) == 4
    assert result.matches[0].score == pytest.approx(1.0, abs=1e-3)
    assert all(a.score >= b.score for a, b in zip(result.matches, result.matches[1:]))
    np.testing.assert_allclose(result.matches[0].T_world_cam, mapdb.keyframes.pose(123))
    assert result.matches[0].source_frame == "000123" and result.matches[0].session == "seq"
    assert result.covariance.shape == (6, 6) and set(result.timings_ms) == {"search"}


def test_self_match_guard_and_threshold(mapdb):
    guarded = Localizer(None, mapdb, LocalizerConfig(top_k=3, exclude_seconds=5.0))
    result = guarded.localize_descriptor(mapdb.descriptors[400], stamp=mapdb.keyframes.stamps[400])
    assert len(result.matches) == 3
    assert all(abs(m.stamp - 40.0) > 5.0 for m in result.matches)
    strict = Localizer(None, mapdb, LocalizerConfig(top_k=3, exclude_seconds=5.0, score_threshold=0.99))
    assert strict.localize_descriptor(mapdb.descriptors[400], stamp=40.0).matches == []
    assert strict.localize_descriptor(mapdb.descriptors[400], stamp=40.0).covariance is None


def test_exact_rerank_restores_exact_order(mapdb):
    exact_map = MapDatabase(mapdb.descriptors, mapdb.keyframes, mapdb.manifest, index_config=IndexConfig(type="flat"))
    rng = np.random.default_rng(0)
    for q in rng.integers(0, 800, 20):
        query = mapdb.descriptors[q] + 0.1 * rng.standard_normal(32).astype(np.float32)
        reranked = Localizer(None, mapdb, LocalizerConfig(top_k=5, rerank="exact", rerank_candidates=50))
        exact = Localizer(None, exact_map, LocalizerConfig(top_k=5))
        got = reranked.localize_descriptor(query).matches
        want = exact.localize_descriptor(query).matches
        assert [m.keyframe_id for m in got] == [m.keyframe_id for m in want]
        np.testing.assert_allclose([m.score for m in got], [m.score for m in want], atol=1e-5)


def test_query_expansion_rerank_reorders_candidates(mapdb):
    localizer = Localizer(None, mapdb, LocalizerConfig(top_k=5, rerank="query_expansion"))
    result = localizer.localize_descriptor(mapdb.descriptors[250])
    assert result.matches[0].keyframe_id in range(245, 256)
    assert all(a.score >= b.score for a, b in zip(result.matches, result.matches[1:]))


def test_unknown_reranker_is_named():
    with pytest.raises(ValueError, match="unknown reranker 'magic'"):
        LocalizerConfig(rerank="magic")


def test_covariance_grows_with_ambiguity():
    near, far = np.tile(np.eye(4), (2, 1, 1)), np.tile(np.eye(4), (2, 1, 1))
    far[1, 0, 3] = 10.0  # second candidate 10 m away along x
    clear = match_covariance(np.array([0.9, 0.5]), far, position_floor_m=1.0, rotation_floor_deg=5.0)
    np.testing.assert_allclose(np.diag(clear)[:3], [1.0, 1.0, 1.0], atol=1e-6)  # clear winner: floor only
    tie = match_covariance(np.array([0.9, 0.9]), far, position_floor_m=1.0)
    assert tie[0, 0] == pytest.approx(0.5 * 100 + 1.0)  # equal weights: half of 10 m squared + floor
    assert tie[1, 1] == pytest.approx(1.0) and tie[2, 2] == pytest.approx(1.0)
    same_place = match_covariance(np.array([0.9, 0.9]), near)
    assert same_place[0, 0] == pytest.approx(1.0)
    assert np.allclose(tie, tie.T) and (np.linalg.eigvalsh(tie) > 0).all()


def test_reload_swaps_map_while_queries_run(mapdb, tmp_path):
    other = make_map(count=300, dim=32, seed=9)
    other.save(tmp_path / "other")
    localizer = Localizer(None, mapdb, LocalizerConfig(top_k=1))
    errors = []

    def query():
        try:
            for _ in range(200):
                localizer.localize_descriptor(mapdb.descriptors[10])
        except Exception as e:  # noqa: BLE001 - any failure in the thread fails the test
            errors.append(e)

    worker = threading.Thread(target=query)
    worker.start()
    localizer.reload(tmp_path / "other")
    worker.join()
    assert not errors
    assert len(localizer.mapdb) == 300
    assert localizer.localize_descriptor(other.descriptors[7]).matches[0].keyframe_id == 7


# ---------------------------------------------------------------- with a real (small) model
TINY_CONFIG = """base: cmirl_lite
name: tiny_lite
preprocessing: {height: 32, width: 64, crop_top: 0.0, max_depth: 10.0}
"""


class ToyScans:
    """A dataset of distinct random depth scans along a line, 1 m apart, 10 Hz."""

    name = "toy"
    ground_axes = None
    frame_convention = as_given("toy")

    def __init__(self, count=8):
        from cmirl_ros.geometry import Calibration, PinholeCamera

        self.calib = Calibration(PinholeCamera(np.array([[40.0, 0, 32], [0, 40.0, 16], [0, 0, 1]]), 64, 32), np.eye(4))
        self.stamps = np.arange(count) * 0.1
        self.poses = np.tile(np.eye(4), (count, 1, 1))
        self.poses[:, 0, 3] = np.arange(count, dtype=float)
        self.frame_ids = list(range(count))

    def __len__(self):
        return len(self.frame_ids)

    def __getitem__(self, i):
        from cmirl_ros.datasets import Frame

        rng = np.random.default_rng(i)
        z = rng.uniform(1.0, 8.0, 3000)
        xy = rng.uniform(-0.8, 0.8, (3000, 2)) * z[:, None]
        points = np.column_stack([xy, z, np.ones(3000)]).astype(np.float32)
        image = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
        return Frame(i, float(self.stamps[i]), image, points, self.poses[i], self.calib, f"{i:06d}")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from cmirl_ros.models import load_model, save_checkpoint

    torch.manual_seed(0)
    config = tmp_path_factory.mktemp("cfg") / "tiny_lite.yaml"
    config.write_text(TINY_CONFIG)
    model = load_model(config, device="cpu")
    checkpoint = tmp_path_factory.mktemp("ckpt") / "tiny_lite"
    save_checkpoint(model, checkpoint)
    return model, checkpoint


def test_build_map_and_localize_with_a_real_model(tiny_model, tmp_path):
    from cmirl_ros.mapdb import build_map
    from cmirl_ros.models import model_fingerprint

    model, _ = tiny_model
    dataset = ToyScans(count=8)
    mapdb = build_map(dataset, model, keyframe_distance=2.0, progress=False)
    assert list(mapdb.keyframes.source_frames) == ["000000", "000002", "000004", "000006"]
    mapdb.save(tmp_path / "map")
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert manifest["model"]["fingerprint"] == model_fingerprint(model)
    assert manifest["preprocessing"]["width"] == 64 and manifest["preprocessing"]["height"] == 32
    loaded = MapDatabase.load(tmp_path / "map", expect_fingerprint=model_fingerprint(model))

    localizer = Localizer(model, loaded, LocalizerConfig(top_k=2))
    frame = dataset[4]
    # The keyframe's own scan as the query reproduces its map descriptor: top-1 is that keyframe.
    by_scan = localizer.localize(points=frame.points, stamp=frame.stamp, calib=frame.calib)
    assert by_scan.matches[0].keyframe_id == 2 and by_scan.matches[0].score == pytest.approx(1.0, abs=1e-4)
    both = localizer.localize(image=frame.image, points=frame.points, stamp=frame.stamp, calib=frame.calib)
    assert set(both.timings_ms) == {"preprocess", "encode", "search"} and len(both.matches) == 2
    guarded = Localizer(model, loaded, LocalizerConfig(top_k=1, exclude_seconds=0.05))
    assert guarded.localize(points=frame.points, stamp=frame.stamp, calib=frame.calib).matches[0].keyframe_id != 2
    with pytest.raises(ValueError, match="needs the calibration"):
        localizer.localize(points=frame.points, stamp=0.0)


def test_a_scan_that_misses_the_image_is_not_fused(tiny_model):
    """A scan projecting onto (almost) no pixel (here: mirrored behind the camera) adds nothing:
    the query is answered from the image alone, and the result says so."""
    model, _ = tiny_model
    mapdb = build_toy_map(model)
    localizer = Localizer(model, mapdb, LocalizerConfig(top_k=1))
    frame = ToyScans(count=8)[4]
    fused = localizer.localize(image=frame.image, points=frame.points, stamp=frame.stamp, calib=frame.calib)
    assert fused.modalities == "image+depth" and fused.scan_coverage > 0.001
    behind = frame.points.copy()
    camera_points = behind[:, :3] @ frame.calib.T_cam_sensor[:3, :3].T + frame.calib.T_cam_sensor[:3, 3]
    camera_points[:, 2] = -np.abs(camera_points[:, 2]) - 1.0
    behind[:, :3] = (camera_points - frame.calib.T_cam_sensor[:3, 3]) @ frame.calib.T_cam_sensor[:3, :3]
    missed = localizer.localize(image=frame.image, points=behind, stamp=frame.stamp, calib=frame.calib)
    image_only = localizer.localize(image=frame.image, stamp=frame.stamp)
    assert missed.modalities == "image" and missed.scan_coverage == 0.0 and image_only.scan_coverage is None
    np.testing.assert_allclose(missed.descriptor, image_only.descriptor, atol=1e-6)
    scan_alone = localizer.localize(points=behind, stamp=frame.stamp, calib=frame.calib)
    assert scan_alone.modalities == "depth"  # nothing else to answer from


def build_toy_map(model):
    from cmirl_ros.mapdb import build_map

    return build_map(ToyScans(count=8), model, keyframe_distance=2.0, progress=False)


def test_localizer_refuses_a_map_of_another_model(tiny_model):
    model, _ = tiny_model
    with pytest.raises(ValueError, match="model mismatch"):
        Localizer(model, make_map(count=50, dim=256))
    assert make_map(count=50).fingerprint == FINGERPRINT


@pytest.mark.slow
def test_map_and_localize_cli_on_real_rgbd(tiny_model, sevenscenes, tmp_path):
    from cmirl_ros.cli import main

    _, checkpoint = tiny_model
    data = ["--dataset", "rgbd", "--root", str(sevenscenes), "--frames", "0:60"]
    assert main(["map", "build", *data, "--model", str(checkpoint), "--keyframe-distance", "0.05",
                 "--out", str(tmp_path / "map")]) == 0
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert 2 <= manifest["counts"]["keyframes"] < 60 and manifest["counts"]["source_frames"] == 60
    assert main(["map", "build", *data, "--model", str(checkpoint), "--out", str(tmp_path / "map")]) == 2  # no clobber
    assert main(["map", "info", str(tmp_path / "map")]) == 0
    assert main(["localize", "--map", str(tmp_path / "map"), *data, "--model", str(checkpoint), "--every", "10",
                 "--radius", "0.5", "--with-scan", "--verify", "sequence", "--sequence-length", "2",
                 "--sequence-odometry", "--sequence-candidates", "3", "--json", str(tmp_path / "loc.json")]) == 0
    report = json.loads((tmp_path / "loc.json").read_text())
    summary = report["summary"]
    assert summary["queries"] == 6 and summary["counted_queries"] == 6
    assert set(summary["median_ms"]) == {"preprocess", "encode", "search"}
    assert all(len(q["matches"]) == 5 for q in report["queries"])
    # Loop-closure figures: every query is counted, so recall at the loosest threshold = recall@1.
    assert summary["verify"] == "sequence" and 0.0 <= summary["max_f1"] <= 1.0
    assert report["loop_closure"]["pr_curve"]["recall"][-1] == pytest.approx(summary["recall@1"], abs=1e-4)
    assert summary["verified_precision"] is None or 0.0 <= summary["verified_precision"] <= 1.0
    assert summary["verified_recall"] <= summary["recall@5"]  # the path check picks among the top 3
    assert report["loop_closure"]["verified_accepted"] <= 5  # the first query cannot be confirmed (N = 2)
    assert (tmp_path / "loc_pr.png").read_bytes()[:4] == b"\x89PNG"


def test_attention_score_prefers_the_matching_token_set():
    from cmirl_ros.mapdb.tokens import attention_scores

    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((3, 12, 16))
    tokens /= np.linalg.norm(tokens, axis=2, keepdims=True)
    query = tokens[1][rng.permutation(12)]  # same parts, other order: attention does not care
    scores = attention_scores(query.astype(np.float16), tokens.astype(np.float16))
    assert np.argmax(scores) == 1 and scores[1] > 0.9 and scores[0] < 0.5


def test_cross_attention_rerank_with_stored_depth_tokens(tiny_model, tmp_path):
    from cmirl_ros.mapdb import build_map
    from cmirl_ros.mapdb.tokens import attention_scores

    model, _ = tiny_model
    dataset = ToyScans(count=6)
    build_map(dataset, model, tokens_grid=(2, 4), progress=False).save(tmp_path / "map")
    mapdb = MapDatabase.load(tmp_path / "map")
    assert mapdb.tokens.shape == (6, 8, 128) and mapdb.tokens.dtype == np.float16
    norms = np.linalg.norm(mapdb.tokens.astype(np.float32), axis=2)
    np.testing.assert_allclose(norms, 1.0, atol=1e-2)
    with pytest.raises(ValueError, match="needs a map built with `cmirl map build --tokens`"):
        Localizer(model, make_map_without_tokens(mapdb), LocalizerConfig(rerank="cross_attention"))

    localizer = Localizer(model, mapdb, LocalizerConfig(top_k=6, rerank="cross_attention"))
    frame = dataset[3]
    result = localizer.localize(points=frame.points, stamp=frame.stamp, calib=frame.calib)
    ids = [m.keyframe_id for m in result.matches]
    assert sorted(ids) == list(range(6))
    # The scores are the attention scores of the query's own depth tokens against the stored ones,
    # so the keyframe built from this very scan scores (almost) exactly like itself.
    own = attention_scores(mapdb.tokens[3], mapdb.tokens[ids])
    np.testing.assert_allclose([m.score for m in result.matches], own, atol=2e-3)


def make_map_without_tokens(mapdb):
    return MapDatabase(np.asarray(mapdb.descriptors), mapdb.keyframes, mapdb.manifest)


def test_end_to_end_latency_breakdown(tiny_model):
    from cmirl_ros.benchmarks.end_to_end import end_to_end

    _, checkpoint = tiny_model
    figures = end_to_end(str(checkpoint), make_map(count=200, dim=32), threads=1, queries=2, warmup=1)
    assert figures["entries"] == 200 and figures["input"] == "64x32"
    for mode in ("image", "image+scan"):
        stages = figures[mode]
        assert all(stages[s] > 0 for s in ("preprocess", "encode", "search"))
        assert stages["total"] >= stages["encode"]
