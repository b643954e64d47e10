"""Registration verification on simulated HDL-64 scans, keyframe clouds in the map, the stage registry."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cmirl_ros.cli import main as cmirl
from cmirl_ros.evaluation.metrics import pose_errors, verified_match_figures
from cmirl_ros.geometry.clouds import transform_points
from cmirl_ros.geometry.registration import RegistrationConfig, prepare_query, register
from cmirl_ros.localization import Localizer, LocalizerConfig
from cmirl_ros.localization.stages import STAGES, Candidates, register_stage, stage_names
from cmirl_ros.mapdb import Keyframes, MapDatabase
from cmirl_ros.mapdb.clouds import KeyframeClouds
from cmirl_ros.mapdb.export import read_ply
from cmirl_ros.sim import SimConfig, Simulator

QUERY, NEAR = 100, 103  # on the loop route's first street, about 3 m apart


@pytest.fixture(scope="module")
def sim():
    return Simulator(SimConfig(trajectory="loop", width=64, height=20, seed=3, workers=1))


@pytest.fixture(scope="module")
def far(sim):
    """A frame of the route's first lap at least 80 m from QUERY: another street."""
    distances = np.linalg.norm(sim.poses[:300, :3, 3] - sim.poses[QUERY, :3, 3], axis=1)
    return int(np.flatnonzero(distances > 80)[0])


@pytest.fixture(scope="module")
def scans(sim, far):
    return {i: sim.scan(i) for i in (QUERY, NEAR, far)}


def T_world_cam(sim, i):
    return sim.poses[i] @ sim.T_cam0_cam2


def T_world_lidar(sim, i):
    return sim.poses[i] @ sim.T_cam0_lidar


def rotation_deg(T):
    return np.degrees(np.arccos(np.clip((np.trace(T[:3, :3]) - 1) / 2, -1, 1)))


