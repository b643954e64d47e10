"""`cmirl bag from-kitti`: a KITTI odometry sequence (real or simulated) -> rosbag2 (mcap).

Messages are built as rclpy messages and serialised by rclpy (the exact CDR a ROS graph carries),
/tf_static with the generated tf2_msgs type (`make interfaces`). The tf tree is a robot's
(REP 103/105): base_link -> velodyne and base_link -> camera_optical, KITTI's base_link being the
road below the Velodyne (`cmirl_ros.geometry.frames`), so a node needs no calib file. The ground
truth (/ground_truth/odometry, the camera's pose) is in the z-up `map` (the dataset's
`frame_convention`: KITTI's y-down camera-0 world rotated by T_MAP_KITTI_WORLD).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from rclpy.serialization import serialize_message
from tqdm import tqdm

from cmirl_ros.datasets.bag import COMPRESSED_SUFFIX, typestore
from cmirl_ros.geometry.camera import invert_transform
from cmirl_ros.geometry.frames import base_pose_in_map, kitti_T_base_cam, kitti_T_base_velo
from cmirl_ros.ros.conversions import camera_info_msg, numpy_to_image, numpy_to_pointcloud2, seconds_to_stamp
from cmirl_ros.ros.interfaces import tf_message_type
from cmirl_ros.ros.messages import pose_from_matrix
from cmirl_ros.topics import BAG_TOPICS

BASE_FRAME = "base_link"
CAMERA_FRAME = "camera_optical"
LIDAR_FRAME = "velodyne"
MAP_FRAME = "map"
ODOM_FRAME = "odom"
TF_TOPIC = "/tf"
JPEG_QUALITY = 95  # compressed_image_transport's default
TYPES = {
    "image": "sensor_msgs/msg/Image",
    "camera_info": "sensor_msgs/msg/CameraInfo",
    "points": "sensor_msgs/msg/PointCloud2",
    "odometry": "nav_msgs/msg/Odometry",
    "tf_static": "tf2_msgs/msg/TFMessage",
}
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"


def bag_directory(out: str | Path) -> Path:
    """`out/name.mcap` -> the rosbag2 directory `out/name` (holding name.mcap + metadata.yaml)."""
    out = Path(out)
    return out.with_suffix("") if out.suffix == ".mcap" else out


def odometry_msg(stamp, T_map_cam: np.ndarray):
    from nav_msgs.msg import Odometry

    msg = Odometry()
    msg.header.stamp = stamp
    msg.header.frame_id = MAP_FRAME
    msg.child_frame_id = CAMERA_FRAME
    msg.pose.pose = pose_from_matrix(T_map_cam)
    return msg


def transform_stamped(stamp, parent: str, child: str, T_parent_child: np.ndarray):
    """geometry_msgs/TransformStamped: `child`'s pose in `parent`."""
    from geometry_msgs.msg import TransformStamped

    msg = TransformStamped()
    msg.header.stamp, msg.header.frame_id, msg.child_frame_id = stamp, parent, child
    pose = pose_from_matrix(T_parent_child)
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = \
        pose.position.x, pose.position.y, pose.position.z
    msg.transform.rotation = pose.orientation
    return msg


def robot_tf_static(stamp, T_cam_velo: np.ndarray):
    """/tf_static of a KITTI car: base_link -> velodyne, base_link -> camera_optical (one message,
    as tf2's static broadcaster sends all its transforms)."""
    msg = tf_message_type()()
    msg.transforms = [transform_stamped(stamp, BASE_FRAME, LIDAR_FRAME, kitti_T_base_velo()),
                      transform_stamped(stamp, BASE_FRAME, CAMERA_FRAME, kitti_T_base_cam(T_cam_velo))]
    return msg


def odom_poses(dataset) -> np.ndarray:
    """(N,4,4) T_odom_base of every frame from ground truth, odom being the first base pose (what a
    LIO front end's odometry gives, without its drift)."""
    T_map_base = base_pose_in_map(dataset.poses, kitti_T_base_cam(dataset.calib.T_cam_sensor))
    return invert_transform(T_map_base[0]) @ T_map_base


