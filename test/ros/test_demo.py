"""`cmirl demo`'s ROS-free parts: caching of its inputs, scoring and plotting of the node's SLAM outputs
(the demo itself is `make demo`)."""
from __future__ import annotations

import json
import signal
import time

import numpy as np

from cmirl_ros.ros import demo


def test_cached_builds_once_and_rebuilds_when_the_source_changes(tmp_path):
    built = []

    def build():
        (tmp_path / "thing").write_text(str(len(built)))
        built.append(1)

    target = tmp_path / "thing"
    for source in ({"a": (1, 2)}, {"a": (1, 2)}, {"a": (1, 3)}):
        assert demo.cached(target, source, build, "a thing") == target
    assert len(built) == 2 and demo.source_of(target) == {"a": [1, 3]}
    (tmp_path / "thing.source.json").unlink()  # e.g. an interrupted build: the record is written last
    demo.cached(target, {"a": (1, 3)}, build, "a thing")
    assert len(built) == 3


def drive():
    """60 frames along map x at 1 m/s, then back over the first 20 m, 100 s later: 20 true revisits."""
    xs = np.r_[np.arange(60.0), np.arange(20.0)]
    stamps = np.r_[np.arange(60.0), 160.0 + np.arange(20.0)]
    poses = np.tile(np.eye(4), (len(xs), 1, 1))
    poses[:, 0, 3] = xs
    return stamps, poses


def test_slam_outputs_are_scored_summarised_and_plotted(tmp_path, capsys):
    stamps, poses = drive()
    reloc = poses[62].copy()
    reloc[1, 3] += 0.2
    def edge(query, matched, T):
        return {"query_stamp": query, "matched_stamp": matched, "score": 0.9, "fitness": 0.5, "relative_pose": T.tolist()}

    outputs = {"loop_closures": [[160.0 + k, float(k)] for k in range(18)] + [[179.0, 45.0]],  # 18 true, 1 false
               "malformed_loop_closures": 0, "rejected": [edge(170.0, 30.0, np.eye(4))],
               # the far pair's edge states the true 26 m: a right constraint, judged right
               "edges": [edge(160.0, 0.0, np.eye(4)), edge(179.0, 45.0, np.linalg.inv(poses[45]) @ poses[79])],
               "initialposes": [{"stamp": 162.0, "frame_id": "map", "pose": reloc.tolist()}]}
    slam = demo.score_slam(outputs, stamps, poses)
    assert slam["loop_closures_published"] == 19 and slam["loop_closure_revisit_frames"] == 20
    assert slam["loop_closure_precision"] == 1.0 and slam["loop_closure_place_precision"] == 18 / 19
    assert slam["loop_closure_recall"] == 19 / 20 and slam["loop_closures_without_pose"] == 17
    assert abs(slam["relocalization_error_m"] - 0.2) < 1e-9 and slam["loop_closures_rejected"] == 1
    result = {"images_played": 80, "queries_answered": 80, "answered_fraction": 1.0, "latency_ms_p50": 30.0,
              "latency_ms_p95": 50.0, "dropped": 0, "rejected": 0, "model": "m", "radius_m": 10.0,
              "protocols": {"paper": {"recall@1": 0.5, "recall@1%": 0.7}, "revisit": {"recall@1": 0.4, "queries": 20}}}
    image_only = {"paper": {"recall@1": 0.1, "recall@1%": 0.3, "num_queries": 80},
                  "revisit": {"recall@1": 0.05, "num_queries": 20}}
    summary = demo.summarize(result, image_only, slam)
    for key in ("answered_fraction", "recall@1", "loop_closures_published", "loop_closure_precision",
                "loop_closure_recall", "relocalization_error_m", "latency_ms_p50"):
        assert key in summary
    assert summary["recall@1"] == 0.1 and summary["recall_inputs"] == "image"  # issue 11 reads it as image-only
    assert summary["node_recall@1"] == 0.5 and summary["query_inputs"] == "image+scan"
    plot = tmp_path / "trajectory.png"
    demo.plot_demo(plot, stamps, poses, poses[:60:2], outputs, summary)
    assert plot.stat().st_size > 10_000
    demo.print_summary(summary, plot)
    printed = capsys.readouterr().out
    assert "Recall@1 10.0% on the prior map, image-only queries" in printed and "node Recall@1 50.0%" in printed
    assert ("19 published; precision 100.0% = pairs whose published relative pose (~/loop_closure_edge) is within "
            "1 m / 5 deg of the truth; place precision 94.7% = pairs whose two places are within 10 m") in printed
    assert "loop-closure recall 95.0% of 20 true revisits" in printed
    assert "error 0.20 m" in printed