def test_registration_recovers_the_motion_of_a_moved_copy(scans):
    config = RegistrationConfig()
    T_target_source = np.eye(4)
    yaw = np.radians(4.0)
    T_target_source[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    T_target_source[:3, 3] = [1.8, -0.6, 0.05]
    target = scans[QUERY][:, :3]
    source = transform_points(np.linalg.inv(T_target_source), target)  # the same scene seen from the moved sensor
    result = register(prepare_query(source, config), prepare_query(target, config), np.eye(4), config)
    error = np.linalg.inv(T_target_source) @ result.T_target_source
    assert result.accepted and result.fitness > 0.6
    assert np.linalg.norm(error[:3, 3]) < 0.05 and rotation_deg(error) < 0.2


def test_registration_of_two_real_scans_matches_ground_truth_and_has_an_spd_information(sim, scans):
    config = RegistrationConfig()
    truth = np.linalg.inv(T_world_lidar(sim, NEAR)) @ T_world_lidar(sim, QUERY)  # T_near_query (sensor frames)
    assert np.linalg.norm(truth[:3, 3]) > 2.0
    result = register(prepare_query(scans[QUERY], config), prepare_query(scans[NEAR], config), np.eye(4), config)
    error = np.linalg.inv(truth) @ result.T_target_source
    assert result.accepted
    assert np.linalg.norm(error[:3, 3]) < 0.2 and rotation_deg(error) < 1.0
    information = result.information
    np.testing.assert_allclose(information, information.T, rtol=1e-9, atol=1e-9)
    assert np.linalg.eigvalsh(information).min() > 0


def test_a_wrong_place_is_rejected(scans, far):
    config = RegistrationConfig()
    result = register(prepare_query(scans[QUERY], config), prepare_query(scans[far], config), np.eye(4), config)
    assert not result.accepted and result.fitness < config.min_fitness


def cloud_map(sim, scans, ids, descriptors, stamps=None):
    """A map whose keyframes are frames `ids` (camera poses, clouds of their scans)."""
    poses = np.stack([T_world_cam(sim, i) for i in ids])
    stamps = np.arange(len(ids), dtype=float) if stamps is None else stamps
    keyframes = Keyframes.from_poses(poses, stamps, "sim", [f"{i:06d}" for i in ids])
    T_cam_sensor = np.linalg.inv(sim.T_cam0_cam2) @ sim.T_cam0_lidar
    clouds = KeyframeClouds.from_scans([scans[i] for i in ids], np.tile(T_cam_sensor, (len(ids), 1, 1)), 1.0)
    return MapDatabase(descriptors, keyframes, {"model": {"name": "test"}}, clouds=clouds)


def unit(vectors):
    vectors = np.asarray(vectors, np.float32)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def test_a_failing_top1_gives_way_to_a_verified_top2_with_the_refined_pose(sim, scans, far):
    # Descriptors rank the wrong place first; registration must drop it and keep the true one.
    mapdb = cloud_map(sim, scans, [far, NEAR], unit([[1, 0, 0], [0.8, 0.6, 0]]))
    query = unit([1, 0.1, 0])
    calib = sim.calib.calibration()
    plain = Localizer(None, mapdb, LocalizerConfig(top_k=2)).localize_descriptor(query, 100.0)
    assert [m.keyframe_id for m in plain.matches] == [0, 1] and not plain.matches[0].verified
    localizer = Localizer(None, mapdb, LocalizerConfig(top_k=2, verify="registration", verify_candidates=2))
    result = localizer.localize_descriptor(query, 100.0, scans[QUERY], calib)
    assert [m.keyframe_id for m in result.matches] == [1]
    best = result.matches[0]
    assert best.verified and best.verification["fitness"] >= 0.4
    error = pose_errors(best.T_world_query, T_world_cam(sim, QUERY))[0]
    assert error[0] < 0.2 and error[1] < 1.0
    np.testing.assert_allclose(best.T_world_cam @ best.T_keyframe_query, best.T_world_query, atol=1e-9)
    assert np.linalg.eigvalsh(best.information).min() > 0
    assert result.covariance.shape == (6, 6) and np.linalg.eigvalsh(result.covariance).min() > 0
    assert "verify" in result.timings_ms


def test_no_verified_candidate_means_no_match(sim, scans, far):
    mapdb = cloud_map(sim, scans, [far], unit([[1, 0, 0]]))
    localizer = Localizer(None, mapdb, LocalizerConfig(top_k=1, verify="registration"))
    result = localizer.localize_descriptor(unit([1, 0, 0]), 0.0, scans[QUERY], sim.calib.calibration())
    assert result.matches == [] and result.covariance is None
    with pytest.raises(ValueError, match="live scan"):
        localizer.localize_descriptor(unit([1, 0, 0]), 0.0)


def test_clouds_round_trip_with_checksums_and_old_maps_load(tmp_path, sim, scans, far):
    mapdb = cloud_map(sim, scans, [QUERY, far], unit([[1, 0, 0], [0, 1, 0]]))
    mapdb.save(tmp_path / "map")
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert {"clouds.npy", "cloud_offsets.npy", "cloud_T_cam_sensor.npy"} <= set(manifest["files"])
    assert manifest["clouds"]["voxel_m"] == 1.0
    loaded = MapDatabase.load(tmp_path / "map")
    for i in range(2):
        np.testing.assert_array_equal(loaded.clouds.cloud(i), mapdb.clouds.cloud(i))
        assert np.abs(loaded.clouds.cloud(i)).max() > 20  # metres, not centimetres
    np.testing.assert_array_equal(loaded.clouds.T_cam_sensor, mapdb.clouds.T_cam_sensor)
    path = tmp_path / "map" / "clouds.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="clouds.npy: corrupted"):
        MapDatabase.load(tmp_path / "map")
    # A map without clouds (as built before them) loads; registration on it says what to do.
    MapDatabase(mapdb.descriptors, mapdb.keyframes, mapdb.manifest).save(tmp_path / "old")
    old = MapDatabase.load(tmp_path / "old")
    assert old.clouds is None
    with pytest.raises(ValueError, match="--cloud-voxel"):
        Localizer(None, old, LocalizerConfig(verify="registration"))


def test_merge_keeps_the_clouds_of_every_shard(sim, scans, far):
    a = cloud_map(sim, scans, [QUERY], unit([[1, 0, 0]]))
    b = cloud_map(sim, scans, [far, NEAR], unit([[0, 1, 0], [0, 0, 1]]))
    merged = MapDatabase.merge([a, b])
    np.testing.assert_array_equal(merged.clouds.cloud(0), a.clouds.cloud(0))
    np.testing.assert_array_equal(merged.clouds.cloud(2), b.clouds.cloud(1))


def test_map_export_writes_the_merged_cloud_in_the_map_frame(tmp_path, sim, scans, far, capsys):
    mapdb = cloud_map(sim, scans, [QUERY, far], unit([[1, 0, 0], [0, 1, 0]]))
    mapdb.save(tmp_path / "map")
    assert cmirl(["map", "export", str(tmp_path / "map"), "--out", str(tmp_path / "map.ply"), "--voxel", "0"]) == 0
    points = read_ply(tmp_path / "map.ply")
    assert len(points) == len(mapdb.clouds.points)
    # Keyframe QUERY's cloud placed with T_world_cam @ T_cam_sensor lies on its scan in the world.
    expected = transform_points(T_world_lidar(sim, QUERY), mapdb.clouds.cloud(0))
    np.testing.assert_allclose(points[: len(expected)], expected, atol=1e-3)
    capsys.readouterr()
    assert cmirl(["map", "info", str(tmp_path / "map")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["clouds"]["points"] == len(points) and info["clouds"]["bytes"] > 6 * len(points)


def keep_odd_ids(config, mapdb):
    """A stage defined outside the package: keeps candidates with odd keyframe ids."""
    def verify(candidates: Candidates, query) -> Candidates:
        return candidates.take(candidates.ids % 2 == 1)

    return verify


def test_the_stage_registry_takes_a_stage_from_another_module(sim, scans, far, monkeypatch):
    stage_names("verify")  # the package's own stages first: they must outlive this test's copy of the table
    monkeypatch.setattr(STAGES, "_items", dict(STAGES._items))  # the registration ends with this test
    register_stage("verify", "test_keep_odd_ids")(keep_odd_ids)
    mapdb = cloud_map(sim, scans, [QUERY, NEAR, far], unit([[1, 0, 0], [0.9, 0.1, 0], [0.8, 0.2, 0]]))
    result = Localizer(None, mapdb, LocalizerConfig(top_k=3, verify="test_keep_odd_ids")).localize_descriptor(
        unit([1, 0, 0]))
    assert [m.keyframe_id for m in result.matches] == [1]
    with pytest.raises(ValueError, match="unknown verify stage 'nope'.*registration"):
        LocalizerConfig(verify="nope")


def test_verified_match_figures_by_hand():
    verified = np.array([True, True, False, True, False])
    correct = np.array([True, False, False, True, False])
    has_revisit = np.array([True, True, True, False, True])
    errors = np.array([[0.1, 0.5], [9.0, 20.0], [np.nan, np.nan], [0.3, 0.1], [np.nan, np.nan]])
    figures = verified_match_figures(verified, correct, has_revisit, errors)
    assert figures["verified_precision"] == pytest.approx(2 / 3)
    assert figures["verified_recall"] == pytest.approx(1 / 4)
    assert figures["pose_error_m_p50"] == pytest.approx(0.3) and figures["pose_error_deg_p50"] == pytest.approx(0.5)


def test_scan_context_finds_the_place_and_its_yaw(scans, far):
    from cmirl_ros.geometry.registration import yaw_about_z
    from cmirl_ros.geometry.scan_context import distances, scan_context

    T_target_source = yaw_about_z(np.radians(150.0))  # the query drives the street the other way round
    query = transform_points(np.linalg.inv(T_target_source), scans[QUERY][:, :3])
    contexts = np.stack([scan_context(scans[i]) for i in (far, QUERY)])
    distance, yaw = distances(scan_context(query), contexts)
    assert distance[1] < 0.1 < distance[0]
    assert abs(np.degrees(yaw[1]) - 150.0) <= 6.0  # one 6-degree sector


def test_scan_context_retrieval_adds_the_place_the_descriptor_misses(sim, scans, far):
    # The descriptor ranks the true place (id 2) last, out of the 2 candidates FAISS returns;
    # faiss_scan_context brings it in from the live scan and registration verifies it.
    mapdb = cloud_map(sim, scans, [far, far, NEAR], unit([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0]]))
    config = dict(top_k=1, verify="registration", verify_candidates=2, scan_context_candidates=1)
    calib = sim.calib.calibration()
    faiss_only = Localizer(None, mapdb, LocalizerConfig(**config))
    assert faiss_only.localize_descriptor(unit([1, 0, 0]), 0.0, scans[QUERY], calib).matches == []
    localizer = Localizer(None, mapdb, LocalizerConfig(**config, retrieve="faiss_scan_context"))
    result = localizer.localize_descriptor(unit([1, 0, 0]), 0.0, scans[QUERY], calib)
    assert [m.keyframe_id for m in result.matches] == [2] and result.matches[0].verified


def test_scan_context_ignores_the_sensor_height(scans):
    # The two passes of a revisit can drive metres apart in height; the cell's vertical extent stays.
    from cmirl_ros.geometry.scan_context import distances, scan_context

    lifted = scans[QUERY][:, :3] + [0.0, 0.0, 3.0]
    distance, _ = distances(scan_context(lifted), scan_context(scans[QUERY])[None])
    assert distance[0] < 1e-6


def other_lane_opposite_direction(scan):
    """(T_target_source, source scan): `scan` seen from a sensor 10 m away (8 m along the street, 6 m
    aside: the other lane, half-way to the next keyframe), turned 180 degrees."""
    from cmirl_ros.geometry.registration import yaw_about_z

    T_target_source = yaw_about_z(np.pi)
    T_target_source[:3, 3] = [8.0, -6.0, 0.0]
    return T_target_source, transform_points(np.linalg.inv(T_target_source), scan[:, :3])


def test_a_virtual_viewpoint_finds_a_scan_taken_in_the_other_lane(scans):
    from cmirl_ros.geometry.scan_context import VIEWPOINT_OFFSETS_M, distances, scan_context, viewpoint_contexts

    _, query = other_lane_opposite_direction(scans[QUERY])
    distance, yaw = distances(scan_context(query), viewpoint_contexts(scans[QUERY]))
    best = int(np.argmin(distance))
    assert VIEWPOINT_OFFSETS_M[best] == (6.0, -6.0)  # the viewpoint nearest the query
    assert distance[best] < distance[VIEWPOINT_OFFSETS_M.index((0.0, 0.0))]
    assert abs(abs(np.degrees(yaw[best])) - 180.0) <= 6.0


def test_an_opposite_direction_revisit_in_the_other_lane_is_retrieved_and_verified(sim, scans):
    # Seen from the keyframe's own sensor, Scan Context ranks other streets above the revisit 10 m
    # away in the other direction (distance 0.52 against 0.47); from its best virtual viewpoint the
    # revisit comes first (0.22), and registration from that viewpoint and its yaw converges.
    distances = np.linalg.norm(sim.poses[:300, :3, 3] - sim.poses[QUERY, :3, 3], axis=1)
    streets = [int(i) for i in np.flatnonzero(distances > 80)[::15]]
    clouds = {**{i: sim.scan(i) for i in streets}, QUERY: scans[QUERY]}
    T_target_source, query = other_lane_opposite_direction(scans[QUERY])
    descriptors = unit(np.eye(len(streets) + 1))  # the query's descriptor points at the first street
    mapdb = cloud_map(sim, clouds, [*streets, QUERY], descriptors, stamps=np.zeros(len(streets) + 1))
    config = LocalizerConfig(top_k=1, verify="registration", verify_candidates=2, scan_context_candidates=1,
                             retrieve="faiss_scan_context")
    result = Localizer(None, mapdb, config).localize_descriptor(descriptors[0], 100.0, query, sim.calib.calibration())
    assert [m.keyframe_id for m in result.matches] == [len(streets)] and result.matches[0].verified
    T_cam_sensor = mapdb.clouds.T_cam_sensor[len(streets)]
    truth = T_cam_sensor @ T_target_source @ np.linalg.inv(T_cam_sensor)  # T_keyframe_query, cameras
    error = np.linalg.inv(truth) @ result.matches[0].T_keyframe_query
    assert np.linalg.norm(error[:3, 3]) < 0.05 and rotation_deg(error) < 0.2


def test_map_build_and_eval_with_registration_verification(tmp_path, capsys):
    from cmirl_ros.sim import simulate_sequence

    config = SimConfig(trajectory="loop", frames="100:112:2", width=160, height=48, seed=3, workers=1)
    simulate_sequence(config, tmp_path / "sim", "00", progress=False)
    data = ["--dataset", "kitti", "--root", str(tmp_path / "sim"), "--seq", "00"]
    assert cmirl(["map", "build", "--model", "cmirl_driving", *data, "--out", str(tmp_path / "map"), "--device", "cpu"]) == 0
    assert cmirl(["eval", "--model", "cmirl_driving", "--map", str(tmp_path / "map"), *data, "--radius", "10",
                  "--protocol", "paper", "--with-scan", "--verify", "registration", "--verify-candidates", "6",
                  "--device", "cpu", "--json", str(tmp_path / "eval.json")]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    # Paper protocol: each query's own scan is in the map, so every query verifies, to the millimetre.
    assert report["verify"] == "registration" and report["verified_matches"] == 6
    assert report["verified_precision"] == 1.0 and report["verified_recall"] == 1.0
    assert report["pose_error_m_p50"] < 0.05 and report["pose_error_deg_p50"] < 0.5
    capsys.readouterr()
    assert cmirl(["eval", "--model", "cmirl_driving", "--map", str(tmp_path / "map"), *data, "--radius", "10",
                  "--protocol", "paper", "--verify", "registration", "--device", "cpu", "--json", str(tmp_path / "e.json")]) == 2
    assert "add --with-scan" in capsys.readouterr().err


def test_verified_covariance_is_position_and_rotation_about_the_map_axes():
    # ROS's PoseWithCovariance: x, y, z then rotation about the fixed map axes. Far from the origin
    # the rotation uncertainty must not leak into the position (the full adjoint's skew(p) term).
    from cmirl_ros.geometry.registration import yaw_about_z
    from cmirl_ros.localization.stages.pose import map_frame_covariance

    T_world_query = yaw_about_z(np.pi / 2)
    T_world_query[:3, 3] = [500.0, -300.0, 10.0]
    sigma = np.array([0.1, 0.2, 0.3, 0.01, 0.02, 0.03])  # query frame: tx, ty, tz, rx, ry, rz
    covariance = map_frame_covariance(T_world_query, np.diag(1.0 / sigma**2))
    R = T_world_query[:3, :3]
    np.testing.assert_allclose(covariance[:3, :3], R @ np.diag(sigma[:3] ** 2) @ R.T, atol=1e-12)
    np.testing.assert_allclose(covariance[3:, 3:], R @ np.diag(sigma[3:] ** 2) @ R.T, atol=1e-12)
    np.testing.assert_allclose(covariance[:3, 3:], 0.0, atol=1e-12)
