"""The live session map on simulated HDL-64 scans of the loop route: keyframe spacing, loop closures
verified by registration (relative base pose against the ground truth), the time gap, and the saved
map directory loading as a prior map."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from cmirl_ros.cli import main as cmirl
from cmirl_ros.geometry.frames import kitti_T_base_velo
from cmirl_ros.geometry.registration import RegistrationConfig
from cmirl_ros.localization.session_map import SessionConfig, SessionMap
from cmirl_ros.mapdb import MapDatabase
from cmirl_ros.sim import SimConfig, Simulator

sys.path.insert(0, str(Path(__file__).parent))
from test_localizer import tiny_model  # noqa: E402,F401  (fixture)

FIRST_PASS = range(200, 231, 3)  # the street the lap starts on, 3 m apart (10 m/s, 10 Hz)
T_BASE_VELO = kitti_T_base_velo()
GAP_S = 30.0


@pytest.fixture(scope="module")
def sim():
    return Simulator(SimConfig(trajectory="loop", width=64, height=20, seed=3, workers=1))


@pytest.fixture(scope="module")
def revisit(sim):
    """Frames of the second pass near the middle of FIRST_PASS, 3 m apart."""
    middle = sim.poses[215, :3, 3]
    later = np.flatnonzero(sim.stamps > sim.stamps[230] + GAP_S)
    nearest = int(later[np.argmin(np.linalg.norm(sim.poses[later, :3, 3] - middle, axis=1))])
    assert np.linalg.norm(sim.poses[nearest, :3, 3] - middle) < 1.0
    return [nearest - 3, nearest, nearest + 3]


def T_odom_base(sim, i):
    """Odometry = the ground truth (KITTI world frame), as the base's pose."""
    return sim.poses[i] @ sim.T_cam0_lidar @ np.linalg.inv(T_BASE_VELO)


@pytest.fixture(scope="module")
def session(sim, revisit, tiny_model):
    model, _ = tiny_model
    session = SessionMap(model, RegistrationConfig(voxel_m=1.0),
                         SessionConfig(keyframe_distance=2.0, loop_closure_min_gap=GAP_S, candidates=12))
    calib = sim.calib.calibration()
    updates = {}
    for i in [*FIRST_PASS, 231, *revisit]:  # 231: 1 m after 230, no keyframe
        updates[i] = session.add(float(sim.stamps[i]), T_odom_base(sim, i), T_BASE_VELO, sim.scan(i), calib)
    return session, updates


def test_keyframes_every_keyframe_distance(session, revisit):
    session, updates = session
    assert updates[231].keyframe_id is None and updates[231].closure is None
    assert len(session) == len(FIRST_PASS) + len(revisit) and session.queries == len(FIRST_PASS) + 1 + len(revisit)
    steps = np.linalg.norm(np.diff([T[:3, 3] for T in session.T_odom_base], axis=0), axis=1)
    assert (steps >= 2.0).all()
    assert all(u.closure is None and not u.rejected for i, u in updates.items() if i in FIRST_PASS), \
        "no keyframe of the first pass is older than the gap: nothing to search"


def test_revisit_closes_a_verified_loop_with_the_true_relative_pose(sim, session, revisit):
    session, updates = session
    closures = [updates[i].closure for i in revisit if updates[i].closure is not None]
    assert len(closures) >= 2, [(len(updates[i].rejected), updates[i].closure) for i in revisit]
    for closure in closures:
        assert closure.accepted and closure.query_stamp - closure.matched_stamp >= GAP_S
        assert session.stamps[closure.matched_keyframe_id] == closure.matched_stamp
        query = revisit[closure.query_keyframe_id - len(FIRST_PASS)]
        matched = FIRST_PASS[closure.matched_keyframe_id]
        truth = np.linalg.inv(T_odom_base(sim, matched)) @ T_odom_base(sim, query)
        error = np.linalg.inv(truth) @ closure.T_matched_query
        assert np.linalg.norm(truth[:3, 3]) < 15.0, "overlapping places (LIO-SAM searches 15 m around)"
        assert np.linalg.norm(error[:3, 3]) < 0.2 and np.degrees(np.arccos(np.clip((np.trace(error[:3, :3]) - 1) / 2, -1, 1))) < 1.0
        np.testing.assert_allclose(closure.information, closure.information.T, atol=1e-6)
        assert np.linalg.eigvalsh(closure.information).min() > 0


def test_an_unseen_place_closes_no_loop(sim, revisit, tiny_model):
    """Only keyframes of another street (~120 m away) are old enough: every candidate is rejected."""
    model, _ = tiny_model
    session = SessionMap(model, RegistrationConfig(voxel_m=1.0), SessionConfig(loop_closure_min_gap=GAP_S))
    calib = sim.calib.calibration()
    for i in (375, 378, revisit[1]):
        update = session.add(float(sim.stamps[i]), T_odom_base(sim, i), T_BASE_VELO, sim.scan(i), calib)
    assert update.keyframe_id == 2 and update.closure is None
    assert [pair.matched_keyframe_id for pair in update.rejected] in ([0, 1], [1, 0])
    assert not any(pair.accepted for pair in update.rejected)
    assert all(pair.query_stamp - pair.matched_stamp >= GAP_S and pair.fitness < 0.4 for pair in update.rejected)


def test_saved_session_is_a_prior_map(session, tmp_path, capsys):
    session, _ = session
    out = session.save(tmp_path / "session_map")
    mapdb = MapDatabase.load(out)
    assert len(mapdb) == len(session) and mapdb.clouds is not None and mapdb.clouds.voxel_m == 1.0
    np.testing.assert_array_equal(mapdb.keyframes.stamps, session.stamps)
    np.testing.assert_allclose(mapdb.descriptors, np.stack(session.descriptors))
    T_odom_cam = session.T_odom_base[3] @ session.T_base_sensor[3] @ np.linalg.inv(session.T_cam_sensor[3])
    np.testing.assert_allclose(mapdb.keyframes.pose(3), T_odom_cam, atol=1e-9)
    assert abs(len(mapdb.clouds.cloud(3)) - len(session.clouds[3])) <= 2  # int16 quantisation may merge a point
    session.save(out)  # saving again replaces it
    capsys.readouterr()
    assert cmirl(["map", "info", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["keyframes"] == len(session)


def test_empty_session_refuses_to_save(tiny_model, tmp_path):
    model, _ = tiny_model
    with pytest.raises(ValueError, match="no keyframe yet"):
        SessionMap(model, RegistrationConfig()).save(tmp_path / "empty")
    assert not (tmp_path / "empty").exists()
