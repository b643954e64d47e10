"""The live node with `verify: registration` publishes only verified matches, at their refined poses.

Bag -> player -> node process (use_scan, shipped cmirl_driving) -> recorder, over FastDDS. Against
a map (with keyframe clouds) of the same stretch, every published match is verified and its pose
(base_link's pose in the z-up map from the refined query pose, not the keyframe's) lies within 1 m
and 2 degrees of yaw of the ground truth, on the road; against a map of
a different stretch of the route (no true place), nothing is published and the queries are counted
as unverified in /diagnostics. Skipped when `models/cmirl_driving` is not shipped.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from test_shipped_model import MODEL, load_shipped_or_skip

CLOUD_VOXEL_M = 0.5
QUERY_FRAMES = "0:60:4"  # 15 frames, 0.4 s apart
NEAR_FRAMES = "2:62:4"  # the same stretch, 0.2 s off the queries: keyframes metres away from them
OTHER_FRAMES = "200:260:4"  # a stretch of the same route far from the queries


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    """The query stretch (sequence, bag, calibration) and maps of it and of another stretch."""
    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.mapdb import build_map
    from cmirl_ros.ros.bag_writer import write_bag_from_dataset
    from cmirl_ros.sim.sequence import DEMO_SIM, simulate_sequence

    model = load_shipped_or_skip()
    root = tmp_path_factory.mktemp("verify")
    stretches = {}
    for name, frames in (("queries", QUERY_FRAMES), ("near", NEAR_FRAMES), ("other", OTHER_FRAMES)):
        simulate_sequence(replace(DEMO_SIM, frames=frames, workers=1), root / name, "00", progress=False)
        stretches[name] = KittiSequence(root / name, "00")
    maps = {name: build_map(stretches[name], model, keyframe_distance=2.0, cloud_voxel=CLOUD_VOXEL_M,
                            progress=False).save(root / f"map_{name}") for name in ("near", "other")}
    bag = write_bag_from_dataset(stretches["queries"], root / "bag", progress=False)
    return {**stretches, "bag": bag, "calib": root / "queries" / "sequences" / "00" / "calib.txt", "maps": maps}


def replay(drive, map_name: str, workdir: Path) -> tuple[dict, dict, dict]:
    """Replay the query bag into a verifying node: (bag_eval result, {stamp: published pose}, last diagnostics)."""
    from cmirl_ros.ros.bag_eval import OUTPUTS, evaluate_bag, read_recording

    result = evaluate_bag(drive["bag"], drive["maps"][map_name], MODEL, device="cpu", workdir=workdir, use_scan=True,
                          node_params={"calib_file": str(drive["calib"])}, log=lambda _: None,
                          verify="registration", exclude_seconds=0.0)  # the near map shares the queries' stamps
    return result, published_poses(workdir / "outputs", OUTPUTS["match"]), read_recording(workdir / "outputs").diagnostics[-1]


def published_poses(recording: Path, topic: str) -> dict[float, np.ndarray]:
    """{query stamp: 4x4 pose} of the published matches; each one's covariance must be a covariance."""
    from rosbags.rosbag2 import Reader

    from cmirl_ros.datasets.bag import pose_to_matrix, typestore

    store, poses = typestore(), {}
    with Reader(recording) as reader:
        for connection, _, raw in reader.messages():
            if connection.topic == topic:
                msg = store.deserialize_cdr(raw, connection.msgtype)
                covariance = np.asarray(msg.pose.covariance).reshape(6, 6)
                np.testing.assert_allclose(covariance, covariance.T, atol=1e-12)
                assert 0 < np.linalg.eigvalsh(covariance).min() and np.diag(covariance)[:3].max() < 1.0, covariance
                poses[msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9] = pose_to_matrix(msg.pose.pose)
    return poses


