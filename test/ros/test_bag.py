"""Bags: KITTI -> mcap round trip, the ROS-free bag dataset, maps from bags, and `cmirl bag eval`."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cmirl_ros.datasets.bag import BagSequence, interpolate_poses, resolve_bag_path
from cmirl_ros.ros.bag_eval import nearest_stamps


def test_bag_from_kitti_round_trips_every_frame(sim_root, sim_bag):
    from cmirl_ros.datasets.kitti import KittiSequence

    kitti, bag = KittiSequence(sim_root, "00"), BagSequence(sim_bag)
    assert len(bag) == len(kitti)
    np.testing.assert_allclose(bag.stamps, kitti.stamps, rtol=0, atol=1e-9)  # times.txt, to the nanosecond
    # The ground truth is REP 105's z-up map: KITTI's y-down camera-0 world rotated, nothing else.
    np.testing.assert_allclose(bag.poses, kitti.frame_convention.to_map(kitti.poses), atol=1e-9)
    np.testing.assert_allclose(bag.frame_convention.to_map(bag.poses), bag.poses)
    assert bag.frame_convention.source_world == "bag: the ground-truth odometry's frame 'map'"
    np.testing.assert_allclose(bag.calib.camera.K, kitti.calib.camera.K)
    assert (bag.calib.camera.width, bag.calib.camera.height) == (kitti.calib.camera.width, kitti.calib.camera.height)
    np.testing.assert_allclose(bag.calib.T_cam_sensor, kitti.calib.T_cam_sensor, atol=1e-6)
    for i in (0, len(bag) // 2, len(bag) - 1):
        a, b = bag[i], kitti[i]
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.points, b.points)
        assert abs(a.stamp - b.stamp) < 1e-9


def test_bag_topics_types_and_stamps(sim_bag):
    from rosbags.rosbag2 import Reader

    from cmirl_ros.datasets.bag import typestore

    store = typestore()
    with Reader(sim_bag) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        assert types == {"/camera/image": "sensor_msgs/msg/Image", "/camera/camera_info": "sensor_msgs/msg/CameraInfo",
                         "/lidar/points": "sensor_msgs/msg/PointCloud2", "/ground_truth/odometry": "nav_msgs/msg/Odometry",
                         "/tf_static": "tf2_msgs/msg/TFMessage"}
        for connection, bag_time, raw in reader.messages():
            msg = store.deserialize_cdr(raw, connection.msgtype)
            stamp = msg.transforms[0].header.stamp if connection.topic == "/tf_static" else msg.header.stamp
            assert stamp.sec * 10**9 + stamp.nanosec == bag_time  # bag time = header stamp = times.txt
            if connection.topic == "/ground_truth/odometry":
                assert (msg.header.frame_id, msg.child_frame_id) == ("map", "camera_optical")


def test_bag_path_forms_and_errors(sim_bag, tmp_path):
    assert resolve_bag_path(sim_bag) == sim_bag
    assert resolve_bag_path(sim_bag / f"{sim_bag.name}.mcap") == sim_bag
    assert resolve_bag_path(sim_bag.with_suffix(".mcap")) == sim_bag
    with pytest.raises(FileNotFoundError, match="not a rosbag2 bag"):
        resolve_bag_path(tmp_path)


def test_pose_interpolation_between_odometry_samples():
    from scipy.spatial.transform import Rotation

    poses = np.repeat(np.eye(4)[None], 2, axis=0)
    poses[1, :3, 3] = [10, 0, 0]
    poses[1, :3, :3] = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    mid = interpolate_poses(np.array([0.5, 2.0]), np.array([0.0, 1.0]), poses)
    np.testing.assert_allclose(mid[0, :3, 3], [5, 0, 0])
    np.testing.assert_allclose(Rotation.from_matrix(mid[0, :3, :3]).as_euler("xyz", degrees=True), [0, 0, 45], atol=1e-9)
    np.testing.assert_allclose(mid[1], poses[1])  # clamped past the end


def test_map_from_bag_equals_map_from_kitti(sim_root, sim_bag, lite_model):
    """`map build --dataset bag --root BAG` sees the same frames as the KITTI reader."""
    from cmirl_ros.datasets import open_dataset
    from cmirl_ros.mapdb import build_map

    args = argparse.Namespace(dataset="bag", root=sim_bag, seq=None, frames="0:6")
    bag_map = build_map(open_dataset(args), lite_model, progress=False)
    kitti_map = build_map(open_dataset(argparse.Namespace(dataset="kitti", root=sim_root, seq="00", frames="0:6")),
                          lite_model, progress=False)
    np.testing.assert_allclose(bag_map.descriptors, kitti_map.descriptors, atol=1e-5)
    np.testing.assert_allclose(bag_map.keyframes.positions, kitti_map.keyframes.positions, atol=1e-9)


def test_nearest_stamps_tolerates_float_error_of_epoch_seconds():
    reference = np.array([1_731_000_000.1, 1_731_000_000.2, 1_731_000_000.3])
    stamps = np.array([1_731_000_000 + 300_000_000 * 1e-9, 1_731_000_000.1, 1_731_000_000.25])
    np.testing.assert_array_equal(nearest_stamps(stamps, reference), [2, 0, -1])
    np.testing.assert_array_equal(nearest_stamps(np.array([0.5]), np.array([])), [-1])


def play_while_spinning(node, play_args: list[str]) -> tuple[int, str]:
    """Run `cmirl bag play ARGS` in its own process while spinning `node`, then 1 s more; shuts rclpy down."""
    import time

    import rclpy

    player = subprocess.Popen([sys.executable, "-m", "cmirl_ros.cli", "bag", "play", *play_args],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while player.poll() is None and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
    finally:
        output = player.communicate(timeout=30)[0]
        node.destroy_node()
        rclpy.try_shutdown()
    return player.returncode, output


def test_bag_play_cli_rate_and_clock(sim_bag):
    """`cmirl bag play --rate 4 --clock` in its own process: every image arrives, 4x faster, with /clock."""
    import time

    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("cmirl_play_test")
    images, clocks = [], []
    node.create_subscription(Image, "/camera/image", lambda m: images.append(time.monotonic()),
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(Clock, "/clock", clocks.append, QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE))
    returncode, output = play_while_spinning(node, [str(sim_bag), "--rate", "4", "--clock", "--wait-for", "/camera/image", "/clock"])
    assert returncode == 0, output
    n = len(BagSequence(sim_bag))
    assert len(images) == n, output
    span = images[-1] - images[0]  # 3.9 s of bag time at 4x
    assert 0.6 < span < 2.0, f"{n} images took {span:.2f} s"
    assert len(clocks) >= n and clocks[-1].clock.sec * 10**9 + clocks[-1].clock.nanosec == int(round(3.9e9))


def test_bag_eval_cli_scores_the_live_node(sim_bag, lite_checkpoint, lite_map, tmp_path):
    out = tmp_path / "eval.json"
    env = dict(os.environ, CMIRL_TORCH_THREADS="2")
    result = subprocess.run([sys.executable, "-m", "cmirl_ros.cli", "bag", "eval", str(sim_bag), "--map", str(lite_map),
                             "--model", str(lite_checkpoint), "--device", "cpu", "--rate", "0.5", "--json", str(out),
                             # sequence verification of what the node published (exclusion 0: the node runs as without it)
                             "--verify", "sequence", "--sequence-odometry", "--sequence-length", "2",
                             "--exclude-seconds", "0"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Recall@1" in result.stdout
    report = json.loads(out.read_text())
    assert report["images_played"] == len(BagSequence(sim_bag))
    assert report["answered_fraction"] >= 0.95 and report["node_exit_code"] == 0
    assert report["frame_ids"] == ["map"]
    paper = report["protocols"]["paper"]
    assert paper["queries"] == report["queries_answered"] and 0.0 <= paper["recall@1"] <= 1.0
    assert report["latency_ms_p50"] > 0
    # Loop closures: every answered query's published top-1 carries its score; accepting them all
    # gives the paper protocol's Recall@1 (the node excludes nothing in a replay).
    loop_closure = report["loop_closure"]
    assert loop_closure["lc_queries"] == report["queries_answered"]
    assert None not in loop_closure["pr_curve"]["thresholds"]
    assert loop_closure["unverified_recall"] == pytest.approx(paper["recall@1"])
    assert 0.0 <= report["max_f1"] <= 1.0
    assert "loop closures: max F1" in result.stdout
    # The first query cannot be confirmed (N = 2): verified + unverified = answered, the rest the verifier's call.
    assert report["verify"] == "sequence" and report["sequence"]["length"] == 2 and report["sequence_odometry"]
    assert report["verified_matches"] + report["unverified_queries"] == report["queries_answered"]
    assert report["verified_matches"] <= report["queries_answered"] - 1 and "verified (sequence)" in result.stdout
    assert report["verified_precision"] is None or 0.0 <= report["verified_precision"] <= 1.0
    assert (tmp_path / "eval_pr.png").read_bytes()[:4] == b"\x89PNG"


def test_bag_eval_sequence_figures_of_known_matches(sim_bag, lite_map):
    """`--verify sequence` on what a node published (no node here: the recording is made up). Matches
    that follow the drive are confirmed once the window is full; the same keyframes in reverse order
    (a look-alike driven the other way) never are."""
    from cmirl_ros.localization.sequence import SequenceConfig
    from cmirl_ros.mapdb import MapDatabase
    from cmirl_ros.ros.bag_eval import Recorded, sequence_figures

    bag, mapdb = BagSequence(sim_bag), MapDatabase.load(lite_map)
    keyframes = mapdb.keyframes.positions
    nearest = np.linalg.norm(bag.poses[:, None, :3, 3] - keyframes[None], axis=2).argmin(1)
    travelled = np.linalg.norm(np.diff(bag.poses[:, :3, 3], axis=0), axis=1).sum()
    assert travelled > 25.0, "the drive must be long enough for a reversed path to stand out"
    config = SequenceConfig(length=6, tolerance_m=3.0)

    def recorded(order):
        n = len(bag.stamps)
        return Recorded(stamps=bag.stamps, frame_ids=["map"] * n, candidates=[order[i:i + 1] for i in range(n)],
                        scores=[np.full(1, 0.5)] * n, receive_times=bag.stamps,
                        diagnostics=[], match_poses={}, slam_outputs={"loop_closures": []})

    following = sequence_figures(recorded(nearest), bag, mapdb, 10.0, 0.0, config, odometry=True)
    n = len(bag.stamps)
    assert following["verified_matches"] == n - 5 and following["unverified_queries"] == 5  # the first window fills
    assert following["verified_precision"] == 1.0 and following["verified_recall"] == pytest.approx((n - 5) / n)
    assert following["revisit_queries"] == n and following["pose_error_m_p50"] < 1.5
    reversed_ = sequence_figures(recorded(nearest[::-1]), bag, mapdb, 10.0, 0.0, config, odometry=True)
    assert reversed_["verified_matches"] == 0 and reversed_["verified_precision"] is None


def test_bag_cli_errors_are_clean(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cmirl_ros.cli", "bag", "eval", str(tmp_path), "--map", str(tmp_path / "nomap")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "nomap" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "cmirl_ros.cli", "bag", "eval", str(tmp_path), "--map", str(tmp_path),
                             "--verify", "registration"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "add --use-scan" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "cmirl_ros.cli", "bag", "play", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "not a rosbag2 bag" in result.stderr


@pytest.fixture(scope="module")
def compressed_bag(sim_root, tmp_path_factory):
    """`cmirl bag from-kitti --compressed`: jpeg CompressedImage and a robot's tf tree, no calib file needed."""
    out = tmp_path_factory.mktemp("compressed") / "compressed.mcap"
    result = subprocess.run([sys.executable, "-m", "cmirl_ros.cli", "bag", "from-kitti", "--root", str(sim_root), "--seq", "00",
                             "--frames", "0:20", "--out", str(out), "--compressed"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return resolve_bag_path(out)


def test_compressed_bag_with_tf_tree_reads_back_with_the_kitti_frames_and_calibration(sim_root, compressed_bag):
    from rosbags.rosbag2 import Reader

    from cmirl_ros.datasets.bag import typestore
    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.geometry import make_transform, quaternion_to_matrix
    from cmirl_ros.geometry.frames import kitti_T_base_cam, kitti_T_base_velo

    kitti = KittiSequence(sim_root, "00", slice(0, 20))
    store, frames, static = typestore(), {}, {}
    with Reader(compressed_bag) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        assert types["/camera/image/compressed"] == "sensor_msgs/msg/CompressedImage" and "/camera/image" not in types
        for connection, _, raw in reader.messages():
            msg = store.deserialize_cdr(raw, connection.msgtype)
            if connection.topic == "/tf_static":
                for t in msg.transforms:
                    v, q = t.transform.translation, t.transform.rotation
                    static[(t.header.frame_id, t.child_frame_id)] = make_transform(
                        quaternion_to_matrix([q.x, q.y, q.z, q.w]), [v.x, v.y, v.z])
            elif connection.topic != "/ground_truth/odometry":
                frames[connection.topic] = msg.header.frame_id
                if connection.topic.endswith("/compressed"):
                    assert msg.format == "rgb8; jpeg compressed bgr8"
    assert frames == {"/camera/image/compressed": "camera_optical", "/camera/camera_info": "camera_optical",
                      "/lidar/points": "velodyne"}
    assert set(static) == {("base_link", "velodyne"), ("base_link", "camera_optical")}  # a robot's tree, REP 105
    np.testing.assert_allclose(static[("base_link", "velodyne")], kitti_T_base_velo(), atol=1e-6)
    np.testing.assert_allclose(static[("base_link", "camera_optical")], kitti_T_base_cam(kitti.kitti_calib.T_cam2_velo), atol=1e-6)

    bag = BagSequence(compressed_bag)  # intrinsics from camera_info, extrinsics from the tf chain
    assert len(bag) == len(kitti) == 20
    np.testing.assert_allclose(bag.stamps, kitti.stamps, rtol=0, atol=1e-9)
    # The ground truth is REP 105's z-up map: KITTI's y-down camera-0 world rotated, nothing else.
    np.testing.assert_allclose(bag.poses, kitti.frame_convention.to_map(kitti.poses), atol=1e-9)
    np.testing.assert_allclose(bag.frame_convention.to_map(bag.poses), bag.poses)
    assert bag.frame_convention.source_world == "bag: the ground-truth odometry's frame 'map'"
    np.testing.assert_allclose(bag.calib.camera.K, kitti.calib.camera.K, atol=1e-9)
    np.testing.assert_allclose(bag.calib.T_cam_sensor, kitti.calib.T_cam_sensor, atol=1e-6)
    for i in (0, 19):
        a, b = bag[i], kitti[i]
        assert a.image.shape == b.image.shape and a.image.dtype == np.uint8
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 4.0  # jpeg at quality 95
        np.testing.assert_array_equal(a.points, b.points)


def test_bag_odometry_tf_carries_the_ground_truth_base_motion_from_the_first_pose(sim_root, tmp_path):
    """`odometry_tf` (the demo's bag): /tf odom -> base_link at every frame stamp, before the frame's
    image; odom is the first base pose (REP 105: base x forward), and odom -> base chains the map's base poses."""
    from rosbags.rosbag2 import Reader

    from cmirl_ros.datasets.bag import pose_to_matrix, typestore
    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.geometry.frames import base_pose_in_map, kitti_T_base_cam
    from cmirl_ros.ros.bag_writer import write_bag_from_dataset

    kitti = KittiSequence(sim_root, "00", slice(0, 10))
    bag = write_bag_from_dataset(kitti, tmp_path / "odom.mcap", progress=False, compressed=True, odometry_tf=True)
    store, odom, order = typestore(), [], []
    with Reader(bag) as reader:
        for connection, bag_time, raw in reader.messages():
            order.append(connection.topic)
            if connection.topic == "/tf":
                (t,) = store.deserialize_cdr(raw, connection.msgtype).transforms
                assert (t.header.frame_id, t.child_frame_id) == ("odom", "base_link")
                assert t.header.stamp.sec * 10**9 + t.header.stamp.nanosec == bag_time
                v, q = t.transform.translation, t.transform.rotation
                odom.append(pose_to_matrix(type("Pose", (), {"position": v, "orientation": q})))
    assert len(odom) == 10 and order.index("/tf") < order.index("/camera/image/compressed")
    T_map_base = base_pose_in_map(kitti.poses, kitti_T_base_cam(kitti.calib.T_cam_sensor))
    np.testing.assert_allclose(odom[0], np.eye(4), atol=1e-9)
    np.testing.assert_allclose(T_map_base[0] @ np.array(odom), T_map_base, atol=1e-6)
    # The loop starts on a straight street at 10 m/s: 0.9 s later the base is 9 m ahead, on the odom x axis
    # (within the ~0.4 deg that KITTI's Velodyne, hence the base, is pitched against the level camera).
    np.testing.assert_allclose(odom[-1][:3, 3], [9.0, 0.0, 0.0], atol=0.1)


def test_bag_play_replays_compressed_images_and_tf_static(compressed_bag):
    """`cmirl bag play` publishes /tf_static (generated tf2_msgs) to a subscriber that joins with tf2's
    static QoS, and CompressedImage, between processes."""
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage

    from cmirl_ros.geometry.frames import kitti_T_base_velo
    from cmirl_ros.geometry.tf_tree import TfTree
    from cmirl_ros.ros.interfaces import tf_message_type
    from cmirl_ros.ros.tf_input import add_tf_message

    rclpy.init()
    node = rclpy.create_node("cmirl_play_tf_test")
    images, tree = [], TfTree()
    node.create_subscription(CompressedImage, "/camera/image/compressed", images.append,
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(tf_message_type(), "/tf_static", lambda m: add_tf_message(tree, m, static=True),
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    returncode, output = play_while_spinning(node, [str(compressed_bag), "--rate", "4", "--wait-for", "/camera/image/compressed", "/tf_static"])
    assert returncode == 0 and "skipping" not in output, output
    assert len(images) == 20 and images[0].format == "rgb8; jpeg compressed bgr8", output
    np.testing.assert_allclose(tree.lookup("base_link", "velodyne"), kitti_T_base_velo(), atol=1e-9)
    assert tree.can_transform("camera_optical", "velodyne")


def test_bag_without_a_tf_chain_to_the_scans_is_a_clear_error(sim_root, tmp_path, monkeypatch):
    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.ros import bag_writer
    from cmirl_ros.ros.interfaces import tf_message_type

    def only_the_lidar(stamp, T_cam_velo):  # base_link -> velodyne, but the camera hangs nowhere
        return tf_message_type()(transforms=[bag_writer.transform_stamped(stamp, "base_link", "velodyne", np.eye(4))])

    monkeypatch.setattr(bag_writer, "robot_tf_static", only_the_lidar)
    bag = bag_writer.write_bag_from_dataset(KittiSequence(sim_root, "00", slice(0, 2)), tmp_path / "broken", progress=False)
    with pytest.raises(ValueError, match=r"broken: no extrinsics for the scans from /tf_static: unknown frame 'camera_optical'"):
        BagSequence(bag)


def test_from_kitti_without_built_interfaces_says_how_to_build_them(sim_root, tmp_path):
    env = {**os.environ, "CMIRL_INTERFACES_PREFIX": str(tmp_path / "nothing")}
    result = subprocess.run([sys.executable, "-m", "cmirl_ros.cli", "bag", "from-kitti", "--root", str(sim_root), "--seq", "00",
                             "--frames", "0:2", "--out", str(tmp_path / "bag.mcap")], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cmirl bag from-kitti: error: the message package(s) tf2_msgs, cmirl_ros_interfaces are not built" in result.stderr
    assert "run `make interfaces`" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written


def test_bag_play_imports_no_type_a_bag_names(tmp_path):
    """A crafted bag whose topic type names an importable module that is no installed interface
    package: refused with one clear error line, and the module is never imported."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    package = tmp_path / "site" / "cmirl_probe_pkg"
    (package / "msg").mkdir(parents=True)
    marker = tmp_path / "imported"
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (package / "msg" / "__init__.py").write_text("class Foo:\n    pass\n")
    bag = tmp_path / "crafted"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/probe", "cmirl_probe_pkg/msg/Foo", msgdef="int32 data",
                                           rihs01="RIHS01_" + "0" * 64)
        writer.write(connection, 1_000, bytes([0, 1, 0, 0, 1, 0, 0, 0]))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "cmirl_ros.cli", "bag", "play", str(bag)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and "cmirl_probe_pkg/msg/Foo" in errors[0] and str(bag) in errors[0], result.stderr
    assert not marker.exists(), "the bag's type name was imported"


def test_message_types_resolve_from_installed_interface_packages_only():
    from sensor_msgs.msg import Image

    from cmirl_ros.ros.interfaces import installed_message_types, message_class

    assert message_class("sensor_msgs/msg/Image") is Image
    assert {"std_msgs/msg/Header", "nav_msgs/msg/Odometry"} <= installed_message_types()
    before = set(sys.modules)
    for name in ("this/msg/Foo", "os/msg/path", "sensor_msgs/msg/NoSuchType", "sensor_msgs", "a/b/c/d", ""):
        assert message_class(name) is None, name
    assert not {"this", "os.msg"} & (set(sys.modules) - before)
