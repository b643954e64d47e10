"""Live session loop closures that LIO-SAM can consume, over FastDDS in separate processes.

A simulated drive around the loop route (13 frames 4.9 s apart; the route revisits its start ~49 s
later) is written with `cmirl bag from-kitti --odom-tf` (/tf odom -> base_link from the ground
truth) and replayed into a node with `session_map: true`. A stand-in for LIO-SAM's subscriber
(`lio_sam_consumer.py`, its own process, on LIO-SAM's topic through the documented remapping) keeps the stamps of the scans it receives as its keyframe
times and fails on any ~/loop_closure message LIO-SAM could not attach to two of them. Then
`~/save_map` writes the session map, which loads as a prior map.
"""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cmirl_ros.ros.localizer_node import READY_LOG
from cmirl_ros.ros.processes import RosProcess, start_localizer

sys.path.insert(0, str(Path(__file__).parent))
from lio_sam_consumer import READY_LOG as CONSUMER_READY  # noqa: E402
from lio_sam_consumer import check_pair  # noqa: E402
from test_node_lifecycle import Client  # noqa: E402

FRAMES = "200:790:49"  # 49 frames = the route's lap: frames 690, 739, 788 revisit 200, 249, 298 (~1 m off)
MIN_GAP_S = 30.0
NODE = "/localizer"
LIO_SAM_TOPIC = "/lio_loop/loop_closure_detection"  # LIO-SAM subscribes to lio_loop/loop_closure_detection


@pytest.fixture(scope="module")
def loop_drive(lite_model, tmp_path_factory):
    """The drive (sequence), its bag with odometry tf, and a prior map with keyframe clouds."""
    from cmirl_ros.cli import main as cmirl
    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.mapdb import build_map
    from cmirl_ros.sim.sequence import SimConfig, simulate_sequence

    from conftest import SIM_SIZE

    root = tmp_path_factory.mktemp("loop_drive")
    simulate_sequence(SimConfig(trajectory="loop", frames=FRAMES, width=SIM_SIZE[0], height=SIM_SIZE[1], workers=1),
                      root, "00", progress=False)
    sequence = KittiSequence(root, "00")
    assert cmirl(["bag", "from-kitti", "--root", str(root), "--seq", "00", "--out", str(root / "bag"), "--odom-tf"]) == 0
    prior = build_map(sequence, lite_model, keyframe_distance=2.0, cloud_voxel=1.0, progress=False).save(root / "map")
    return {"sequence": sequence, "bag": root / "bag", "map": prior, "root": root}


def test_revisits_in_the_drive(loop_drive):
    """The premise: frames more than the gap apart stand within 3 m of each other."""
    poses, stamps = loop_drive["sequence"].poses, loop_drive["sequence"].stamps
    distances = np.linalg.norm(poses[:, None, :3, 3] - poses[None, :, :3, 3], axis=2)
    revisits = (distances < 3.0) & (stamps[:, None] - stamps[None, :] >= MIN_GAP_S)
    assert revisits.sum() >= 2


def test_consumer_check_fails_on_what_lio_sam_cannot_use():
    scans = [10.0, 15.0, 60.0]
    assert check_pair([60.0, 10.0], scans, MIN_GAP_S) == ""
    assert "exactly 2" in check_pair([60.0, 10.0, 0.9], scans, MIN_GAP_S)
    assert "not the stamp of any scan" in check_pair([60.0, 12.3], scans, MIN_GAP_S)  # a prior-map keyframe stamp
    assert "historyKeyframeSearchTimeDiff" in check_pair([15.0, 10.0], scans, MIN_GAP_S)


def wait_until_all_taken(client, scans: int, timeout: float = 120.0) -> None:
    """Until the node's /diagnostics show every scan's query taken by the session map or dropped."""
    from diagnostic_msgs.msg import DiagnosticArray

    last = {}
    client.node.create_subscription(DiagnosticArray, "/diagnostics",
                                    lambda msg: last.update({kv.key: kv.value for kv in msg.status[0].values}), 10)
    taken = lambda: last and int(last["session_queries"]) + int(last["dropped"]) >= scans  # noqa: E731
    assert client.spin_until(taken, timeout), f"the node took only part of {scans} scans: {last}"


