"""sensor_msgs Image / CompressedImage / PointCloud2 / CameraInfo -> numpy, without ROS.

Camera images decode to RGB as cv_bridge and image_transport hand them over (every colour
encoding, bayer, yuv422, 16 bit, jpeg/png); CameraInfo gives the intrinsics and a rectification.

Decoders are duck-typed: they read the standard field names, so they accept rclpy messages
and rosbags' deserialised dataclasses alike (the node and the ROS-free bag dataset share them).
Decoded arrays are views of the message buffer where the layout allows (no row padding, native
byte order); the returned arrays are then read-only. The encoders, which build rclpy messages,
are in `cmirl_ros.ros.conversions`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
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
    "8UC4": (np.uint8, 4),
    "rgb16": (np.uint16, 3),
    "bgr16": (np.uint16, 3),
    "rgba16": (np.uint16, 4),
    "bgra16": (np.uint16, 4),
    "mono16": (np.uint16, 1),
    "bayer_rggb8": (np.uint8, 1),
    "bayer_bggr8": (np.uint8, 1),
    "bayer_gbrg8": (np.uint8, 1),
    "bayer_grbg8": (np.uint8, 1),
    "bayer_rggb16": (np.uint16, 1),
    "bayer_bggr16": (np.uint16, 1),
    "bayer_gbrg16": (np.uint16, 1),
    "bayer_grbg16": (np.uint16, 1),
    "yuv422": (np.uint8, 2),
    "yuv422_yuy2": (np.uint8, 2),
    "16UC1": (np.uint16, 1),
    "32FC1": (np.float32, 1),
}

# Colour encodings -> the OpenCV conversion to RGB (None: already RGB), as cv_bridge converts them.
# The generic 8UC3 / 8UC4 carry no colour order: cv_bridge hands their bytes to OpenCV, whose
# order is BGR(A). cv_bridge's yuv422 is UYVY and yuv422_yuy2 is YUYV.
COLOUR_TO_RGB = {
    "rgb8": None,
    "rgb16": None,
    "bgr8": cv2.COLOR_BGR2RGB,
    "bgr16": cv2.COLOR_BGR2RGB,
    "8UC3": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "rgba16": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "bgra16": cv2.COLOR_BGRA2RGB,
    "8UC4": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
    "mono16": cv2.COLOR_GRAY2RGB,
    "8UC1": cv2.COLOR_GRAY2RGB,
    "bayer_rggb8": cv2.COLOR_BayerRGGB2RGB,
    "bayer_bggr8": cv2.COLOR_BayerBGGR2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGBRG2RGB,
    "bayer_grbg8": cv2.COLOR_BayerGRBG2RGB,
    "bayer_rggb16": cv2.COLOR_BayerRGGB2RGB,
    "bayer_bggr16": cv2.COLOR_BayerBGGR2RGB,
    "bayer_gbrg16": cv2.COLOR_BayerGBRG2RGB,
    "bayer_grbg16": cv2.COLOR_BayerGRBG2RGB,
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUYV,
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
    """Image or CompressedImage -> (H, W, 3) uint8 RGB, the query image the localizer expects.

    What cv_bridge's imgmsg_to_cv2(msg, "rgb8") returns: colour orders converted, bayer mosaics
    demosaiced, yuv422 converted, 16-bit values scaled to 8 bit (/256, rounded, as cvtColor for
    display does). A CompressedImage (told apart by its `format` field) is decoded with OpenCV."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return compressed_image_to_rgb(msg)
    encoding = msg.encoding
    if encoding in IMAGE_ENCODINGS and encoding not in COLOUR_TO_RGB:
        raise MalformedMessage(f"image encoding '{encoding}' is not a colour or mono image "
                               f"(colour encodings: {', '.join(COLOUR_TO_RGB)})")
    array = image_to_numpy(msg)
    if encoding.startswith("yuv422") and array.shape[1] % 2:
        raise MalformedMessage(f"{encoding} image has an odd width ({array.shape[1]} px): pixels come in pairs")
    return _to_rgb8(array, COLOUR_TO_RGB[encoding])


def _to_rgb8(array: np.ndarray, conversion: int | None) -> np.ndarray:
    if conversion is not None:
        try:
            array = cv2.cvtColor(array, conversion)
        except cv2.error as e:  # a size the conversion cannot take (e.g. a 1-px-wide bayer image)
            raise MalformedMessage(f"image of shape {array.shape} cannot be converted to RGB: {e.err}") from None
    if array.dtype == np.uint16:
        array = cv2.convertScaleAbs(array, alpha=1.0 / 256.0)  # OpenCV's convertTo: /256, rounded, saturated
    return array


COMPRESSED_CODECS = ("jpeg", "jpg", "png")
_DECODED_TO_RGB = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}  # imdecode gives BGR(A)


def compressed_codec(format_string: str) -> str:
    """The codec named by a CompressedImage format: "jpeg", "png", or image_transport's
    "<encoding>; <codec> compressed <encoding>" (e.g. "rgb8; jpeg compressed bgr8")."""
    lowered = format_string.lower()
    if "compresseddepth" in lowered:
        raise MalformedMessage(f"compressed image format '{format_string}' is a compressedDepth depth image, not a camera image")
    codecs = {token for token in lowered.replace(";", " ").split() if token in COMPRESSED_CODECS}
    if len(codecs) != 1:
        raise MalformedMessage(f"unsupported compressed image format '{format_string}' (supported: jpeg, png, as "
                               "image_transport writes them, e.g. 'rgb8; jpeg compressed bgr8')")
    return codecs.pop()