@pytest.mark.slow
def test_node_publishes_only_verified_matches_at_refined_poses(drive, tmp_path):
    from cmirl_ros.ros.bag_eval import nearest_stamps

    from cmirl_ros.geometry import place_distances
    from cmirl_ros.geometry.frames import kitti_T_base_cam, pose_2d

    result, positions, diagnostics = replay(drive, "near", tmp_path / "near")
    queries = drive["queries"]
    frames = nearest_stamps(np.array(list(positions)), queries.stamps)
    assert (frames >= 0).all(), "a published match carries a stamp that no query had"
    published = np.array(list(positions.values()))
    truth = queries.frame_convention.to_map(queries.poses[frames]) @ np.linalg.inv(kitti_T_base_cam(queries.calib.T_cam_sensor))
    errors = np.linalg.norm(published[:, :3, 3] - truth[:, :3, 3], axis=1)
    yaw_errors = np.degrees(np.abs([np.angle(np.exp(1j * (pose_2d(p)[2] - pose_2d(t)[2]))) for p, t in zip(published, truth)]))
    keyframe_offsets = place_distances(queries.poses[frames], drive["near"].poses).min(1)
    print(f"verified node: {len(positions)} matches of {result['images_played']} queries, base position error "
          f"max {errors.max():.3f} m, yaw error max {yaw_errors.max():.2f} deg, height over the road "
          f"{np.abs(published[:, 2, 3] - truth[:, 2, 3]).max():.3f} m (nearest keyframe: "
          f"{keyframe_offsets.min():.2f}-{keyframe_offsets.max():.2f} m away)")
    assert int(diagnostics["verified"]) == len(positions) >= result["images_played"] // 2, (result, diagnostics)
    assert errors.max() < 1.0 and yaw_errors.max() < 2.0, (errors, yaw_errors)
    assert np.abs(published[:, 2, 3] - truth[:, 2, 3]).max() < 0.3 and (published[:, 2, 2] > 0.99).all()
    assert int(diagnostics["camera_pose"]) == 0
    assert (keyframe_offsets > 1.0).all(), "the keyframes must lie away from the queries, or refinement is untested"
    assert result["loop_closures"] == 0, "~/loop_closure carries live session-map pairs only (session_map is off)"
    # bag eval's verified figures: every published match verified, each within 1 m / 5 degrees.
    assert result["verify"] == "registration" and result["verified_matches"] == len(positions)
    assert result["verified_precision"] == 1.0 and result["unverified_queries"] == int(diagnostics["unverified"])
    assert result["verified_recall"] == len(positions) / result["revisit_queries"] and result["pose_error_m_p50"] < 1.0


@pytest.mark.slow
def test_node_without_a_true_place_publishes_nothing(drive, tmp_path):
    from cmirl_ros.geometry import place_distances

    distances = place_distances(drive["queries"].poses, drive["other"].poses)
    assert distances.min() > 30.0, "the other stretch must not contain the queries' places"
    result, positions, diagnostics = replay(drive, "other", tmp_path / "other")
    print(f"no true place: {len(positions)} matches, diagnostics {diagnostics}")
    assert positions == {} and result["loop_closures"] == 0
    assert result["verified_matches"] == 0 and result["verified_precision"] is None and result["revisit_queries"] == 0
    assert int(diagnostics["verified"]) == 0
    assert int(diagnostics["unverified"]) >= result["images_played"] // 2, (result, diagnostics)


def test_verification_refused_at_configure_without_scan_or_clouds(sim_calib_file, lite_checkpoint, lite_map, ros_workdir):
    """verify: registration without use_scan, or with a map built without keyframe clouds: the
    node does not start, and says why in one ERROR line."""
    from cmirl_ros.ros.processes import start_localizer

    base = {"model": str(lite_checkpoint), "map": str(lite_map), "device": "cpu", "verify": "registration"}
    cases = {"needs use_scan: true": {}, "needs a map with keyframe clouds": {"use_scan": True, "calib_file": str(sim_calib_file)}}
    for reason, params in cases.items():
        workdir = ros_workdir / reason.replace(" ", "_").replace(":", "")
        workdir.mkdir()
        process = start_localizer({**base, **params}, workdir)
        try:
            code = process.process.wait(timeout=120)
        finally:
            process.stop()
        errors = [line for line in process.log().splitlines() if "[ERROR]" in line]
        assert code == 1 and len(errors) == 1 and "configure failed" in errors[0] and reason in errors[0], process.log()
