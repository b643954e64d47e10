"""One-shot relocalization of the live node over FastDDS: `initialpose` once per request, verified only.

Node process (shipped cmirl_driving, use_scan, verify: registration, relocalize_on_start,
publish_map_odom_tf) <- bag player process; this process publishes the odometry tf (odom ->
base_link: the ground truth moved by a known offset, as a drifted odometry would be) and listens.
A whole replay (the first half of the stretch) gives exactly one message on /initialpose, the node's
verified ~/match of that query (same stamp, pose and covariance) within 1 m of the ground truth;
map -> odom is broadcast repeatedly, with fresh stamps, and composes with odometry to that pose;
`~/relocalize` arms exactly one more, from the replay of the second half. Without verification the service refuses and relocalize_on_start fails at configure.
"""
from __future__ import annotations

import signal
import sys
from dataclasses import replace

import numpy as np
import pytest
from test_node_lifecycle import Client
from test_node_verify import CLOUD_VOXEL_M, NEAR_FRAMES, QUERY_FRAMES
from test_shipped_model import MODEL, load_shipped_or_skip
from test_slam_inputs import start_namespaced

from cmirl_ros.ros.localizer_node import READY_LOG
from cmirl_ros.ros.processes import RosProcess, start_localizer

# Odometry drifted from the map by this (T_odom_map): the map -> odom tf must undo it.
ODOM_OFFSET_XYZ_YAW = (3.0, -2.0, 0.0, np.radians(20.0))
HALF = 8  # queries in the first replay
RATE = 0.5  # replay rate: verification on 2 shared cores takes most of the 0.4 s between queries


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    """The query stretch (sequence, bags of its two halves, calibration) and a map with clouds of the same stretch."""
    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.mapdb import build_map
    from cmirl_ros.ros.bag_writer import write_bag_from_dataset
    from cmirl_ros.sim.sequence import DEMO_SIM, simulate_sequence

    model = load_shipped_or_skip()
    root = tmp_path_factory.mktemp("relocalize")
    stretches = {}
    for name, frames in (("queries", QUERY_FRAMES), ("near", NEAR_FRAMES)):
        simulate_sequence(replace(DEMO_SIM, frames=frames, workers=1), root / name, "00", progress=False)
        stretches[name] = KittiSequence(root / name, "00")
    near_map = build_map(stretches["near"], model, keyframe_distance=2.0, cloud_voxel=CLOUD_VOXEL_M,
                         progress=False).save(root / "map_near")
    halves = (slice(0, HALF), slice(HALF, None))  # replayed in turn: the node drops stamps that go back in time
    bags = [write_bag_from_dataset(KittiSequence(root / "queries", "00", frames=half), root / f"bag{i}", progress=False)
            for i, half in enumerate(halves)]
    return {"queries": stretches["queries"], "map": near_map, "bags": bags,
            "calib": root / "queries" / "sequences" / "00" / "calib.txt"}


def ground_truth(dataset) -> np.ndarray:
    """(N, 4, 4) true poses in the convention of the node's ~/match: the base in the z-up map."""
    from cmirl_ros.geometry.frames import base_pose_in_map, kitti_T_base_cam

    return base_pose_in_map(dataset.poses, kitti_T_base_cam(dataset.calib.T_cam_sensor))


def offset() -> np.ndarray:
    from scipy.spatial.transform import Rotation

    from cmirl_ros.geometry.camera import make_transform

    x, y, z, yaw = ODOM_OFFSET_XYZ_YAW
    return make_transform(Rotation.from_euler("z", yaw).as_matrix(), np.array([x, y, z]))


def odometry_tf(dataset):
    """One /tf message with odom -> base_link at every query stamp (the node keeps 10 s of history)."""
    from cmirl_ros.ros.bag_writer import transform_stamped
    from cmirl_ros.ros.conversions import seconds_to_stamp
    from cmirl_ros.ros.interfaces import tf_message_type

    poses = offset() @ ground_truth(dataset)
    return tf_message_type()(transforms=[transform_stamped(seconds_to_stamp(s), "odom", "base_link", T)
                                         for s, T in zip(dataset.stamps, poses)])


