"""Maps in the z-up map frame (REP 103/105), on KITTI's real ground truth: a map built from a
KITTI-layout sequence (real poses, calib and times of sequence 00; small made-up scans, since only
the frames matter here) stores its keyframes z-up, the car driving in the x-y plane, with base
headings (`pose_2d`) along the direction of travel; the manifest records the convention, and the
ground truth compared with the keyframes goes through the same conversion."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cmirl_ros.geometry.frames import KITTI_CAMERA0, T_MAP_KITTI_WORLD, kitti_T_base_cam, pose_2d

FRAMES = 1200  # 2 minutes of sequence 00: straight stretches and four turns
TINY_CONFIG = """base: cmirl_lite
name: tiny_lite
preprocessing: {height: 32, width: 64, crop_top: 0.0, max_depth: 10.0}
"""


@pytest.fixture(scope="module")
def kitti_layout(kitti_meta, tmp_path_factory) -> Path:
    """Sequence 00's real poses, calib and times (first FRAMES frames) with a small scan per frame."""
    root = tmp_path_factory.mktemp("kitti_real")
    sequence = root / "sequences" / "00"
    (sequence / "velodyne").mkdir(parents=True)
    shutil.copy(kitti_meta / "calib" / "2011_10_03_seq00-02.txt", sequence / "calib.txt")
    times = (kitti_meta / "times" / "00.txt").read_text().splitlines()[:FRAMES]
    (sequence / "times.txt").write_text("\n".join(times) + "\n")
    (root / "poses").mkdir()
    poses = (kitti_meta / "poses" / "00.txt").read_text().splitlines()[:FRAMES]
    (root / "poses" / "00.txt").write_text("\n".join(poses) + "\n")
    rng = np.random.default_rng(0)
    for i in range(FRAMES):  # a wall of points ahead of the Velodyne (x forward)
        scan = np.column_stack([rng.uniform(5, 9, 64), rng.uniform(-4, 4, 64), rng.uniform(-1, 1, 64), np.zeros(64)])
        scan.astype(np.float32).tofile(sequence / "velodyne" / f"{i:06d}.bin")
    return root


@pytest.fixture(scope="module")
def kitti_map(kitti_layout, tmp_path_factory):
    import torch

    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.mapdb import build_map
    from cmirl_ros.models import load_model

    torch.manual_seed(0)
    config = tmp_path_factory.mktemp("cfg") / "tiny_lite.yaml"
    config.write_text(TINY_CONFIG)
    dataset = KittiSequence(kitti_layout, "00")
    mapdb = build_map(dataset, load_model(config, device="cpu"), keyframe_distance=10.0, progress=False)
    return dataset, mapdb, mapdb.save(tmp_path_factory.mktemp("map") / "map")


def test_kitti_map_keyframes_are_z_up_and_head_where_the_car_drives(kitti_map):
    from cmirl_ros.mapdb import MapDatabase

    dataset, _, path = kitti_map
    mapdb = MapDatabase.load(path)
    poses = mapdb.keyframes.poses()
    rows = [int(name) for name in mapdb.keyframes.source_frames]
    np.testing.assert_allclose(poses, T_MAP_KITTI_WORLD @ dataset.poses[rows], atol=1e-6)  # KITTI rotations: ~1e-7 off
    spread = np.ptp(poses[:, :3, 3], axis=0)
    print(f"keyframes {len(poses)}, spread x {spread[0]:.1f} m, y {spread[1]:.1f} m, z {spread[2]:.1f} m")
    assert len(poses) > 30 and spread[2] < 0.05 * min(spread[0], spread[1])  # the car drives in the x-y plane
    # The base (REP 103: x forward, z up) stands upright and heads along the direction of travel.
    T_map_base = poses @ np.linalg.inv(kitti_T_base_cam(dataset.kitti_calib.T_cam2_velo))
    assert (T_map_base[:, 2, 2] > np.cos(np.radians(5))).all()
    yaws = np.array([pose_2d(T)[2] for T in T_map_base])
    # The direction of travel at each keyframe: its ground-truth track, 0.3 s either side.
    track = dataset.frame_convention.to_map(dataset.poses)[:, :2, 3]
    steps = track[np.minimum(np.array(rows) + 3, len(track) - 1)] - track[np.maximum(np.array(rows) - 3, 0)]
    travel = np.arctan2(steps[:, 1], steps[:, 0])
    heading_error = np.degrees(np.abs(wrap(travel - yaws)))
    print(f"heading vs travel: median {np.median(heading_error):.2f} deg, max {heading_error.max():.1f} deg")
    # In sharp turns base_link (under the Velodyne, ahead of the rear axle) slips sideways a few degrees.
    assert np.median(heading_error) < 2.0 and heading_error.max() < 10.0
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    assert manifest["frame_convention"] == KITTI_CAMERA0.to_manifest()
    assert manifest["keyframe_selection"]["ground_axes"] == [0, 1]


def wrap(angles: np.ndarray) -> np.ndarray:
    return np.angle(np.exp(1j * np.asarray(angles)))


def test_ground_truth_goes_into_the_map_frame_where_the_keyframes_are(kitti_map):
    """What eval, localize and bag eval compare: the query's ground truth through its dataset's
    convention lands on the keyframe it was built from, and ground distances are unchanged."""
    from cmirl_ros.geometry import place_distances

    dataset, mapdb, _ = kitti_map
    row = int(mapdb.keyframes.source_frames[7])
    truth = dataset.frame_convention.to_map(dataset.poses)
    np.testing.assert_allclose(truth[row], mapdb.keyframes.pose(7), atol=1e-6)
    in_map = place_distances(truth, mapdb.keyframes.poses(), dataset.frame_convention.ground_axes)
    in_world = place_distances(dataset.poses, np.linalg.inv(T_MAP_KITTI_WORLD) @ mapdb.keyframes.poses(),
                               dataset.ground_axes)
    np.testing.assert_allclose(in_map, in_world, atol=1e-5)  # sqrt of a rounding-level sq. near 0: ~1e-6


def test_map_export_is_z_up(kitti_layout, tmp_path):
    """The keyframe clouds follow their keyframes into the z-up map (what `map export` writes): each
    scan's wall (+-1 m around the Velodyne, 1.73 m over the road) stands 0.73-2.73 m over the road
    under its keyframe."""
    import torch

    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.mapdb import build_map
    from cmirl_ros.mapdb.export import merged_cloud
    from cmirl_ros.models import load_model

    torch.manual_seed(0)
    config = tmp_path / "tiny_lite.yaml"
    config.write_text(TINY_CONFIG)
    dataset = KittiSequence(kitti_layout, "00", frames=slice(0, 200))
    mapdb = build_map(dataset, load_model(config, device="cpu"), keyframe_distance=20.0, cloud_voxel=0.5, progress=False)
    poses = mapdb.keyframes.poses()
    road = (poses @ np.linalg.inv(kitti_T_base_cam(dataset.kitti_calib.T_cam2_velo)))[:, 2, 3]
    heights = [mapdb.clouds.in_map_frame(i, poses[i])[:, 2] - road[i] for i in range(len(mapdb))]
    spans = [(h.min(), h.max()) for h in heights]
    # The wall: 1.73 +- 1 m, give or take the pitch of the car over 9 m (0.5 m at 3 degrees).
    assert all(0.73 - 0.6 < low and high < 2.73 + 0.6 for low, high in spans), spans
    assert len(merged_cloud(mapdb)) == sum(len(h) for h in heights)
