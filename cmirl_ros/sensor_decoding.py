"""sensor_msgs Image / PointCloud2 / CameraInfo -> numpy, without ROS.

Decoders are duck-typed: they read the standard field names, so they accept rclpy messages
and rosbags' deserialised dataclasses alike (the node and the ROS-free bag dataset share them).
Decoded arrays are views of the message buffer where the layout allows (no row padding, native
byte order); the returned arrays are then read-only. The encoders, which build rclpy messages,
are in `cmirl_ros.ros.conversions`.
"""
from __future__ import annotations

import numpy as np


class MalformedMessage(ValueError):
    """A message whose layout is inconsistent or unsupported; the node counts and drops it."""


# encoding -> (numpy dtype, channels); the layout cv_bridge uses for each encoding.
IMAGE_ENCODINGS = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1),
    "8UC1": (np.uint8, 1),
    "8UC3": (np.uint8, 3),
    "mono16": (np.uint16, 1),
    "16UC1": (np.uint16, 1),
    "32FC1": (np.float32, 1),
}

# sensor_msgs/PointField datatype constants -> numpy dtype.
POINT_FIELD_DTYPES = {
    1: np.int8,
    2: np.uint8,
    3: np.int16,
    4: np.uint16,
    5: np.int32,
    6: np.uint32,
    7: np.float32,
    8: np.float64,
}
FLOAT32 = 7


def _buffer(data) -> np.ndarray:
    """The message's byte buffer as a uint8 array, without copying (bytes, array.array or ndarray)."""
    if isinstance(data, np.ndarray):
        return data.view(np.uint8).reshape(-1)
    return np.frombuffer(data, dtype=np.uint8)


def image_to_numpy(msg) -> np.ndarray:
    """Image -> (H, W, C) array in the message's own channel order ((H, W) for one channel),
    what cv_bridge's imgmsg_to_cv2(msg, "passthrough") returns."""
    if msg.encoding not in IMAGE_ENCODINGS:
        raise MalformedMessage(f"unsupported image encoding '{msg.encoding}' (supported: {', '.join(IMAGE_ENCODINGS)})")
    dtype, channels = IMAGE_ENCODINGS[msg.encoding]
    dtype = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise MalformedMessage(f"image has zero size ({width}x{height})")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise MalformedMessage(f"image step {step} is shorter than a row ({row_bytes} bytes for {width} px {msg.encoding})")
    buffer = _buffer(msg.data)
    needed = step * (height - 1) + row_bytes
    if buffer.size < needed:
        raise MalformedMessage(f"image data has {buffer.size} bytes, {width}x{height} {msg.encoding} with step {step} needs {needed}")
    # A strided view skips the row padding without copying (bounds checked just above).
    rows = np.lib.stride_tricks.as_strided(buffer, shape=(height, row_bytes), strides=(step, 1), writeable=False)
    if step == row_bytes and dtype.itemsize > 1:
        array = buffer[: height * row_bytes].view(dtype)
    elif dtype.itemsize > 1:
        array = np.ascontiguousarray(rows).view(dtype)
    else:
        array = rows
    array = array.reshape(height, width, channels)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array[:, :, 0] if channels == 1 else array


def image_to_rgb(msg) -> np.ndarray:
    """Image (colour or mono8) -> (H, W, 3) uint8 RGB, the query image the localizer expects."""
    array = image_to_numpy(msg)
    encoding = msg.encoding
    if encoding in ("rgb8", "8UC3"):
        return array
    if encoding == "bgr8":
        return array[:, :, ::-1]
    if encoding == "rgba8":
        return array[:, :, :3]
    if encoding == "bgra8":
        return array[:, :, 2::-1]
    if encoding in ("mono8", "8UC1"):
        return np.repeat(array[:, :, None], 3, axis=2)
    raise MalformedMessage(f"image encoding '{encoding}' is not a colour or mono8 image")