class Listener:
    """This process's node: publishes odometry tf, collects initialpose, ~/match, map -> odom, diagnostics."""

    def __init__(self, rclpy):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from cmirl_ros.ros.interfaces import tf_message_type

        self.node = rclpy.create_node("relocalize_test")
        self.client = Client(rclpy, self.node)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.initialposes, self.matches, self.map_odom, self.diagnostics = [], {}, [], []
        self.node.create_subscription(PoseWithCovarianceStamped, "/initialpose", self.initialposes.append, reliable)
        self.node.create_subscription(PoseWithCovarianceStamped, "/localizer/match",
                                      lambda m: self.matches.setdefault(seconds(m.header.stamp), m), reliable)
        self.node.create_subscription(tf_message_type(), "/tf", self._on_tf, reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.tf_publisher = self.node.create_publisher(tf_message_type(), "/tf", reliable)

    def _on_tf(self, msg) -> None:
        self.map_odom += [t for t in msg.transforms if (t.header.frame_id, t.child_frame_id) == ("map", "odom")]

    def replay(self, bag, workdir, name: str) -> None:
        player = RosProcess([sys.executable, "-m", "cmirl_ros.cli", "bag", "play", str(bag), "--rate", str(RATE),
                             "--wait-for", "/camera/image", "/lidar/points"], workdir / f"{name}.log")
        self.client.spin_until(lambda: player.process.poll() is not None, 120)
        assert player.stop() == 0, player.log()
        self.client.spin_until(lambda: False, 3.0)  # the last query in flight

    def last_diagnostics(self) -> dict:
        status = self.diagnostics[-1].status[0]
        return {kv.key: kv.value for kv in status.values}


def seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def matrix(pose) -> np.ndarray:
    from cmirl_ros.datasets.bag import pose_to_matrix

    return pose_to_matrix(pose)


def transform_matrix(transform) -> np.ndarray:
    from geometry_msgs.msg import Point, Pose

    t = transform.transform
    return matrix(Pose(position=Point(x=t.translation.x, y=t.translation.y, z=t.translation.z), orientation=t.rotation))


def check_initialpose(initial, matches: dict, queries) -> tuple[float, int]:
    """The initial pose is the node's ~/match of its query, within 1 m of the ground truth: (stamp, query index)."""
    from cmirl_ros.ros.bag_eval import nearest_stamps

    stamp = seconds(initial.header.stamp)
    assert initial.header.frame_id == "map" and initial.pose == matches[stamp].pose, "initialpose is the ~/match of its query"
    frame = int(nearest_stamps(np.array([stamp]), queries.stamps)[0])
    error = np.linalg.norm(matrix(initial.pose.pose)[:3, 3] - ground_truth(queries)[frame, :3, 3])
    print(f"relocalized at {stamp:.3f} (query {frame}): {error:.3f} m from the ground truth; "
          f"{len(matches)} verified matches so far")
    assert error < 1.0
    return stamp, frame


@pytest.mark.slow
def test_one_initialpose_per_request_and_map_odom_tf(drive, ros_workdir):
    import rclpy
    from std_srvs.srv import Trigger

    queries = drive["queries"]
    params = {"model": MODEL, "map": str(drive["map"]), "device": "cpu", "num_threads": 2, "use_scan": True,
              "calib_file": str(drive["calib"]), "verify": "registration", "relocalize_on_start": True,
              "publish_map_odom_tf": True, "diagnostics_period": 0.5}
    node = start_localizer(params, ros_workdir)
    rclpy.init()
    try:
        listener = Listener(rclpy)
        node.wait_for(READY_LOG, 300)
        assert listener.client.spin_until(lambda: listener.tf_publisher.get_subscription_count() >= 2, 30)
        listener.tf_publisher.publish(odometry_tf(queries))
        listener.replay(drive["bags"][0], ros_workdir, "play1")
        assert len(listener.matches) >= 3, f"{len(listener.matches)} verified matches: too few to tell one-shot from frame rate"
        assert len(listener.initialposes) == 1, [seconds(p.header.stamp) for p in listener.initialposes]
        initial = listener.initialposes[0]
        stamp, frame = check_initialpose(initial, listener.matches, queries)

        # map -> odom: re-sent with fresh stamps; composed with odometry it is the initial pose.
        sent = list(listener.map_odom)
        assert len(sent) >= 10 and all(seconds(b.header.stamp) > seconds(a.header.stamp) for a, b in zip(sent, sent[1:]))
        T_map_odom = transform_matrix(sent[-1])
        T_odom_base = offset() @ ground_truth(queries)[frame]
        np.testing.assert_allclose(T_map_odom @ T_odom_base, matrix(initial.pose.pose), atol=1e-6)
        assert np.linalg.norm(T_map_odom[:3, 3] - np.linalg.inv(offset())[:3, 3]) < 2.0, T_map_odom
        assert listener.client.spin_until(lambda: listener.last_diagnostics()["relocalization"] == f"done at {stamp:.3f}", 5)
        assert listener.last_diagnostics()["map_odom_tf"] == "broadcasting"

        response = listener.client.call(Trigger, "/localizer/relocalize", Trigger.Request())
        assert response.success and "armed" in response.message, response.message
        listener.replay(drive["bags"][1], ros_workdir, "play2")
        assert len(listener.initialposes) == 2, [seconds(p.header.stamp) for p in listener.initialposes]
        _, second = check_initialpose(listener.initialposes[1], listener.matches, queries)
        assert second >= HALF
        listener.node.destroy_node()
    finally:
        rclpy.try_shutdown()
        code = node.stop(signal.SIGINT)
    assert code == 0 and "Traceback" not in node.log(), node.log()[-3000:]


def test_relocalization_refused_without_registration(lite_checkpoint, lite_map, ros_workdir):
    """Image-only with the default verify (auto: sequence, keyframe poses): ~/relocalize answers
    success=false with the reason; relocalize_on_start stops configure."""
    import rclpy
    from std_srvs.srv import Trigger

    base = {"model": str(lite_checkpoint), "map": str(lite_map), "device": "cpu"}
    starting = start_namespaced("on_start", {**base, "relocalize_on_start": True}, ros_workdir)  # its own service names
    node = start_localizer(base, ros_workdir)
    rclpy.init()
    try:
        client = Client(rclpy, rclpy.create_node("relocalize_refused"))
        node.wait_for(READY_LOG, 300)
        response = client.call(Trigger, "/localizer/relocalize", Trigger.Request())
        assert not response.success and "verify is 'sequence'" in response.message, response.message
        code = starting.process.wait(timeout=120)
    finally:
        rclpy.try_shutdown()
        starting.stop()
        assert node.stop(signal.SIGINT) == 0, node.log()
    errors = [line for line in starting.log().splitlines() if "[ERROR]" in line]
    assert code == 1 and len(errors) == 1 and "relocalize_on_start" in errors[0] and "verify" in errors[0], starting.log()


def test_relocalization_parameters_checked():
    from cmirl_ros.options import check_parameters as check_options
    from cmirl_ros.options import node_options
    from cmirl_ros.ros.relocalize import check_parameters

    defaults = {option.name: option.default for option in node_options()}
    verified = {**defaults, "relocalize_on_start": True, "verify": "registration", "relocalize_matches": 3}
    check_parameters(verified)
    with pytest.raises(ValueError, match="'relocalize_matches' must be >= 1, got 0"):
        check_options({**verified, "relocalize_matches": 0})
    for unregistered in ("none", "sequence"):
        with pytest.raises(ValueError, match="'relocalize_on_start' needs verify: registration"):
            check_parameters({**verified, "verify": unregistered})