@pytest.fixture(scope="module")
def replay(loop_drive, lite_checkpoint, tmp_path_factory):
    """Consumer + node processes, the bag played into them, ~/save_map called before (no
    session_map_out: refused) and after setting session_map_out."""
    import rclpy
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter
    from std_srvs.srv import Trigger

    from cmirl_ros.ros.bag_player import play

    workdir = tmp_path_factory.mktemp("session_replay")
    consumer = RosProcess([sys.executable, str(Path(__file__).parent / "lio_sam_consumer.py"), str(workdir / "consumer.json"),
                           "--loop", LIO_SAM_TOPIC, "--edge", f"{NODE}/loop_closure_edge", "--rejected", f"{NODE}/loop_closure_rejected",
                           "--scans", "/lidar/points", "--min-gap", str(MIN_GAP_S)], workdir / "consumer.log")
    params = {"model": str(lite_checkpoint), "map": str(loop_drive["map"]), "device": "cpu", "num_threads": 2,
              "use_scan": True, "verify": "registration", "session_map": True, "loop_closure_min_gap": MIN_GAP_S,
              "publish_markers": False, "diagnostics_period": 0.5}
    # The remapping docs/ros.md gives for LIO-SAM.
    node = start_localizer(params, workdir, ros_args=("-r", "localizer/loop_closure:=lio_loop/loop_closure_detection"))
    out = workdir / "session_map"
    answers = {}
    try:
        consumer.wait_for(CONSUMER_READY, 60)
        node.wait_for(READY_LOG, 300)
        rclpy.init()
        client_node = rclpy.create_node("session_test_client")
        client = Client(rclpy, client_node)
        try:
            answers["before"] = client.call(Trigger, f"{NODE}/save_map", Trigger.Request())
            # Both the node and the consumer must receive the first scan: the consumer checks every pair's stamps.
            stats = play(client_node, loop_drive["bag"], rate=2.5, wait_for={"/camera/image": 1, "/lidar/points": 2},
                         log=lambda _: None)
            wait_until_all_taken(client, stats.published["/lidar/points"])
            request = SetParameters.Request(parameters=[Parameter("session_map_out", value=str(out)).to_parameter_msg()])
            assert client.call(SetParameters, f"{NODE}/set_parameters", request).results[0].successful
            answers["after"] = client.call(Trigger, f"{NODE}/save_map", Trigger.Request())
            time.sleep(1.0)  # one more /diagnostics
        finally:
            client_node.destroy_node()
            rclpy.try_shutdown()
    finally:
        node_code = node.stop(signal.SIGINT)
        consumer.stop(signal.SIGINT)
    assert node_code == 0 and "Traceback" not in node.log(), node.log()
    return {"consumer": json.loads((workdir / "consumer.json").read_text()), "answers": answers, "out": out,
            "log": node.log()}


def test_verified_session_closures_pass_the_lio_sam_consumer(loop_drive, replay):
    record = replay["consumer"]
    print(f"session loop closures: {record['pairs']}, failures: {record['failures']}, diagnostics: {record['diagnostics']}")
    assert record["failures"] == []
    assert len(record["pairs"]) >= 1, (record["diagnostics"], replay["log"][-3000:])
    bag_stamps = loop_drive["sequence"].stamps
    # Each pair is a verified one, published in full on ~/loop_closure_edge.
    edges = {(round(e["query_stamp"], 6), round(e["matched_stamp"], 6)): e for e in record["edges"]}
    for current, previous in record["pairs"]:
        edge = edges[(round(current, 6), round(previous, 6))]
        assert edge["fitness"] >= 0.4 and edge["query_keyframe_id"] > edge["matched_keyframe_id"]
        information = np.asarray(edge["information"]).reshape(6, 6)
        assert np.linalg.eigvalsh(0.5 * (information + information.T)).min() > 0
        poses = loop_drive["sequence"].poses[[np.argmin(abs(bag_stamps - s)) for s in (previous, current)]]
        assert np.linalg.norm(poses[0, :3, 3] - poses[1, :3, 3]) < 15.0, "a closure between places that overlap"
        assert abs(np.linalg.norm(edge["position"]) - np.linalg.norm(poses[0, :3, 3] - poses[1, :3, 3])) < 0.3
    diagnostics = record["diagnostics"]
    assert int(diagnostics["loop_closures_published"]) == len(record["pairs"])
    assert int(diagnostics["loop_closures_rejected"]) == len(record["rejected"])
    assert all(r["query_stamp"] - r["matched_stamp"] >= MIN_GAP_S for r in record["rejected"])
    assert int(diagnostics["session_keyframes"]) >= 4 and int(diagnostics["no_odometry"]) == 0


def test_save_map_writes_a_prior_map(loop_drive, replay, capsys):
    from cmirl_ros.cli import main as cmirl
    from cmirl_ros.mapdb import MapDatabase

    before, after = replay["answers"]["before"], replay["answers"]["after"]
    assert not before.success and "session_map_out" in before.message
    assert after.success and str(replay["out"]) in after.message, after.message
    mapdb = MapDatabase.load(replay["out"])
    assert len(mapdb) == int(replay["consumer"]["diagnostics"]["session_keyframes"]) and mapdb.clouds is not None
    bag_stamps = loop_drive["sequence"].stamps
    assert all(np.isclose(bag_stamps, s, atol=1e-6).any() for s in mapdb.keyframes.stamps)
    capsys.readouterr()
    assert cmirl(["map", "info", str(replay["out"])]) == 0
    assert json.loads(capsys.readouterr().out)["keyframes"] == len(mapdb)


def test_query_without_odometry_is_counted_and_skipped(loop_drive, lite_model):
    """No odom -> base_link in tf at the scan's stamp: the query is not added, counted, and the
    reason (the frames tf knows) shows in the diagnostics values."""
    from types import SimpleNamespace

    import rclpy

    from cmirl_ros.geometry.tf_tree import TfTree
    from cmirl_ros.localization import LocalizerConfig
    from cmirl_ros.ros.localizer_node import PARAMETERS
    from cmirl_ros.ros.session import SessionLoopClosures

    frame = loop_drive["sequence"][0]
    tree = TfTree()
    tree.set_matrix("base_link", "velodyne", np.eye(4))  # static (no stamp)
    localizer = SimpleNamespace(model=lite_model, config=LocalizerConfig(), mapdb=SimpleNamespace(clouds=SimpleNamespace(voxel_m=1.0)))
    rclpy.init()
    try:
        node = rclpy.create_node("session_odometry_test")
        session = SessionLoopClosures(node, localizer, {**PARAMETERS, "session_map": True})
        session.add(tree, frame.stamp, frame.points, frame.calib, "velodyne")
        values = session.diagnostics()
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
    assert values["no_odometry"] == 1 and values["session_keyframes"] == 0 and values["session_queries"] == 1
    assert "odom" in values["last_odometry_error"], values
