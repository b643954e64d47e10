"""Fuzz: thousands of randomly malformed Image / PointCloud2 messages into a live localizer node.

Every message carries at least one defect by construction (unknown encoding, zero size, short
data, short step/row_step, missing x/y/z, unknown field datatype) on top of random other fields.
The node must survive, count every one it received as rejected in /diagnostics, and still answer
a valid query afterwards; then exit cleanly on SIGTERM.
"""
from __future__ import annotations

import signal
import time

import numpy as np

from cmirl_ros.ros.localizer_node import READY_LOG
from cmirl_ros.ros.processes import start_localizer

VALID_ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"]
PER_KIND = 1500


def bad_image(rng: np.random.Generator):
    from sensor_msgs.msg import Image

    msg = Image()
    msg.encoding = str(rng.choice(VALID_ENCODINGS))
    msg.is_bigendian = int(rng.integers(0, 2))
    msg.width, msg.height = (int(v) for v in rng.integers(1, 64, size=2))
    channels = {"mono8": 1, "rgb8": 3, "bgr8": 3}.get(msg.encoding, 4)
    row = msg.width * channels
    msg.step = row + int(rng.integers(0, 8))
    needed = msg.step * (msg.height - 1) + row
    length = int(rng.integers(needed, needed + 64))
    defect = int(rng.integers(0, 5))
    if defect == 0:
        msg.encoding = "".join(rng.choice(list("abcxyz0123456789UC"), size=int(rng.integers(0, 12))))
        if msg.encoding in VALID_ENCODINGS + ["8UC1", "8UC3", "mono16", "16UC1", "32FC1"]:
            msg.encoding = "yuv422"
    elif defect == 1:
        msg.width = 0 if rng.random() < 0.5 else msg.width
        msg.height = 0 if msg.width else int(rng.integers(0, 64))
    elif defect == 2:
        length = int(rng.integers(0, needed))
    elif defect == 3:
        msg.step = int(rng.integers(0, row))
    else:  # absurd claimed size, tiny buffer
        msg.width, msg.height = int(rng.integers(10**5, 2**31)), int(rng.integers(1, 2**20))
        msg.step = min(msg.width * channels, 2**32 - 1)
        length = int(rng.integers(0, 256))
    msg.data = rng.integers(0, 256, size=length, dtype=np.uint8).tobytes()
    return msg


def bad_cloud(rng: np.random.Generator):
    from sensor_msgs.msg import PointCloud2, PointField

    names = ["x", "y", "z", "intensity", "ring", "t"]
    fields = [PointField(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate(names[: int(rng.integers(3, 7))])]
    msg = PointCloud2()
    msg.is_bigendian = bool(rng.integers(0, 2))
    msg.is_dense = bool(rng.integers(0, 2))
    msg.height, msg.width = int(rng.integers(1, 4)), int(rng.integers(1, 200))
    msg.point_step = 4 * len(fields) + int(rng.integers(0, 8))
    msg.row_step = msg.width * msg.point_step + int(rng.integers(0, 16))
    length = msg.row_step * msg.height
    defect = int(rng.integers(0, 6))
    if defect == 0:
        drop = str(rng.choice(["x", "y", "z"]))
        fields = [f for f in fields if f.name != drop]
    elif defect == 1:
        msg.width = 0 if rng.random() < 0.5 else msg.width
        msg.height = 0 if msg.width else msg.height
    elif defect == 2:
        length = int(rng.integers(0, msg.row_step * (msg.height - 1) + msg.width * msg.point_step))
    elif defect == 3:
        msg.row_step = int(rng.integers(0, msg.width * msg.point_step))
    elif defect == 4:
        fields[int(rng.integers(0, 3))].datatype = int(rng.choice([0, 9, 42, 255]))
    else:
        msg.point_step = 0
    msg.fields = fields
    msg.data = rng.integers(0, 256, size=length, dtype=np.uint8).tobytes()
    return msg


def test_malformed_messages_are_counted_and_survived(sim_root, sim_calib_file, lite_checkpoint, lite_map, ros_workdir):
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, PointCloud2

    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.ros.conversions import numpy_to_image, numpy_to_pointcloud2, seconds_to_stamp

    node_process = start_localizer({"model": str(lite_checkpoint), "map": str(lite_map), "device": "cpu", "use_scan": True,
                                    "calib_file": str(sim_calib_file), "qos": "reliable", "num_threads": 1,
                                    "verify": "none", "diagnostics_period": 0.2, "warn_throttle_s": 1.0}, ros_workdir)
    rclpy.init()
    fuzzer = rclpy.create_node("cmirl_fuzzer")
    try:
        node_process.wait_for(READY_LOG, 300)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        images = fuzzer.create_publisher(Image, "/camera/image", reliable)
        clouds = fuzzer.create_publisher(PointCloud2, "/lidar/points", reliable)
        diagnostics, matches = [], []
        fuzzer.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
        fuzzer.create_subscription(PoseWithCovarianceStamped, "/localizer/match", matches.append, 10)
        deadline = time.monotonic() + 30
        while (images.get_subscription_count() == 0 or clouds.get_subscription_count() == 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        rng = np.random.default_rng(7)
        for k in range(PER_KIND):
            images.publish(bad_image(rng))
            clouds.publish(bad_cloud(rng))
            # ~500 messages/s: the node's keep-last(5) queue must not overflow, so that what it
            # received is (nearly) what was sent and the count below means something.
            time.sleep(0.004)
        sent = 2 * PER_KIND

        def latest(key_values_wait: float = 3.0) -> dict:
            end = time.monotonic() + key_values_wait
            while time.monotonic() < end:
                rclpy.spin_once(fuzzer, timeout_sec=0.1)
            status = diagnostics[-1].status[0]
            return {kv.key: kv.value for kv in status.values}

        values = latest()
        received = int(values["images"]) + int(values["scans"])
        assert node_process.process.poll() is None, node_process.log()
        assert int(values["rejected"]) == received, values
        assert received >= 0.9 * sent, f"the node received only {received} of {sent} messages"
        assert int(values["errors"]) == 0 and int(values["answered"]) == 0
        assert "rejected image message" in node_process.log() and "rejected point cloud message" in node_process.log()

        # Still alive and answering: one valid image + scan pair gets a match.
        frame = KittiSequence(sim_root, "00")[5]
        stamp = seconds_to_stamp(frame.stamp)
        deadline = time.monotonic() + 30
        while not matches and time.monotonic() < deadline:
            images.publish(numpy_to_image(frame.image, "rgb8", stamp=stamp, frame_id="camera"))
            clouds.publish(numpy_to_pointcloud2(frame.points, stamp=stamp, frame_id="velodyne"))
            end = time.monotonic() + 1.0
            while not matches and time.monotonic() < end:
                rclpy.spin_once(fuzzer, timeout_sec=0.1)
        assert matches, "no match for a valid query after the fuzzing"
        assert matches[0].header.stamp == stamp
    finally:
        fuzzer.destroy_node()
        rclpy.try_shutdown()
        code = node_process.stop(signal.SIGTERM)
    assert code == 0, node_process.log()
    assert "Traceback" not in node_process.log()