def odom_tf(stamp, T_odom_base: np.ndarray):
    """/tf message with the one edge odom -> base_link, as an odometry node broadcasts it."""
    msg = tf_message_type()()
    msg.transforms = [transform_stamped(stamp, ODOM_FRAME, BASE_FRAME, T_odom_base)]
    return msg


def compressed_image_msg(rgb: np.ndarray, stamp, frame_id: str):
    """RGB -> sensor_msgs/CompressedImage as compressed_image_transport publishes an rgb8 image:
    jpeg of the BGR image, format "rgb8; jpeg compressed bgr8"."""
    import cv2
    from sensor_msgs.msg import CompressedImage

    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"jpeg encoding failed for an image of shape {rgb.shape}")
    msg = CompressedImage(format="rgb8; jpeg compressed bgr8", data=data.tobytes())
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    return msg


def image_message(rgb: np.ndarray, stamp, compressed: bool):
    if compressed:
        return compressed_image_msg(rgb, stamp, CAMERA_FRAME)
    return numpy_to_image(rgb, "rgb8", stamp=stamp, frame_id=CAMERA_FRAME)


def write_bag_from_dataset(dataset, out: str | Path, progress: bool = True, compressed: bool = False,
                           odometry_tf: bool = False) -> Path:
    """Write every frame of a KITTI-layout dataset to a rosbag2 (mcap) directory; returns it.

    compressed: images as jpeg CompressedImage on `<image topic>/compressed` (image_transport's
    name) instead of raw Image. odometry_tf: /tf odom -> base_link at each frame (`odom_poses`),
    written before the frame's sensor messages. Written to a temporary sibling and renamed at the end, so an
    interrupted run leaves no half bag."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    tf_message_type()  # fails here, before anything is written, when the interfaces are not built
    target = bag_directory(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f".{target.name}.partial"
    shutil.rmtree(temp, ignore_errors=True)
    store = typestore()
    calib = dataset.calib
    to_map = dataset.frame_convention.to_map
    K, width, height = calib.camera.K, calib.camera.width, calib.camera.height
    with Writer(temp, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        topics, types = dict(BAG_TOPICS), dict(TYPES)
        if compressed:
            topics["image"], types["image"] = BAG_TOPICS["image"] + COMPRESSED_SUFFIX, COMPRESSED_TYPE
        if odometry_tf:
            topics["tf"], types["tf"] = TF_TOPIC, TYPES["tf_static"]
            odometry = odom_poses(dataset)
        connections = {role: writer.add_connection(topics[role], msgtype, typestore=store) for role, msgtype in types.items()}
        for i in tqdm(range(len(dataset)), desc=f"bag {dataset.name}", unit="frame", disable=not progress):
            frame = dataset[i]
            stamp = seconds_to_stamp(frame.stamp)
            time_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
            if i == 0:
                writer.write(connections["tf_static"], time_ns, serialize_message(robot_tf_static(stamp, calib.T_cam_sensor)))
            if odometry_tf:
                writer.write(connections["tf"], time_ns, serialize_message(odom_tf(stamp, odometry[i])))
            writer.write(connections["camera_info"], time_ns,
                         serialize_message(camera_info_msg(K, width, height, stamp=stamp, frame_id=CAMERA_FRAME)))
            if frame.image is not None:
                writer.write(connections["image"], time_ns, serialize_message(image_message(frame.image, stamp, compressed)))
            if frame.points is not None:
                writer.write(connections["points"], time_ns,
                             serialize_message(numpy_to_pointcloud2(frame.points, stamp=stamp, frame_id=LIDAR_FRAME)))
            writer.write(connections["odometry"], time_ns, serialize_message(odometry_msg(stamp, to_map(frame.T_world_cam))))
    # rosbags names the storage file after the directory: rename it to the final name as well.
    (temp / f"{temp.name}.mcap").rename(temp / f"{target.name}.mcap")
    metadata = temp / "metadata.yaml"
    metadata.write_text(metadata.read_text().replace(f"{temp.name}.mcap", f"{target.name}.mcap"))
    if target.exists():
        shutil.rmtree(target)
    os.replace(temp, target)
    return target
