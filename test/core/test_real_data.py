"""Foundation checks on real recorded data from ../shared/data (skipped when absent)."""
import shutil

import numpy as np
import pytest

from cmirl_ros.datasets import DATASETS, parse_frames
from cmirl_ros.geometry import (
    KITTI_GROUND_AXES,
    place_distances,
    project_to_depth,
    read_kitti_calib,
    read_kitti_poses,
    read_times,
    revisit_mask,
    travelled_distance,
)

pytestmark = pytest.mark.shared_data


def test_kitti_calib_both_recording_days(kitti_meta):
    day1 = read_kitti_calib(kitti_meta / "calib" / "2011_10_03_seq00-02.txt")
    assert day1.camera2.fx == pytest.approx(718.856)
    assert (day1.camera2.cx, day1.camera2.cy) == pytest.approx((607.1928, 185.2157))
    # cam2 sits ~6 cm left of cam0: t = -K^-1 P2[:, 3]
    np.testing.assert_allclose(day1.T_cam0_cam2[:3, 3], [-0.059938, 0.001131, -0.003780], atol=2e-6)
    np.testing.assert_allclose(day1.Tr[:3, 3], [-1.198459927713e-02, -5.403984729748e-02, -2.921968648686e-01])
    np.testing.assert_allclose(day1.T_cam2_velo[:3, 3], day1.Tr[:3, 3] + [0.059938, -0.001131, 0.003780], atol=2e-6)
    day2 = read_kitti_calib(kitti_meta / "calib" / "2011_09_30_seq04-10.txt")
    assert day2.camera2.fx == pytest.approx(707.0912)
    assert day2.P["P3"][0, 3] == pytest.approx(-333.4597)
    R = day2.T_cam2_velo[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-5)
    # the LiDAR's forward axis (x) must become the camera's forward axis (z)
    assert R[2, 0] > 0.99


def test_kitti_poses_seq00_length_and_revisits(kitti_meta):
    poses = read_kitti_poses(kitti_meta / "poses" / "00.txt")
    stamps = read_times(kitti_meta / "times" / "00.txt")
    assert len(poses) == len(stamps) == 4541
    assert travelled_distance(poses, KITTI_GROUND_AXES)[-1] == pytest.approx(3720, rel=0.01)
    # the end of the drive returns to its start
    assert place_distances(poses[-60:], poses[:60], KITTI_GROUND_AXES).min() < 2.0
    revisits = revisit_mask(poses, stamps, radius=10.0, exclude_seconds=30.0, axes=KITTI_GROUND_AXES)
    assert 500 < revisits.sum() < 1500 and revisits[-30:].all()


def test_kitti_frame_counts(kitti_meta):
    counts = {s: len(read_kitti_poses(kitti_meta / "poses" / f"{s}.txt")) for s in ("00", "02", "05", "06", "08")}
    assert counts == {"00": 4541, "02": 4661, "05": 2761, "06": 1101, "08": 4071}


def test_rgbd_depth_reprojects_onto_itself(sevenscenes):
    ds = DATASETS.get("rgbd")(root=sevenscenes, frames=parse_frames("100:102"))
    assert ds.frame_ids == [100, 101]
    frame = ds[0]
    assert frame.image.shape == (480, 640, 3) and frame.points.shape[1] == 4
    depth = project_to_depth(frame.points, frame.calib.T_cam_sensor, frame.calib.camera)
    from cmirl_ros.datasets.rgbd import read_depth_mm

    original = read_depth_mm(sevenscenes / "frame-000100.depth.png")
    valid = original > 0
    assert (depth > 0).sum() == valid.sum()
    np.testing.assert_allclose(depth[valid], original[valid], atol=1e-4)


def test_rgbd_poses_are_rigid(sevenscenes):
    ds = DATASETS.get("rgbd")(root=sevenscenes)
    assert len(ds) == 600
    R = ds.poses[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-3)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-3)
    np.testing.assert_allclose(ds.poses[:, 3], np.broadcast_to([0, 0, 0, 1], (600, 4)))


def test_kitti_reader_on_a_layout_built_from_real_meta(kitti_meta, tmp_path):
    seq = tmp_path / "sequences" / "00"
    (seq / "velodyne").mkdir(parents=True)
    shutil.copy(kitti_meta / "calib" / "2011_10_03_seq00-02.txt", seq / "calib.txt")
    shutil.copy(kitti_meta / "times" / "00.txt", seq / "times.txt")
    (tmp_path / "poses").mkdir()
    shutil.copy(kitti_meta / "poses" / "00.txt", tmp_path / "poses" / "00.txt")
    np.zeros((10, 4), np.float32).tofile(seq / "velodyne" / "000100.bin")
    ds = DATASETS.get("kitti")(root=tmp_path, seq="00", frames=parse_frames("100:200"))
    assert len(ds) == 100 and ds.stamps[0] == pytest.approx(read_times(kitti_meta / "times" / "00.txt")[100])
    # poses are of camera 2: the cam0 pose moved by the cam0 -> cam2 offset (6 cm to the left)
    cam0 = read_kitti_poses(kitti_meta / "poses" / "00.txt")[100]
    expected = cam0[:3, 3] + cam0[:3, :3] @ [-0.059938, 0.001131, -0.003780]
    np.testing.assert_allclose(ds.poses[0][:3, 3], expected, atol=1e-5)
    frame = ds[0]
    assert frame.image is None and frame.points.shape == (10, 4)
