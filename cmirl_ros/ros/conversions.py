"""numpy -> sensor_msgs Image / PointCloud2 / CameraInfo (rclpy messages); the decoders, which
need no ROS, are in `cmirl_ros.sensor_decoding`."""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from cmirl_ros.sensor_decoding import FLOAT32, IMAGE_ENCODINGS


def numpy_to_image(array: np.ndarray, encoding: str, stamp=None, frame_id: str = ""):
    """(H, W[, C]) array -> sensor_msgs/Image (tightly packed rows), like cv_bridge's cv2_to_imgmsg."""
    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"unsupported image encoding '{encoding}'")
    dtype, channels = IMAGE_ENCODINGS[encoding]
    array = np.ascontiguousarray(array, dtype=dtype)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] != channels:
        raise ValueError(f"array of shape {array.shape} does not fit encoding '{encoding}' ({channels} channels)")
    msg = Image()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = array.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = array.shape[1] * channels * array.itemsize
    msg.data = array.tobytes()
    return msg


def numpy_to_pointcloud2(points: np.ndarray, stamp=None, frame_id: str = ""):
    """(N, 3|4) array (x, y, z[, intensity]) -> unorganised float32 PointCloud2."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] not in (3, 4):
        raise ValueError(f"points must be (N, 3) or (N, 4), got {points.shape}")
    names = ("x", "y", "z", "intensity")[: points.shape[1]]
    msg = PointCloud2()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = 1, points.shape[0]
    msg.fields = [PointField(name=name, offset=4 * i, datatype=FLOAT32, count=1) for i, name in enumerate(names)]
    msg.is_bigendian = False
    msg.point_step = 4 * len(names)
    msg.row_step = msg.point_step * points.shape[0]
    msg.is_dense = bool(np.isfinite(points[:, :3]).all())
    msg.data = points.tobytes()
    return msg


def camera_info_msg(K: np.ndarray, width: int, height: int, stamp=None, frame_id: str = ""):
    """Pinhole intrinsics -> sensor_msgs/CameraInfo (no distortion, plumb_bob)."""
    msg = CameraInfo()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    K = np.asarray(K, dtype=np.float64)
    msg.k = K.reshape(-1).tolist()
    msg.r = np.eye(3).reshape(-1).tolist()
    msg.p = np.hstack([K, np.zeros((3, 1))]).reshape(-1).tolist()
    return msg


def seconds_to_stamp(seconds: float):
    nanoseconds = int(round(seconds * 1e9))
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)