def _cloud_dtype(msg) -> np.dtype:
    names, formats, offsets = [], [], []
    for field in msg.fields:
        if field.datatype not in POINT_FIELD_DTYPES:
            raise MalformedMessage(f"point field '{field.name}' has unknown datatype {field.datatype}")
        base = np.dtype(POINT_FIELD_DTYPES[field.datatype]).newbyteorder(">" if msg.is_bigendian else "<")
        count = max(int(field.count), 1)
        names.append(field.name)
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(int(field.offset))
    point_step = int(msg.point_step)
    try:
        dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})
    except ValueError as e:  # overlapping or out-of-range fields
        raise MalformedMessage(f"point fields do not fit in point_step {point_step}: {e}") from None
    return dtype


def pointcloud2_to_structured(msg) -> np.ndarray:
    """PointCloud2 -> (height * width,) structured array with one entry per field, as a view of the
    message buffer when rows are unpadded; what sensor_msgs_py's read_points(skip_nans=False) yields."""
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    if height <= 0 or width <= 0:
        raise MalformedMessage(f"point cloud has zero size ({width}x{height})")
    if point_step <= 0:
        raise MalformedMessage(f"point cloud point_step is {point_step}")
    if row_step < width * point_step:
        raise MalformedMessage(f"point cloud row_step {row_step} < width {width} x point_step {point_step}")
    buffer = _buffer(msg.data)
    needed = row_step * (height - 1) + width * point_step
    if buffer.size < needed:  # checked before any size-dependent work: claimed sizes may be absurd
        raise MalformedMessage(f"point cloud data has {buffer.size} bytes, {width}x{height} points need {needed}")
    if len(set(f.name for f in msg.fields)) != len(msg.fields):
        raise MalformedMessage("point cloud has duplicate field names")
    dtype = _cloud_dtype(msg)
    if row_step == width * point_step:
        return buffer[: height * row_step].view(dtype)
    rows = np.lib.stride_tricks.as_strided(buffer, shape=(height, width * point_step), strides=(row_step, 1), writeable=False)
    return np.ascontiguousarray(rows).reshape(-1).view(dtype)


def pointcloud2_to_xyzi(msg, skip_nans: bool = True) -> np.ndarray:
    """PointCloud2 -> (N, 4) float32 x, y, z, intensity (0 where the cloud has no intensity field).

    Points with a NaN or infinite coordinate are dropped when skip_nans, as sensor_msgs_py does."""
    counts = {f.name: max(int(f.count), 1) for f in msg.fields}
    names = set(counts)
    missing = [axis for axis in ("x", "y", "z") if axis not in names]
    if missing:
        raise MalformedMessage(f"point cloud lacks field(s) {', '.join(missing)} (has: {', '.join(sorted(names)) or 'none'})")
    if any(counts[name] != 1 for name in ("x", "y", "z", "intensity") if name in counts):
        raise MalformedMessage("point cloud fields x, y, z, intensity must have count 1")
    cloud = pointcloud2_to_structured(msg)
    points = np.empty((cloud.shape[0], 4), dtype=np.float32)
    for column, name in enumerate(("x", "y", "z")):
        points[:, column] = cloud[name]
    points[:, 3] = cloud["intensity"] if "intensity" in names else 0.0
    if skip_nans and not bool(getattr(msg, "is_dense", False)):
        points = points[np.isfinite(points[:, :3]).all(axis=1)]
    return points


def camera_info_to_K(msg) -> tuple[np.ndarray, int, int]:
    """CameraInfo -> (K (3, 3) float64, width, height); the intrinsics that override the map's."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    width, height = int(msg.width), int(msg.height)
    # Non-finite entries first: NaN <= 0 is false, and a NaN K projects every point off the image.
    if not np.isfinite(K).all() or width <= 0 or height <= 0 or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise MalformedMessage(f"camera info has no usable intrinsics (size {width}x{height}, "
                               f"K={K.reshape(-1).tolist()})")
    return K, width, height


def stamp_to_seconds(stamp) -> float:
    return int(stamp.sec) + int(stamp.nanosec) * 1e-9
