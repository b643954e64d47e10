"""The node's inputs as a robot publishes them, over FastDDS in separate processes.

- A bag recorded with CompressedImage and a tf tree (base_link -> velodyne, base_link ->
  camera_optical), `cmirl bag from-kitti --compressed`, replays (`cmirl bag play`) into a node
  with use_scan, image_transport compressed and no calib file: every query is fused, with the
  calibration from tf + CameraInfo, and the shipped model finds the right places.
- Two localizers in the namespaces robot1 and robot2 on one graph, each fed on its own
  namespace's relative default topics, answer only their own robot's images.
- With use_scan, a LiDAR that stays silent puts /diagnostics at ERROR and no image is answered
  alone (fallback_image_only off; on, they are, and counted); a set whose frames tf does not know is counted and reported.
- Per-input QoS overrides by parameter; a CameraInfo that cannot be honoured is refused.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from test_end_to_end import run_pipeline
from test_node_lifecycle import Client
from test_shipped_model import load_shipped_or_skip

from cmirl_ros.ros.localizer_node import READY_LOG
from cmirl_ros.ros.processes import RosProcess, start_localizer, write_params_file

SHIPPED = "cmirl_driving"


@pytest.mark.slow
def test_compressed_bag_with_tf_replays_into_the_node_without_calib_file(tmp_path):
    from dataclasses import replace

    from cmirl_ros.datasets.bag import BagSequence
    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.mapdb import MapDatabase, build_map
    from cmirl_ros.ros.bag_eval import read_recording, score
    from cmirl_ros.sim.sequence import DEMO_SIM, simulate_sequence

    model = load_shipped_or_skip()
    # 15 s of the demo route, one frame every 0.6 s.
    simulate_sequence(replace(DEMO_SIM, frames="0:150:6", workers=1), tmp_path / "sim", "00", progress=False)
    dataset = KittiSequence(tmp_path / "sim", "00")
    build_map(dataset, model, keyframe_distance=2.0, progress=False).save(tmp_path / "map")
    bag = tmp_path / "bag"
    converted = subprocess.run([sys.executable, "-m", "cmirl_ros.cli", "bag", "from-kitti", "--root", str(tmp_path / "sim"),
                                "--seq", "00", "--out", str(bag), "--compressed"], capture_output=True, text=True, timeout=300)
    assert converted.returncode == 0, converted.stderr
    sequence = BagSequence(bag)
    assert sequence.image_topic == "/camera/image/compressed"

    params = {"model": SHIPPED, "map": str(tmp_path / "map"), "device": "cpu", "verify": "none", "use_scan": True,
              "image_transport": "compressed", "calib_file": "", "exclude_seconds": 0.0, "stats_window": 1e6}
    recording = run_pipeline(bag, params, tmp_path, rate=1.0,
                             wait_for=("/camera/image/compressed", "/lidar/points", "/tf_static"))
    log = (tmp_path / "localizer.log").read_text()
    assert "calibration from tf + CameraInfo" in log, log[-2000:]
    recorded = read_recording(recording)
    last = recorded.diagnostics[-1]
    assert len(recorded.stamps) >= 0.95 * len(dataset), f"{len(recorded.stamps)} of {len(dataset)} answered: {last}"
    # Fused, every one: the scans were projected with the extrinsics from tf, not dropped.
    assert int(last["fused"]) == int(last["answered"]) == len(recorded.stamps), last
    assert int(last["no_calibration"]) == 0 and int(last["rejected"]) == 0, last
    assert last["tf"] == "base_link -> camera_optical, velodyne: ok", last
    protocols, _, _ = score(recorded, sequence, MapDatabase.load(tmp_path / "map"), radius=10.0, exclude_seconds=0.0)
    recall = protocols["paper"]["recall@1"]
    print(f"{SHIPPED}, compressed bag + tf, no calib file: Recall@1 {recall:.3f} over {protocols['paper']['queries']} "
          f"queries, {last['fused']} fused")
    assert recall >= 0.9, protocols["paper"]


def start_namespaced(namespace: str, params: dict, workdir) -> RosProcess:
    params_file = write_params_file(workdir / f"{namespace}_params.yaml", params)
    return RosProcess([sys.executable, "-m", "cmirl_ros.ros.localizer_node", "--ros-args", "-r", f"__ns:=/{namespace}",
                       "--params-file", str(params_file)], workdir / f"{namespace}.log")


def test_two_namespaced_localizers_do_not_cross_talk(sim_root, lite_checkpoint, lite_map, ros_workdir):
    import rclpy
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.ros.conversions import numpy_to_image, seconds_to_stamp

    params = {"model": str(lite_checkpoint), "map": str(lite_map), "device": "cpu", "qos": "reliable", "num_threads": 1,
              "verify": "none", "publish_markers": False}
    robots = {"robot1": 100.0, "robot2": 200.0}  # stamps each robot's images carry
    processes = {name: start_namespaced(name, params, ros_workdir) for name in robots}
    rclpy.init()
    node = rclpy.create_node("cmirl_namespace_test")
    client = Client(rclpy, node)
    try:
        for process in processes.values():
            process.wait_for(READY_LOG, 300)
        assert "image /robot1/camera/image" in processes["robot1"].log()
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        received = {name: [] for name in robots}
        publishers = {}
        for name in robots:  # each robot's camera, on its own namespace's relative topic
            robot = rclpy.create_node("camera", namespace=name)
            publishers[name] = robot.create_publisher(Image, "camera/image", reliable)
            node.create_subscription(PoseWithCovarianceStamped, f"/{name}/localizer/match",
                                     lambda msg, name=name: received[name].append(msg.header.stamp.sec), reliable)
        assert client.spin_until(lambda: all(p.get_subscription_count() == 1 for p in publishers.values()), 20), \
            "each robot's camera topic should have exactly its own localizer subscribed"
        frame = KittiSequence(sim_root, "00")[3]
        for k in range(3):
            for name, base in robots.items():
                publishers[name].publish(numpy_to_image(frame.image, "rgb8", stamp=seconds_to_stamp(base + k), frame_id="camera"))
            assert client.spin_until(lambda: all(len(r) > k for r in received.values()), 60), received
        time.sleep(0.5)
        client.spin_until(lambda: False, 0.5)
        assert received == {name: [int(base) + k for k in range(3)] for name, base in robots.items()}
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        codes = {name: process.stop(signal.SIGINT) for name, process in processes.items()}
    assert codes == {"robot1": 0, "robot2": 0}, {name: p.log()[-2000:] for name, p in processes.items()}


def test_silent_lidar_and_missing_tf_are_reported_never_answered_alone(sim_root, lite_checkpoint, lite_map, ros_workdir):
    """use_scan, no calib file: a silent LiDAR is an ERROR and its images are not answered alone; a
    set whose frames are not in tf yet is counted and reported; once /tf_static arrives it is fused."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.ros.bag_writer import CAMERA_FRAME, LIDAR_FRAME, robot_tf_static
    from cmirl_ros.ros.conversions import camera_info_msg, numpy_to_image, numpy_to_pointcloud2, seconds_to_stamp
    from cmirl_ros.ros.interfaces import tf_message_type
    from cmirl_ros.ros.localizer_node import TF_STATIC_QOS

    process = start_localizer({"model": str(lite_checkpoint), "map": str(lite_map), "device": "cpu", "use_scan": True,
                               "qos": "reliable", "num_threads": 1, "scan_timeout": 0.5, "diagnostics_period": 0.2,
                               "verify": "none", "sync_queue_size": 2}, ros_workdir)
    rclpy.init()
    node = rclpy.create_node("cmirl_dead_lidar_test")
    client = Client(rclpy, node)
    try:
        process.wait_for(READY_LOG, 120)
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        images = node.create_publisher(Image, "/camera/image", reliable)
        clouds = node.create_publisher(PointCloud2, "/lidar/points", reliable)
        infos = node.create_publisher(CameraInfo, "/camera/camera_info", reliable)
        matches, statuses = [], []
        node.create_subscription(PoseWithCovarianceStamped, "/localizer/match", matches.append, 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: statuses.extend(m.status), 10)
        assert client.spin_until(lambda: all(p.get_subscription_count() for p in (images, clouds, infos)), 10)
        frame = KittiSequence(sim_root, "00")[2]
        height, width = frame.image.shape[:2]

        def image(seconds: float) -> None:
            images.publish(numpy_to_image(frame.image, "rgb8", stamp=seconds_to_stamp(seconds), frame_id=CAMERA_FRAME))

        def latest(condition) -> DiagnosticStatus:
            assert client.spin_until(lambda: statuses and condition({kv.key: kv.value for kv in statuses[-1].values}), 10), \
                statuses[-1:]
            return statuses[-1]

        for k in range(5):
            image(10.0 + k)
        status = latest(lambda v: v["images"] == "5" and float(v["scan_silent_s"]) > 0.5)
        values = {kv.key: kv.value for kv in status.values}
        assert status.level == DiagnosticStatus.ERROR, status
        assert "no scan on /lidar/points" in status.message and "no query answered" in status.message, status.message
        assert not matches and int(values["answered"]) == 0, values
        assert int(values["unpaired_images"]) == 3, values  # the queue keeps the newest 2

        # The LiDAR is back, but tf does not know its frame yet: counted and reported, not answered.
        infos.publish(camera_info_msg(frame.calib.camera.K, width, height, frame_id=CAMERA_FRAME))
        client.spin_until(lambda: False, 0.3)
        image(20.0)
        clouds.publish(numpy_to_pointcloud2(frame.points, stamp=seconds_to_stamp(20.0), frame_id=LIDAR_FRAME))
        status = latest(lambda v: v["no_calibration"] == "1")
        values = {kv.key: kv.value for kv in status.values}
        assert status.level == DiagnosticStatus.WARN and "without calibration" in status.message, status
        assert LIDAR_FRAME in values["last_calibration_error"] or CAMERA_FRAME in values["last_calibration_error"], values
        assert "not in tf" in values["tf"] and not matches, values

        # /tf_static arrives (the robot's tree): the next set is calibrated from it and fused.
        tf_static = node.create_publisher(tf_message_type(), "/tf_static", TF_STATIC_QOS)
        tf_static.publish(robot_tf_static(seconds_to_stamp(0.0), frame.calib.T_cam_sensor))
        client.spin_until(lambda: False, 0.5)
        image(21.0)
        clouds.publish(numpy_to_pointcloud2(frame.points, stamp=seconds_to_stamp(21.0), frame_id=LIDAR_FRAME))
        assert client.spin_until(lambda: matches, 30), process.log()[-2000:]
        values = {kv.key: kv.value for kv in latest(lambda v: v["answered"] == "1").values}
        assert values["fused"] == "1" and values["tf"] == f"base_link -> {CAMERA_FRAME}, {LIDAR_FRAME}: ok", values
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        code = process.stop(signal.SIGINT)
    assert code == 0, process.log()[-3000:]


