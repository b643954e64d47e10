"""TfTree: tf2's lookup semantics on static and dynamic transforms, without ROS."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cmirl_ros.geometry.tf_tree import ConnectivityError, ExtrapolationError, TfTree, UnknownFrameError, slerp

# camera_optical in base_link (REP 103): optical z = base x (forward), optical x = -base y, optical y = -base z.
OPTICAL_IN_BASE = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
CAMERA_POSITION = np.array([1.5, 0.0, 1.2])
VELODYNE_POSITION = np.array([0.2, 0.1, 1.7])
VELODYNE_YAW_DEG = 3.0


def matrix(R: np.ndarray, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def yaw(degrees: float) -> Rotation:
    return Rotation.from_euler("z", degrees, degrees=True)


def robot_tree() -> TfTree:
    tree = TfTree()
    tree.set_transform("base_link", "camera_optical", CAMERA_POSITION, Rotation.from_matrix(OPTICAL_IN_BASE).as_quat())
    tree.set_transform("base_link", "velodyne", VELODYNE_POSITION, yaw(VELODYNE_YAW_DEG).as_quat())
    return tree


def apply(T: np.ndarray, point) -> np.ndarray:
    return T[:3, :3] @ np.asarray(point, dtype=float) + T[:3, 3]


def test_point_ahead_of_the_robot_is_on_the_optical_axis():
    T_cam_base = robot_tree().lookup("camera_optical", "base_link")
    # 10 m straight ahead of the camera, at camera height: optical (0, 0, 10).
    assert np.allclose(apply(T_cam_base, CAMERA_POSITION + [10.0, 0.0, 0.0]), [0.0, 0.0, 10.0])
    # 1 m to the robot's left is optical -x; 1 m up is optical -y.
    assert np.allclose(apply(T_cam_base, CAMERA_POSITION + [0.0, 1.0, 1.0]), [-1.0, -1.0, 0.0])


def test_sibling_chain_goes_through_the_common_parent_with_an_inverted_edge():
    tree = robot_tree()
    T_base_velo = matrix(yaw(VELODYNE_YAW_DEG).as_matrix(), VELODYNE_POSITION)
    T_base_cam = matrix(OPTICAL_IN_BASE, CAMERA_POSITION)
    T_cam_velo = tree.lookup("camera_optical", "velodyne")
    assert np.allclose(T_cam_velo, np.linalg.inv(T_base_cam) @ T_base_velo)
    assert np.allclose(tree.lookup("velodyne", "camera_optical"), np.linalg.inv(T_cam_velo))
    assert np.allclose(tree.lookup("velodyne", "velodyne"), np.eye(4))


def test_dynamic_edge_interpolates_translation_linearly_and_rotation_by_slerp():
    tree = robot_tree()
    tree.set_transform("odom", "base_link", [0.0, 0.0, 0.0], yaw(0).as_quat(), stamp=10.0)
    tree.set_transform("odom", "base_link", [2.0, 4.0, 0.0], yaw(90).as_quat(), stamp=11.0)
    T = tree.lookup("odom", "base_link", 10.25)
    assert np.allclose(T[:3, 3], [0.5, 1.0, 0.0])
    assert np.allclose(Rotation.from_matrix(T[:3, :3]).as_euler("zyx", degrees=True), [22.5, 0, 0])
    # A chain of dynamic + static edges: odom <- base_link <- velodyne.
    T_base_velo = matrix(yaw(VELODYNE_YAW_DEG).as_matrix(), VELODYNE_POSITION)
    assert np.allclose(tree.lookup("odom", "velodyne", 10.25), T @ T_base_velo)
    assert np.allclose(tree.lookup("odom", "base_link", 11.0)[:3, 3], [2.0, 4.0, 0.0])  # exactly on a stamp


def test_slerp_takes_the_short_arc_across_plus_minus_180_degrees():
    q0, q1 = yaw(170).as_quat(), yaw(-170).as_quat()
    middle = Rotation.from_quat(slerp(q0, q1, 0.5))
    assert abs(abs(middle.as_euler("zyx", degrees=True)[0]) - 180.0) < 1e-6  # not 0: the long way round
    assert np.allclose(Rotation.from_quat(slerp(q0, -q0, 0.3)).as_matrix(), yaw(170).as_matrix())


def test_samples_may_arrive_out_of_order_and_a_repeated_stamp_replaces():
    tree = TfTree()
    for stamp, x in [(2.0, 20.0), (0.0, 0.0), (1.0, 99.0), (1.0, 10.0)]:
        tree.set_transform("odom", "base_link", [x, 0, 0], [0, 0, 0, 1], stamp=stamp)
    assert np.isclose(tree.lookup("odom", "base_link", 0.5)[0, 3], 5.0)
    assert np.isclose(tree.lookup("odom", "base_link", 1.5)[0, 3], 15.0)


def test_lookup_outside_the_stamps_is_an_extrapolation_error():
    tree = robot_tree()
    tree.set_transform("odom", "base_link", [0, 0, 0], [0, 0, 0, 1], stamp=10.0)
    tree.set_transform("odom", "base_link", [1, 0, 0], [0, 0, 0, 1], stamp=11.0)
    with pytest.raises(ExtrapolationError, match=r"'odom' -> 'base_link' is known from t=10.000000 to t=11.000000.*after the newest"):
        tree.lookup("odom", "velodyne", 11.5)
    with pytest.raises(ExtrapolationError, match="before the oldest"):
        tree.lookup("velodyne", "odom", 9.0)
    assert not tree.can_transform("odom", "velodyne", 9.0)
    # Static-only chains hold at any time.
    assert np.allclose(tree.lookup("velodyne", "camera_optical", 1e9), tree.lookup("velodyne", "camera_optical"))


def test_latest_lookup_uses_the_newest_time_every_dynamic_edge_knows():
    tree = TfTree()
    for stamp in (0.0, 1.0, 2.0):
        tree.set_transform("odom", "base_link", [stamp, 0, 0], [0, 0, 0, 1], stamp=stamp)
    for stamp in (0.0, 1.0):
        tree.set_transform("map", "odom", [0, 10 * stamp, 0], [0, 0, 0, 1], stamp=stamp)
    assert np.allclose(tree.lookup("map", "base_link")[:3, 3], [1.0, 10.0, 0.0])
    assert np.allclose(tree.lookup("odom", "base_link")[:3, 3], [2.0, 0.0, 0.0])


def test_old_samples_leave_the_cache():
    tree = TfTree(cache_seconds=10.0)
    for stamp in range(21):
        tree.set_transform("odom", "base_link", [stamp, 0, 0], [0, 0, 0, 1], stamp=float(stamp))
    assert np.isclose(tree.lookup("odom", "base_link", 15.5)[0, 3], 15.5)
    with pytest.raises(ExtrapolationError):
        tree.lookup("odom", "base_link", 5.0)


def test_unknown_and_disconnected_frames_are_named():
    tree = robot_tree()
    tree.set_transform("map", "odom", [0, 0, 0], [0, 0, 0, 1])
    with pytest.raises(UnknownFrameError, match=r"unknown frame 'lidar' \(known frames: base_link, camera_optical, map, odom, velodyne\)"):
        tree.lookup("base_link", "lidar")
    with pytest.raises(ConnectivityError, match="'map' and 'velodyne' are not connected.*'map' and 'base_link'"):
        tree.lookup("map", "velodyne")


def test_reparenting_cycles_clear_and_bad_input():
    tree = robot_tree()
    tree.set_transform("odom", "base_link", [0, 0, 0], [0, 0, 0, 1], stamp=1.0)
    assert tree.parent("base_link") == "odom" and tree.parent("/velodyne") == "base_link" and tree.parent("odom") is None
    with pytest.raises(ValueError, match="would close a loop"):
        tree.set_transform("velodyne", "odom", [0, 0, 0], [0, 0, 0, 1])
    tree.clear()  # dynamic edges go, static ones stay
    assert tree.parent("base_link") is None and tree.can_transform("camera_optical", "velodyne")
    tree.set_transform("rig", "velodyne", [0, 0, 0], [0, 0, 0, 1])  # a frame has one parent: re-parented
    assert tree.parent("velodyne") == "rig" and not tree.can_transform("camera_optical", "velodyne")
    for args, message in [(("a", "a", [0, 0, 0], [0, 0, 0, 1]), "to itself"), (("a", "", [0, 0, 0], [0, 0, 0, 1]), "empty frame"),
                          (("a", "b", [0, 0, 0], [0, 0, 0, 0]), "zero norm"), (("a", "b", [0, np.nan, 0], [0, 0, 0, 1]), "finite"),
                          (("a", "b", [0, 0], [0, 0, 0, 1]), "3 finite numbers")]:
        with pytest.raises(ValueError, match=message):
            tree.set_transform(*args)


def test_set_matrix_matches_set_transform():
    T = matrix(Rotation.from_euler("xyz", [10, -20, 30], degrees=True).as_matrix(), [1.0, -2.0, 3.0])
    tree = TfTree()
    tree.set_matrix("a", "b", T)
    assert np.allclose(tree.lookup("a", "b"), T)
    assert np.allclose(tree.lookup("b", "a"), np.linalg.inv(T))


def test_lookups_while_another_thread_adds_transforms():
    """The node adds /tf from its executor thread while its inference thread looks up odom -> base at
    query stamps: with threads switching every microsecond, unlocked lookups read histories half
    pruned (IndexError, hundreds in 1 s); locked, only tf's own errors remain."""
    import sys
    import threading
    import time

    tree = TfTree(cache_seconds=0.5)
    tree.set_transform("odom", "base_link", (0, 0, 0), (0, 0, 0, 1), 0.0)
    deadline = time.monotonic() + 1.0
    errors = []

    def write():
        stamp = 0.0
        while time.monotonic() < deadline:
            stamp += 0.01
            tree.set_transform("odom", "base_link", (stamp, 0, 0), (0, 0, 0, 1), stamp)

    def read():
        while time.monotonic() < deadline:
            try:
                tree.lookup("odom", "base_link", None)
            except ExtrapolationError:
                pass
            except Exception as e:
                errors.append(repr(e))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=write), threading.Thread(target=read)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == [], errors[:3]
