"""One-shot relocalization (cmirl_ros/localization/relocalization.py): one pose per arming, verified only."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from cmirl_ros.geometry.camera import make_transform
from cmirl_ros.localization.relocalization import OneShotRelocalization, Relocalization, poses_agree

COVARIANCE = np.diag([0.01, 0.01, 0.01, 1e-4, 1e-4, 1e-4])


def pose(x: float, y: float = 0.0, yaw: float = 0.0) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return make_transform(np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]), np.array([x, y, 0.0]))


def test_one_pose_per_arming_and_only_verified():
    state = OneShotRelocalization()
    assert state.offer(0.0, pose(1), COVARIANCE, verified=True) is None, "idle: nothing is released"
    assert state.status() == "idle"
    state.arm()
    assert state.armed and state.status().startswith("armed")
    assert state.offer(0.1, pose(2), COVARIANCE, verified=False) is None, "an unverified match never becomes a pose"
    released = state.offer(0.2, pose(3), COVARIANCE, verified=True)
    assert released is not None and released.stamp == 0.2
    np.testing.assert_array_equal(released.T_map_base, pose(3))
    np.testing.assert_array_equal(released.covariance, COVARIANCE)
    assert not state.armed and state.status() == "done at 0.200"
    # Frame rate afterwards: nothing more until re-armed, then exactly one more.
    assert all(state.offer(0.3 + 0.1 * i, pose(4 + i), COVARIANCE, verified=True) is None for i in range(20))
    state.arm()
    assert state.offer(5.0, pose(9), COVARIANCE, verified=True).stamp == 5.0
    assert state.offer(5.1, pose(9), COVARIANCE, verified=True) is None
    assert state.released == 2


def test_k_agreeing_matches_with_odometry_robot_moving():
    """K = 3: the robot drives on; its matches agree on the map -> odom correction, the latest is released."""
    T_map_odom = pose(10.0, -4.0, 0.3)
    state = OneShotRelocalization(matches_needed=3)
    state.arm()
    odometry = [pose(2.0 * i, 0.1 * i, 0.05 * i) for i in range(3)]
    results = [state.offer(i, T_map_odom @ T_odom_base, COVARIANCE, True, T_odom_base) for i, T_odom_base in enumerate(odometry)]
    assert results[:2] == [None, None] and results[2] is not None and results[2].stamp == 2
    np.testing.assert_allclose(results[2].T_map_odom, T_map_odom, atol=1e-9)
    assert state.status() == "done at 2.000"


def test_k_matches_a_disagreeing_one_starts_a_new_streak_unverified_ones_do_not_break_it():
    state = OneShotRelocalization(matches_needed=2)
    state.arm()
    assert state.offer(0.0, pose(0.0), COVARIANCE, True) is None
    assert state.offer(0.1, pose(50.0), COVARIANCE, True) is None, "50 m off the first: a new streak"
    assert state.status() == "armed (1/2 agreeing verified matches)"
    assert state.offer(0.2, pose(0.0), COVARIANCE, False) is None
    released = state.offer(0.3, pose(50.3, yaw=0.05), COVARIANCE, True)
    assert released is not None and released.stamp == 0.3, "agrees with the streak's first (50 m), despite the unverified"


def test_agreement_without_odometry_compares_base_poses():
    a = Relocalization(0.0, pose(0.0), COVARIANCE)
    assert poses_agree(a, Relocalization(1.0, pose(0.5, yaw=0.1), COVARIANCE))
    assert not poses_agree(a, Relocalization(1.0, pose(1.5), COVARIANCE))
    assert not poses_agree(a, Relocalization(1.0, pose(0.0, yaw=0.5), COVARIANCE))
    # One of the two without odometry: the poses are compared, not the corrections.
    assert poses_agree(a, Relocalization(1.0, pose(0.0), COVARIANCE, T_odom_base=pose(30.0)))


def test_bad_k_refused():
    with pytest.raises(ValueError, match="matches_needed must be >= 1"):
        OneShotRelocalization(matches_needed=0)


def test_concurrent_offers_release_exactly_one():
    """Armed from a service thread, offered from an inference thread: never two poses for one arming."""
    state = OneShotRelocalization()
    state.arm()
    released = []
    threads = [threading.Thread(target=lambda i=i: released.append(state.offer(i, pose(i), COVARIANCE, True)))
               for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r is not None for r in released) == 1