def test_fallback_image_only_answers_while_the_lidar_is_silent(sim_root, sim_calib_file, lite_checkpoint, lite_map,
                                                               ros_workdir):
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.ros.conversions import numpy_to_image, seconds_to_stamp

    process = start_localizer({"model": str(lite_checkpoint), "map": str(lite_map), "device": "cpu", "use_scan": True,
                               "verify": "none", "calib_file": str(sim_calib_file), "fallback_image_only": True,
                               "scan_timeout": 0.3, "qos": "reliable", "num_threads": 1, "diagnostics_period": 0.2},
                              ros_workdir)
    rclpy.init()
    node = rclpy.create_node("cmirl_fallback_test")
    client = Client(rclpy, node)
    try:
        process.wait_for(READY_LOG, 120)
        images = node.create_publisher(Image, "/camera/image", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        matches, statuses = [], []
        node.create_subscription(PoseWithCovarianceStamped, "/localizer/match", matches.append, 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: statuses.extend(m.status), 10)
        assert client.spin_until(lambda: images.get_subscription_count() > 0, 10)
        client.spin_until(lambda: False, 0.5)  # longer than scan_timeout: the LiDAR counts as silent
        frame = KittiSequence(sim_root, "00")[4]
        images.publish(numpy_to_image(frame.image, "rgb8", stamp=seconds_to_stamp(5.0), frame_id="camera"))
        assert client.spin_until(lambda: matches, 30), process.log()[-2000:]
        assert client.spin_until(lambda: statuses and any(kv.key == "answered" and kv.value == "1"
                                                          for kv in statuses[-1].values), 10)
        status = statuses[-1]
        values = {kv.key: kv.value for kv in status.values}
        assert values["image_only_fallback"] == "1" and values["fused"] == "0", values
        assert status.level == DiagnosticStatus.ERROR and "answering from images alone" in status.message, status
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        code = process.stop(signal.SIGINT)
    assert code == 0, process.log()[-3000:]


def test_qos_overrides_and_unusable_camera_info(sim_root, lite_checkpoint, lite_map, ros_workdir):
    """ROS's per-topic QoS override parameters apply to the node's inputs (`qos` stays the default);
    a CameraInfo whose distortion cannot be honoured is refused with the reason, and an image that
    does not fit the CameraInfo in use is rejected rather than queried with wrong intrinsics."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.ros.conversions import camera_info_msg, numpy_to_image

    params = {"model": str(lite_checkpoint), "map": str(lite_map), "device": "cpu", "verify": "none", "num_threads": 1,
              "diagnostics_period": 0.2,
              "qos_overrides": {"/camera/image": {"subscription": {"reliability": "reliable", "depth": 3}}}}
    process = start_localizer(params, ros_workdir)
    rclpy.init()
    node = rclpy.create_node("cmirl_qos_test")
    client = Client(rclpy, node)
    try:
        process.wait_for(READY_LOG, 120)

        def reliability(topic: str):
            infos = node.get_subscriptions_info_by_topic(topic)
            return infos[0].qos_profile.reliability if infos else None

        assert client.spin_until(lambda: reliability("/camera/image") is not None, 10)
        assert reliability("/camera/image") == ReliabilityPolicy.RELIABLE
        assert reliability("/camera/camera_info") == ReliabilityPolicy.BEST_EFFORT  # qos: sensor_data

        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        infos = node.create_publisher(CameraInfo, "/camera/camera_info", reliable)
        images = node.create_publisher(Image, "/camera/image", reliable)
        rejections = []
        node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: rejections.extend(
            kv.value for kv in m.status[0].values if kv.key == "last_rejection"), 10)
        assert client.spin_until(lambda: infos.get_subscription_count() and images.get_subscription_count(), 10)
        frame = KittiSequence(sim_root, "00")[1]
        height, width = frame.image.shape[:2]
        fisheye_like = camera_info_msg(frame.calib.camera.K, width, height, frame_id="camera")
        fisheye_like.distortion_model, fisheye_like.d = "kannala_brandt_x", [0.1, 0.01]
        infos.publish(fisheye_like)
        assert client.spin_until(lambda: any("not supported" in r for r in rejections), 10), rejections[-1:]
        assert "distortion model 'kannala_brandt_x'" in rejections[-1]
        infos.publish(camera_info_msg(frame.calib.camera.K, width, height, frame_id="camera"))
        client.spin_until(lambda: False, 0.5)
        images.publish(numpy_to_image(frame.image[: height // 2], "rgb8", frame_id="camera"))
        assert client.spin_until(lambda: any("but camera_info says" in r for r in rejections), 10), rejections[-1:]
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        code = process.stop(signal.SIGINT)
    assert code == 0, process.log()[-3000:]
