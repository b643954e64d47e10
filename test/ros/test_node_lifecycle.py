"""The node as a managed (lifecycle) node, its services, markers and diagnostics, in a separate process."""
from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from cmirl_ros.ros.localizer_node import READY_LOG, UNVERIFIED_LOG, WAITING_LOG
from cmirl_ros.ros.processes import start_localizer


class Client:
    """Test-side ROS node: service calls and topic waits with timeouts."""

    def __init__(self, rclpy, node):
        self.rclpy, self.node = rclpy, node

    def call(self, srv_type, name: str, request, timeout: float = 60.0):
        client = self.node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
        future = client.call_async(request)
        self.rclpy.spin_until_future_complete(self.node, future, timeout_sec=timeout)
        assert future.done(), f"service {name} did not answer within {timeout} s"
        return future.result()

    def spin_until(self, condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            self.rclpy.spin_once(self.node, timeout_sec=0.05)
        return condition()


def transition(client: Client, transition_id: int) -> bool:
    from lifecycle_msgs.srv import ChangeState

    request = ChangeState.Request()
    request.transition.id = transition_id
    return client.call(ChangeState, "/localizer/change_state", request).success


def state(client: Client) -> str:
    from lifecycle_msgs.srv import GetState

    return client.call(GetState, "/localizer/get_state", GetState.Request()).current_state.label


def test_managed_node_lifecycle_and_services(sim_root, lite_checkpoint, lite_map, ros_workdir):
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from lifecycle_msgs.msg import Transition
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_srvs.srv import SetBool, Trigger
    from visualization_msgs.msg import MarkerArray

    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.ros.conversions import numpy_to_image, seconds_to_stamp

    process = start_localizer({"managed": True, "model": str(lite_checkpoint), "map": str(lite_map), "device": "cpu",
                               "verify": "none", "qos": "reliable", "num_threads": 2, "diagnostics_period": 0.2,
                               "publish_debug_image": True, "max_query_rate": 2.0}, ros_workdir)
    rclpy.init()
    node = rclpy.create_node("cmirl_lifecycle_test")
    client = Client(rclpy, node)
    try:
        process.wait_for(WAITING_LOG, 120)
        assert state(client) == "unconfigured"
        images = node.create_publisher(Image, "/camera/image", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        matches, diagnostics, map_markers, markers, debug_images = [], [], [], [], []
        node.create_subscription(PoseWithCovarianceStamped, "/localizer/match", matches.append, 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
        node.create_subscription(MarkerArray, "/localizer/markers", markers.append, 10)
        node.create_subscription(Image, "/localizer/debug_image", debug_images.append, qos_profile_sensor_data)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(MarkerArray, "/localizer/map_markers", map_markers.append, latched)

        assert UNVERIFIED_LOG not in process.log()
        assert transition(client, Transition.TRANSITION_CONFIGURE)
        assert state(client) == "inactive"
        process.wait_for(UNVERIFIED_LOG, 5)  # verify none, asked for explicitly: one WARN
        assert [line for line in process.log().splitlines() if UNVERIFIED_LOG in line][0].startswith("[WARN]")
        assert images.get_subscription_count() == 0, "an inactive node must not subscribe"
        assert transition(client, Transition.TRANSITION_ACTIVATE)
        process.wait_for(READY_LOG, 30)
        assert state(client) == "active"
        assert client.spin_until(lambda: images.get_subscription_count() > 0, 10)

        # Map keyframes are latched: a late subscriber still gets them.
        assert client.spin_until(lambda: map_markers, 10)
        from cmirl_ros.mapdb import MapDatabase

        assert len(map_markers[-1].markers[0].points) == len(MapDatabase.load(lite_map))

        frame = KittiSequence(sim_root, "00")[3]

        def send(seconds: float) -> None:
            images.publish(numpy_to_image(frame.image, "rgb8", stamp=seconds_to_stamp(seconds), frame_id="camera"))

        send(1.0)
        assert client.spin_until(lambda: matches, 30), "no match while active"
        assert matches[-1].header.frame_id == "map" and matches[-1].header.stamp == seconds_to_stamp(1.0)
        assert client.spin_until(lambda: markers and debug_images, 5)
        assert {m.ns for m in markers[-1].markers} == {"matches"}
        # No tf and no calib_file: where the camera sits on base_link is unknown, so ~/match is the
        # matched keyframe's camera pose (counted as camera_pose), and the query marker floats 5 m above it.
        p = matches[-1].pose.pose.position
        keyframe_positions = MapDatabase.load(lite_map).keyframes.positions
        assert np.linalg.norm(keyframe_positions - [p.x, p.y, p.z], axis=1).min() < 1e-6
        head = next(m for m in markers[-1].markers if m.type == m.SPHERE).pose.position
        assert (head.x, head.y, head.z) == pytest.approx((p.x, p.y, p.z + 5.0), abs=1e-6)
        debug = debug_images[-1]
        assert (debug.width, debug.height, debug.encoding) == (frame.image.shape[1], frame.image.shape[0], "rgb8")
        assert debug.header.stamp == seconds_to_stamp(1.0)

        # Disabled: inputs are ignored.
        assert client.call(SetBool, "/localizer/set_enabled", SetBool.Request(data=False)).success
        count = len(matches)
        send(2.0)
        client.spin_until(lambda: len(matches) > count, 3)
        assert len(matches) == count, "a disabled node answered"
        assert client.call(SetBool, "/localizer/set_enabled", SetBool.Request(data=True)).success
        send(3.0)
        assert client.spin_until(lambda: len(matches) > count, 30)

        reload = client.call(Trigger, "/localizer/reload_map", Trigger.Request())
        assert reload.success and "keyframes" in reload.message

        # max_query_rate 2 Hz: a 20 Hz burst is answered at most twice a second (unlimited: ~1 per forward).
        count = len(matches)
        start = time.monotonic()
        for k in range(40):
            send(10.0 + 0.05 * k)
            client.spin_until(lambda: False, 0.05)
        client.spin_until(lambda: False, 1.0)
        burst, elapsed = len(matches) - count, time.monotonic() - start
        assert 2 <= burst <= 2.0 * elapsed + 1, f"{burst} answers in {elapsed:.1f} s with max_query_rate 2 Hz"

        diagnostics.clear()
        assert client.spin_until(lambda: diagnostics, 5)
        values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
        assert values["state"] == "active" and int(values["answered"]) >= 2 and int(values["map_size"]) > 0
        assert values["verify"] == "none: matches are UNVERIFIED" and "UNVERIFIED" in diagnostics[-1].status[0].message
        assert int(values["camera_pose"]) - int(values["answered"]) in (0, 1)  # one query may be between the two
        assert float(values["latency_ms_p50"]) > 0

        assert transition(client, Transition.TRANSITION_DEACTIVATE)
        assert state(client) == "inactive"
        assert client.spin_until(lambda: images.get_subscription_count() == 0, 10)
        assert transition(client, Transition.TRANSITION_CLEANUP)
        assert state(client) == "unconfigured"
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        code = process.stop(signal.SIGINT)
    assert code == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


def test_plain_node_without_map_exits_with_a_clear_error(ros_workdir, refused_start):
    code, _, log = refused_start({"model": "cmirl_lite", "map": str(ros_workdir / "missing_map"), "device": "cpu"})
    assert code == 1
    assert "configure failed" in log and "missing_map" in log


@pytest.mark.parametrize("params, message", [
    ({"top_k": 0}, "parameter 'top_k' must be >= 1, got 0"),  # the option tree's checks
    # verify auto without use_scan is sequence: no registration to verify the session's loop closures with
    ({"session_map": True}, "session_map verifies its loop closures by registering the live scans"),
])
def test_plain_node_with_a_bad_parameter_exits_naming_it(lite_map, refused_start, params, message):
    code, errors, log = refused_start({"model": "cmirl_lite", "map": str(lite_map), "device": "cpu", **params})
    assert code == 1 and len(errors) == 1 and "configure failed" in errors[0] and message in errors[0], log