def compressed_image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png, 8 or 16 bit, grey, colour or with alpha) -> (H, W, 3) uint8 RGB.

    compressed_image_transport encodes colour as OpenCV's BGR whatever the source encoding was, so
    the decoded channels are BGR(A) (the format's trailing encoding says the same)."""
    codec = compressed_codec(str(msg.format))
    buffer = _buffer(msg.data)
    decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    if decoded is None:
        raise MalformedMessage(f"compressed image ({buffer.size} bytes, format '{msg.format}') does not decode as {codec}")
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    if decoded.dtype not in (np.uint8, np.uint16) or channels not in _DECODED_TO_RGB:
        raise MalformedMessage(f"compressed image decodes to {channels} channel(s) of {decoded.dtype}, not an 8/16-bit camera image")
    return _to_rgb8(decoded, _DECODED_TO_RGB[channels])


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
    """CameraInfo -> (K (3, 3) float64, width, height); the intrinsics that override the map's.

    The one validity check of a CameraInfo: K, D, R and P must be finite, K and the size usable."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    width, height = int(msg.width), int(msg.height)
    # Non-finite entries first: NaN <= 0 is false, and a NaN K projects every point off the image.
    if not np.isfinite(K).all() or width <= 0 or height <= 0 or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise MalformedMessage(f"camera info has no usable intrinsics (size {width}x{height}, "
                               f"K={K.reshape(-1).tolist()})")
    for name, values in (("D", msg.d), ("R", msg.r), ("P", msg.p)):
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if not np.isfinite(values).all():
            raise MalformedMessage(f"camera info has non-finite {name} ({values.tolist()})")
    return K, width, height


# distortion_model -> number of coefficients in D (sensor_msgs/distortion_models.hpp).
DISTORTION_MODELS = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}


@dataclass(frozen=True, eq=False)
class Rectification:
    """Raw camera images -> the undistorted pinhole images the localizer expects (image_proc's rectify).

    K: intrinsics of the rectified image (P's left 3x3; K where P is unset). R: rotation of the
    rectified camera frame relative to the raw one (identity for a monocular camera): points in
    the raw camera frame map into the rectified one by R. maps: cv2.remap maps, None when the raw
    image is already pinhole with intrinsics K (no distortion, R = I, P = K)."""

    K: np.ndarray
    R: np.ndarray
    width: int
    height: int
    maps: tuple[np.ndarray, np.ndarray] | None

    def apply(self, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] != (self.height, self.width):
            raise MalformedMessage(f"image is {image.shape[1]}x{image.shape[0]} but camera_info says {self.width}x{self.height}")
        if self.maps is None:
            return image
        return cv2.remap(image, self.maps[0], self.maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def camera_rectification(msg) -> Rectification:
    """CameraInfo -> its Rectification, cached per CameraInfo content (the maps cost ~70 ms at KITTI
    size, and a camera publishes the same CameraInfo with every image).

    plumb_bob, rational_polynomial and equidistant distortion are honoured (with R and P, as
    image_geometry's PinholeCameraModel rectifies); another model with non-zero D, binning or a
    region of interest is refused with a MalformedMessage that says so."""
    K, width, height = camera_info_to_K(msg)
    binning = (int(getattr(msg, "binning_x", 0)), int(getattr(msg, "binning_y", 0)))
    if max(binning) > 1:
        raise MalformedMessage(f"camera info binning {binning[0]}x{binning[1]} is not supported (publish full-resolution intrinsics)")
    roi = getattr(msg, "roi", None)
    if roi is not None and int(roi.width) and (int(roi.width), int(roi.height)) != (width, height):
        raise MalformedMessage(f"camera info region of interest {int(roi.width)}x{int(roi.height)} is not supported")
    return _rectification(str(msg.distortion_model), tuple(np.asarray(msg.d, np.float64).tolist()),
                          tuple(K.reshape(-1).tolist()), tuple(np.asarray(msg.r, np.float64).tolist()),
                          tuple(np.asarray(msg.p, np.float64).tolist()), width, height)


@functools.lru_cache(maxsize=8)
def _rectification(model: str, D: tuple, K: tuple, R: tuple, P: tuple, width: int, height: int) -> Rectification:
    K, D = np.array(K).reshape(3, 3), np.array(D)
    R = np.array(R).reshape(3, 3) if any(R) else np.eye(3)  # an unset R (all zeros) means no rotation
    K_rect = np.array(P).reshape(3, 4)[:, :3] if any(P) else K
    if not np.any(D) and np.array_equal(R, np.eye(3)) and np.array_equal(K_rect, K):
        return Rectification(K, R, width, height, None)
    if np.any(D) and model not in DISTORTION_MODELS:
        raise MalformedMessage(f"camera info distortion model '{model}' is not supported (supported: "
                               f"{', '.join(DISTORTION_MODELS)}); publish rectified images (image_proc) instead")
    coefficients = np.zeros(DISTORTION_MODELS.get(model, 5))
    if D.size not in (0, coefficients.size):
        raise MalformedMessage(f"camera info {model} distortion needs {coefficients.size} coefficients in D, got {D.size}")
    coefficients[:D.size] = D
    undistort = cv2.fisheye.initUndistortRectifyMap if model == "equidistant" else cv2.initUndistortRectifyMap
    maps = undistort(K, coefficients, R, K_rect, (width, height), cv2.CV_16SC2)
    for array in maps:
        array.flags.writeable = False  # shared by every caller through the cache
    return Rectification(K_rect, R, width, height, maps)


def stamp_to_seconds(stamp) -> float:
    return int(stamp.sec) + int(stamp.nanosec) * 1e-9
