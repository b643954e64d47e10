"""`cmirl bag from-kitti`: a KITTI odometry sequence (real or simulated) -> rosbag2 (mcap).

Messages are built as rclpy messages and serialised by rclpy (the exact CDR a ROS graph carries);
tf2_msgs is not installed as a Python package here, so /tf_static is serialised with rosbags'
bundled definition of tf2_msgs/TFMessage (identical on the wire).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from rclpy.serialization import serialize_message
from tqdm import tqdm

from cmirl_ros.datasets.bag import typestore
from cmirl_ros.ros.conversions import camera_info_msg, numpy_to_image, numpy_to_pointcloud2, seconds_to_stamp
from cmirl_ros.ros.messages import pose_from_matrix
from cmirl_ros.topics import BAG_TOPICS

CAMERA_FRAME = "camera"
LIDAR_FRAME = "velodyne"
MAP_FRAME = "map"
TYPES = {
    "image": "sensor_msgs/msg/Image",
    "camera_info": "sensor_msgs/msg/CameraInfo",
    "points": "sensor_msgs/msg/PointCloud2",
    "odometry": "nav_msgs/msg/Odometry",
    "tf_static": "tf2_msgs/msg/TFMessage",
}


def bag_directory(out: str | Path) -> Path:
    """`out/name.mcap` -> the rosbag2 directory `out/name` (holding name.mcap + metadata.yaml)."""
    out = Path(out)
    return out.with_suffix("") if out.suffix == ".mcap" else out


def odometry_msg(stamp, T_world_cam: np.ndarray):
    from nav_msgs.msg import Odometry

    msg = Odometry()
    msg.header.stamp = stamp
    msg.header.frame_id = MAP_FRAME
    msg.child_frame_id = CAMERA_FRAME
    msg.pose.pose = pose_from_matrix(T_world_cam)
    return msg


def tf_static_cdr(store, stamp_seconds: float, T_cam_lidar: np.ndarray) -> bytes:
    """/tf_static with camera <- LiDAR (parent camera, child LiDAR), serialised by rosbags."""
    from scipy.spatial.transform import Rotation

    types = store.types
    sec, nanosec = divmod(int(round(stamp_seconds * 1e9)), 1_000_000_000)
    qx, qy, qz, qw = Rotation.from_matrix(T_cam_lidar[:3, :3]).as_quat()
    x, y, z = T_cam_lidar[:3, 3]
    transform = types["geometry_msgs/msg/TransformStamped"](
        header=types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=CAMERA_FRAME),
        child_frame_id=LIDAR_FRAME,
        transform=types["geometry_msgs/msg/Transform"](
            translation=types["geometry_msgs/msg/Vector3"](x=float(x), y=float(y), z=float(z)),
            rotation=types["geometry_msgs/msg/Quaternion"](x=float(qx), y=float(qy), z=float(qz), w=float(qw)),
        ),
    )
    return store.serialize_cdr(types[TYPES["tf_static"]](transforms=[transform]), TYPES["tf_static"])


def write_bag_from_dataset(dataset, out: str | Path, progress: bool = True) -> Path:
    """Write every frame of a KITTI-layout dataset to a rosbag2 (mcap) directory; returns it.

    Written to a temporary sibling and renamed at the end, so an interrupted run leaves no half bag."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    target = bag_directory(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f".{target.name}.partial"
    shutil.rmtree(temp, ignore_errors=True)
    store = typestore()
    calib = dataset.calib
    K, width, height = calib.camera.K, calib.camera.width, calib.camera.height
    with Writer(temp, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {role: writer.add_connection(BAG_TOPICS[role], msgtype, typestore=store) for role, msgtype in TYPES.items()}
        for i in tqdm(range(len(dataset)), desc=f"bag {dataset.name}", unit="frame", disable=not progress):
            frame = dataset[i]
            stamp = seconds_to_stamp(frame.stamp)
            time_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
            if i == 0:
                writer.write(connections["tf_static"], time_ns, tf_static_cdr(store, frame.stamp, calib.T_cam_sensor))
            writer.write(connections["camera_info"], time_ns,
                         serialize_message(camera_info_msg(K, width, height, stamp=stamp, frame_id=CAMERA_FRAME)))
            if frame.image is not None:
                writer.write(connections["image"], time_ns,
                             serialize_message(numpy_to_image(frame.image, "rgb8", stamp=stamp, frame_id=CAMERA_FRAME)))
            if frame.points is not None:
                writer.write(connections["points"], time_ns,
                             serialize_message(numpy_to_pointcloud2(frame.points, stamp=stamp, frame_id=LIDAR_FRAME)))
            writer.write(connections["odometry"], time_ns, serialize_message(odometry_msg(stamp, frame.T_world_cam)))
    # rosbags names the storage file after the directory: rename it to the final name as well.
    (temp / f"{temp.name}.mcap").rename(temp / f"{target.name}.mcap")
    metadata = temp / "metadata.yaml"
    metadata.write_text(metadata.read_text().replace(f"{temp.name}.mcap", f"{target.name}.mcap"))
    if target.exists():
        shutil.rmtree(target)
    os.replace(temp, target)
    return target