def test_recorded_slam_outputs_read_back(ros_workdir):
    """The recorder (another process) writes LoopClosure (generated type, registered from its .msg) and
    /initialpose; `read_recording` parses them and drops a ~/loop_closure that is not 2 values."""
    import rclpy
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Float64MultiArray

    from cmirl_ros.ros.bag_eval import OUTPUTS, SLAM_OUTPUTS, read_recording
    from cmirl_ros.ros.conversions import seconds_to_stamp
    from cmirl_ros.ros.interfaces import loop_closure_type
    from cmirl_ros.ros.processes import start_recorder

    topics = {OUTPUTS["loop_closure"]: Float64MultiArray, SLAM_OUTPUTS["loop_closure_edge"]: loop_closure_type(),
              SLAM_OUTPUTS["loop_closure_rejected"]: loop_closure_type(), SLAM_OUTPUTS["initialpose"]: PoseWithCovarianceStamped}
    recorder = start_recorder(ros_workdir / "outputs", list(topics), ros_workdir)
    rclpy.init()
    node = rclpy.create_node("cmirl_slam_outputs_test")
    try:
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        publishers = {topic: node.create_publisher(cls, topic, reliable) for topic, cls in topics.items()}
        for topic in topics:
            recorder.wait_for(f"recording {topic}", 30)
        deadline = time.monotonic() + 20
        while any(p.get_subscription_count() == 0 for p in publishers.values()):
            assert time.monotonic() < deadline, "the recorder never subscribed"
            rclpy.spin_once(node, timeout_sec=0.05)
        publishers[OUTPUTS["loop_closure"]].publish(Float64MultiArray(data=[160.5, 12.25]))
        publishers[OUTPUTS["loop_closure"]].publish(Float64MultiArray(data=[1.0, 2.0, 3.0]))
        edge = loop_closure_type()(query_stamp=seconds_to_stamp(160.5), matched_stamp=seconds_to_stamp(12.25),
                                   score=0.75, fitness=0.5)
        edge.relative_pose.orientation.w = 1.0
        publishers[SLAM_OUTPUTS["loop_closure_edge"]].publish(edge)
        pose = PoseWithCovarianceStamped()
        pose.header.stamp, pose.header.frame_id = seconds_to_stamp(3.5), "map"
        pose.pose.pose.position.x, pose.pose.pose.orientation.w = 4.0, 1.0
        publishers[SLAM_OUTPUTS["initialpose"]].publish(pose)
        time.sleep(1.0)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        recorder.stop(signal.SIGINT)
    outputs = read_recording(ros_workdir / "outputs").slam_outputs
    assert outputs["loop_closures"] == [[160.5, 12.25]] and outputs["malformed_loop_closures"] == 1
    assert outputs["edges"] == [{"query_stamp": 160.5, "matched_stamp": 12.25, "score": 0.75, "fitness": 0.5,
                                 "relative_pose": np.eye(4).tolist()}] and outputs["rejected"] == []
    (initialpose,) = outputs["initialposes"]
    assert initialpose["stamp"] == 3.5 and initialpose["frame_id"] == "map"
    np.testing.assert_allclose(np.array(initialpose["pose"])[:3, 3], [4.0, 0.0, 0.0])


def test_image_only_recall_scores_what_the_localizer_answers(sim_root, lite_model, lite_map, monkeypatch):
    """The demo's `recall@1` (issue 11 reads it as image-only): the core `Localizer`'s top-1 keyframe for
    each image, right within the radius. Frames lie 1 m apart here: a 1.5 m radius discriminates."""
    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.localization import Localizer, LocalizerConfig
    from cmirl_ros.mapdb import MapDatabase

    monkeypatch.setattr(demo, "RECALL_RADIUS_M", 1.5)
    recall = demo.image_only_recall(sim_root, lite_map, lite_model)
    assert json.loads(json.dumps(recall)) == recall  # cached as JSON by the demo
    drive, mapdb = KittiSequence(sim_root, demo.SEQ), MapDatabase.load(lite_map)
    localizer = Localizer(lite_model, mapdb, LocalizerConfig(top_k=1))
    top1 = [localizer.localize(drive[i].image, stamp=drive[i].stamp).matches[0].keyframe_id for i in range(len(drive))]
    axes = list(drive.frame_convention.ground_axes)
    keyframes = np.stack([mapdb.keyframes.pose(k)[:3, 3] for k in top1])[:, axes]
    truth = drive.frame_convention.to_map(drive.poses)[:, :3, 3][:, axes]
    hits = np.linalg.norm(keyframes - truth, axis=1) < 1.5
    assert recall["paper"]["num_queries"] == len(drive) == 40 and 0.0 < hits.mean() < 1.0
    assert recall["paper"]["recall@1"] == hits.mean()
