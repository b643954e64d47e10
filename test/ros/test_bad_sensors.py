"""Unusable sensor data into a live node with `use_scan`: an all-NaN scan, CameraInfo with NaN
intrinsics, a scan that misses the image. Each is reported for what it is (the image of an unusable
scan is dropped and counted, never answered alone), and /diagnostics returns to OK once the
problem is older than stats_window."""
from __future__ import annotations

import time

import numpy as np

from cmirl_ros.topics import CAMERA_INFO, IMAGE, POINTS

STATS_WINDOW = 3.0


def all_nan_scan(count: int = 500) -> np.ndarray:
    return np.full((count, 4), np.nan, dtype=np.float32)


def behind_the_camera(points: np.ndarray) -> np.ndarray:
    """The scan mirrored front to back (KITTI LiDAR: x forward): nothing projects into the image."""
    mirrored = points.copy()
    mirrored[:, 0] = -np.abs(mirrored[:, 0]) - 1.0
    return mirrored


def test_unusable_scans_and_intrinsics_are_reported_and_the_image_answered(sim_root, sim_calib_file, lite_checkpoint,
                                                                          lite_map, live_localizer):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.ros.conversions import camera_info_msg, numpy_to_image, numpy_to_pointcloud2, seconds_to_stamp

    process, node, client = live_localizer({"model": str(lite_checkpoint), "map": str(lite_map), "device": "cpu",
                                            "verify": "none", "use_scan": True, "calib_file": str(sim_calib_file),
                                            "qos": "reliable", "num_threads": 2, "diagnostics_period": 0.2,
                                            "stats_window": STATS_WINDOW, "scan_timeout": 600.0},
                                           "cmirl_bad_sensor_test")
    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    images = node.create_publisher(Image, IMAGE, reliable)
    clouds = node.create_publisher(PointCloud2, POINTS, reliable)
    infos = node.create_publisher(CameraInfo, CAMERA_INFO, reliable)
    matches, diagnostics = [], []
    node.create_subscription(PoseWithCovarianceStamped, "/localizer/match", matches.append, 10)
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    publishers = (images, clouds, infos)
    assert client.spin_until(lambda: all(p.get_subscription_count() > 0 for p in publishers), 10)
    frame = KittiSequence(sim_root, "00")[5]

    def send(seconds: float, points: np.ndarray) -> None:
        stamp = seconds_to_stamp(seconds)
        images.publish(numpy_to_image(frame.image, "rgb8", stamp=stamp, frame_id="camera"))
        clouds.publish(numpy_to_pointcloud2(points, stamp=stamp, frame_id="velodyne"))

    def query(seconds: float, points: np.ndarray) -> None:
        stamp = seconds_to_stamp(seconds)
        count = len(matches)
        send(seconds, points)
        assert client.spin_until(lambda: len(matches) > count, 30), f"no answer at {seconds}:\n{process.log()[-2000:]}"
        assert matches[-1].header.stamp == stamp

    def status() -> DiagnosticStatus:
        diagnostics.clear()
        assert client.spin_until(lambda: diagnostics, 5)
        return diagnostics[-1].status[0]

    def values() -> dict:
        return {kv.key: kv.value for kv in status().values}

    # An all-NaN scan (is_dense false) is a rejected message; its image has no complete set and is
    # not answered from the image alone (fallback_image_only is off): counted as unpaired.
    send(1.0, all_nan_scan())
    assert client.spin_until(lambda: False, 1.0) is False and not matches
    after_nan = values()
    assert int(after_nan["rejected"]) == 1 and int(after_nan["errors"]) == 0, after_nan
    assert int(after_nan["unpaired_images"]) == 1 and int(after_nan["answered"]) == 0, after_nan
    assert int(after_nan["fused"]) == 0 and "no finite point" in after_nan["last_rejection"]

    # CameraInfo with NaN intrinsics is rejected: the calib_file intrinsics stay in use, so a
    # real scan still covers the image and the query is fused.
    bad_info = camera_info_msg(np.full((3, 3), np.nan), frame.image.shape[1], frame.image.shape[0], frame_id="camera")
    infos.publish(bad_info)
    assert client.spin_until(lambda: False, 0.5) is False
    query(2.0, frame.points)
    after_info = values()
    assert int(after_info["rejected"]) == 2 and "camera_info" in after_info["last_rejection"], after_info
    assert int(after_info["fused"]) == 1 and float(after_info["last_scan_coverage"]) > 0.001, after_info

    # A scan that covers no pixel is answered from the image and reported, not counted as fused.
    query(3.0, behind_the_camera(frame.points))
    missed = status()
    missed_values = {kv.key: kv.value for kv in missed.values}
    assert int(missed_values["scan_missed_image"]) == 1 and int(missed_values["fused"]) == 1, missed_values
    assert missed.level == DiagnosticStatus.WARN and "missing the image" in missed.message
    assert "answered from the image alone" in process.log()

    # Diagnostics levels cover the recent window: OK again once the miss is older than it.
    deadline = time.monotonic() + STATS_WINDOW + 5
    while status().level != DiagnosticStatus.OK and time.monotonic() < deadline:
        pass
    assert status().level == DiagnosticStatus.OK, values()
