"""REP 103/105 frames: KITTI's y-down camera world -> z-up map, base poses, 2D poses for AMCL."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cmirl_ros.geometry import make_transform, transform_points
from cmirl_ros.geometry.frames import (
    KITTI_VELODYNE_HEIGHT,
    R_BODY_OPTICAL,
    base_pose_in_map,
    calibration_from_tf,
    kitti_T_base_cam,
    kitti_T_base_velo,
    kitti_world_to_map,
    pose_2d,
)
from cmirl_ros.geometry.tf_tree import TfTree, UnknownFrameError
from cmirl_ros.sim.sequence import kitti_00_02_calib

# A camera looking straight ahead from 1.5 m forward and 1.2 m up on the base.
T_BASE_CAM = make_transform(R_BODY_OPTICAL, np.array([1.5, 0.0, 1.2]))


def kitti_pose(turn_left_deg: float, position_world) -> np.ndarray:
    """A KITTI camera pose: turning left is a negative rotation about the optical y axis (down)."""
    return make_transform(Rotation.from_euler("y", -turn_left_deg, degrees=True).as_matrix(), np.asarray(position_world, float))


def test_driving_forward_along_camera_z_is_plus_x_in_the_map():
    T_map_base = base_pose_in_map(kitti_pose(0, [0, 0, 12.0]), T_BASE_CAM)
    np.testing.assert_allclose(T_map_base[:3, :3], np.eye(3), atol=1e-12)  # the base stands upright, facing map x
    np.testing.assert_allclose(T_map_base[:3, 3], [12.0 - 1.5, 0.0, -1.2], atol=1e-12)
    assert pose_2d(T_map_base) == pytest.approx((10.5, 0.0, 0.0), abs=1e-12)


def test_heights_become_z_and_right_becomes_minus_y():
    # KITTI y is down: a camera 3 m higher is at y = -3; 2 m to the right is x = +2.
    T_map_cam = kitti_world_to_map(kitti_pose(0, [2.0, -3.0, 5.0]))
    np.testing.assert_allclose(T_map_cam[:3, 3], [5.0, -2.0, 3.0], atol=1e-12)
    np.testing.assert_allclose(T_map_cam[:3, :3], R_BODY_OPTICAL, atol=1e-12)  # camera's optical axes in the z-up map


@pytest.mark.parametrize("turn_deg", [30.0, -75.0, 150.0, 180.0])
def test_yaw_is_the_heading_counter_clockwise_from_map_x(turn_deg):
    heading = np.radians(turn_deg)
    # turn, then drive 10 m along the camera's own z: in KITTI's world that is x = -10 sin, z = 10 cos
    T_world_cam = kitti_pose(turn_deg, [-10 * np.sin(heading), 0.0, 10 * np.cos(heading)])
    x, y, yaw = pose_2d(base_pose_in_map(T_world_cam, make_transform(R_BODY_OPTICAL, np.zeros(3))))
    assert (x, y) == pytest.approx((10 * np.cos(heading), 10 * np.sin(heading)), abs=1e-9)
    assert np.isclose(np.cos(yaw), np.cos(heading)) and np.isclose(np.sin(yaw), np.sin(heading))
    assert -np.pi < yaw <= np.pi


def test_map_conversion_takes_batches_and_keeps_relative_motion():
    poses = np.stack([kitti_pose(a, [a, -0.1 * a, 2 * a]) for a in (0.0, 10.0, 20.0)])
    converted = kitti_world_to_map(poses)
    assert converted.shape == (3, 4, 4)
    # a fixed change of world frame leaves relative poses (what odometry measures) unchanged
    np.testing.assert_allclose(np.linalg.inv(converted[0]) @ converted[2], np.linalg.inv(poses[0]) @ poses[2], atol=1e-12)


def test_kitti_base_from_calib_is_the_road_below_the_velodyne():
    calib = kitti_00_02_calib()
    T_base_cam = kitti_T_base_cam(calib.T_cam2_velo)
    # The Velodyne (and so the base) is level with KITTI's cameras: the camera looks along base x.
    np.testing.assert_allclose(T_base_cam[:3, :3], R_BODY_OPTICAL, atol=0.02)
    # Camera 2 sits 29 cm ahead of the Velodyne, 5 cm to its left and 6 cm below it (KITTI's setup).
    np.testing.assert_allclose(T_base_cam[:3, 3], [0.29, 0.05, KITTI_VELODYNE_HEIGHT - 0.06], atol=0.01)
    # The chain closes: a Velodyne point seen through base -> camera lands where calib.txt puts it.
    point_velo = np.array([[10.0, 2.0, -1.0]])
    T_cam_velo = np.linalg.inv(T_base_cam) @ kitti_T_base_velo()
    np.testing.assert_allclose(transform_points(T_cam_velo, point_velo), transform_points(calib.T_cam2_velo, point_velo), atol=1e-6)
    # At the first KITTI pose the base is upright on the road: z = -(camera height), yaw ~ 0.
    T_map_base = base_pose_in_map(np.eye(4), T_base_cam)
    x, y, yaw = pose_2d(T_map_base)
    assert T_map_base[2, 3] == pytest.approx(-(KITTI_VELODYNE_HEIGHT - 0.06), abs=0.02)
    assert abs(yaw) < np.radians(1.0) and (x, y) == pytest.approx((-0.29, -0.05), abs=0.02)


def camera_info(frame_id: str, R=np.eye(3)) -> SimpleNamespace:
    K = np.array([[700.0, 0, 600.0], [0, 700.0, 180.0], [0, 0, 1]])
    P = np.hstack([K * [[0.9], [0.9], [1]], np.zeros((3, 1))])  # the rectified image is zoomed out a little
    return SimpleNamespace(header=SimpleNamespace(frame_id=frame_id), width=1240, height=376, distortion_model="plumb_bob",
                           d=[-0.1, 0.01, 0, 0, 0], k=K.reshape(-1).tolist(), r=np.asarray(R).reshape(-1).tolist(),
                           p=P.reshape(-1).tolist(), binning_x=0, binning_y=0, roi=None)


def test_calibration_from_tf_and_camera_info():
    T_base_velo = make_transform(Rotation.from_euler("z", 3, degrees=True).as_matrix(), np.array([0.2, 0.1, 1.7]))
    tree = TfTree()
    tree.set_matrix("base_link", "velodyne", T_base_velo)
    tree.set_matrix("base_link", "camera_optical", T_BASE_CAM)
    T_cam_velo = np.linalg.inv(T_BASE_CAM) @ T_base_velo
    calib = calibration_from_tf(tree, camera_info("camera_optical"), "velodyne")
    np.testing.assert_allclose(calib.T_cam_sensor, T_cam_velo, atol=1e-12)
    np.testing.assert_allclose(calib.camera.K, [[630.0, 0, 540.0], [0, 630.0, 162.0], [0, 0, 1]])  # P's, not K's
    assert (calib.camera.width, calib.camera.height) == (1240, 376)
    # a rectifying rotation R turns the camera frame: points go raw optical -> rectified by R
    R = Rotation.from_euler("x", 2, degrees=True).as_matrix()
    rotated = calibration_from_tf(tree, camera_info("ignored", R), "velodyne", camera_frame="camera_optical")
    np.testing.assert_allclose(rotated.T_cam_sensor, make_transform(R, np.zeros(3)) @ T_cam_velo, atol=1e-12)
    with pytest.raises(UnknownFrameError, match="unknown frame 'lidar'"):
        calibration_from_tf(tree, camera_info("camera_optical"), "lidar")


def test_base_covariance_adds_the_lever_arm_of_the_rotation():
    """A camera 2 m ahead of its base (map x): a yaw variance s2 puts s2 * 2^2 on the base's y
    position and correlates it with the yaw; position and rotation blocks otherwise stay."""
    from cmirl_ros.geometry.frames import base_covariance

    covariance = np.diag([0.1, 0.2, 0.3, 0.01, 0.02, 0.04])
    T_map_cam, T_map_base = make_transform(np.eye(3), np.array([2.0, 0.0, 0.0])), np.eye(4)
    moved = base_covariance(covariance, T_map_cam, T_map_base)
    assert moved[1, 1] == pytest.approx(0.2 + 0.04 * 4) and moved[1, 5] == pytest.approx(-0.04 * 2)
    np.testing.assert_allclose(np.diag(moved)[[0, 3, 4, 5]], [0.1, 0.01, 0.02, 0.04])
    np.testing.assert_allclose(moved, moved.T)
    assert np.linalg.eigvalsh(moved).min() > 0
    np.testing.assert_allclose(base_covariance(covariance, T_map_cam, T_map_cam), covariance)
