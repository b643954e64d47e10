"""Image / PointCloud2 / CameraInfo conversions against hand-built messages.

The expected arrays are computed independently, byte by byte, the way cv_bridge
(imgmsg_to_cv2 passthrough) and sensor_msgs_py (read_points) interpret a message.
"""
from __future__ import annotations

import struct

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from cmirl_ros.ros.conversions import camera_info_msg, numpy_to_image, numpy_to_pointcloud2, seconds_to_stamp
from cmirl_ros.sensor_decoding import (
    MalformedMessage,
    camera_info_to_K,
    image_to_numpy,
    image_to_rgb,
    pointcloud2_to_structured,
    pointcloud2_to_xyzi,
    stamp_to_seconds,
)

RNG = np.random.default_rng(0)


def hand_image(pixels: np.ndarray, encoding: str, padding: int = 0, bigendian: bool = False) -> Image:
    """Serialise row by row with `padding` junk bytes after each row."""
    height, width = pixels.shape[:2]
    rows = []
    for row in pixels:
        raw = row.astype(row.dtype.newbyteorder(">" if bigendian else "<")).tobytes()
        rows.append(raw + b"\xAB" * padding)
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=int(bigendian))
    msg.step = len(rows[0])
    msg.data = b"".join(rows)
    return msg


@pytest.mark.parametrize("encoding,channels", [("rgb8", 3), ("bgr8", 3), ("rgba8", 4), ("bgra8", 4), ("mono8", 1)])
@pytest.mark.parametrize("padding", [0, 3])
def test_image_decoding_matches_cv_bridge_layout(encoding, channels, padding):
    shape = (5, 7, channels) if channels > 1 else (5, 7)
    pixels = RNG.integers(0, 256, size=shape, dtype=np.uint8)
    decoded = image_to_numpy(hand_image(pixels, encoding, padding))
    np.testing.assert_array_equal(decoded, pixels)


def test_image_to_rgb_reorders_channels():
    rgb = RNG.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_rgb(hand_image(rgb, "rgb8")), rgb)
    np.testing.assert_array_equal(image_to_rgb(hand_image(rgb[:, :, ::-1].copy(), "bgr8")), rgb)
    rgba = np.concatenate([rgb, np.full((4, 6, 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(image_to_rgb(hand_image(rgba, "rgba8", padding=2)), rgb)
    bgra = np.concatenate([rgb[:, :, ::-1], np.full((4, 6, 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(image_to_rgb(hand_image(bgra, "bgra8")), rgb)
    gray = rgb[:, :, 0].copy()
    np.testing.assert_array_equal(image_to_rgb(hand_image(gray, "mono8")), np.stack([gray] * 3, axis=2))


@pytest.mark.parametrize("bigendian", [False, True])
def test_sixteen_bit_images_honour_is_bigendian(bigendian):
    depth = RNG.integers(0, 65535, size=(3, 5), dtype=np.uint16)
    msg = hand_image(depth, "16UC1", padding=2, bigendian=bigendian)
    decoded = image_to_numpy(msg)
    assert decoded.dtype == np.uint16 and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, depth)


def test_unpadded_image_is_a_view_of_the_message_buffer():
    rgb = RNG.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    msg = numpy_to_image(rgb, "rgb8")
    decoded = image_to_numpy(msg)
    assert not decoded.flags.owndata and not decoded.flags.writeable
    assert np.shares_memory(decoded, np.frombuffer(msg.data, dtype=np.uint8))


def test_numpy_to_image_round_trip_and_fields():
    rgb = RNG.integers(0, 256, size=(376, 1241, 3), dtype=np.uint8)
    msg = numpy_to_image(rgb, "rgb8", stamp=seconds_to_stamp(12.5), frame_id="cam")
    assert (msg.height, msg.width, msg.step, msg.encoding) == (376, 1241, 1241 * 3, "rgb8")
    assert msg.header.frame_id == "cam" and stamp_to_seconds(msg.header.stamp) == 12.5
    np.testing.assert_array_equal(image_to_numpy(msg), rgb)
    with pytest.raises(ValueError):
        numpy_to_image(rgb, "mono8")


@pytest.mark.parametrize("mutate,reason", [
    (lambda m: setattr(m, "encoding", "nv21"), "unsupported image encoding"),
    (lambda m: setattr(m, "data", bytes(m.data)[:-1]), "needs"),
    (lambda m: setattr(m, "height", 0), "zero size"),
    (lambda m: setattr(m, "step", 5), "shorter than a row"),
])
def test_malformed_images_are_rejected(mutate, reason):
    msg = numpy_to_image(np.zeros((4, 6, 3), np.uint8), "rgb8")
    mutate(msg)
    with pytest.raises(MalformedMessage, match=reason):
        image_to_rgb(msg)


def hand_cloud(points: np.ndarray, intensity: bool = True, extra_padding: int = 4, row_pad: int = 0,
               height: int = 1, bigendian: bool = False) -> PointCloud2:
    """Layout: x, y, z float32, ring uint16, then intensity float32 at offset 16, then padding,
    serialised point by point with struct, as a driver would."""
    order = ">" if bigendian else "<"
    fields = [PointField(name="x", offset=0, datatype=7, count=1), PointField(name="y", offset=4, datatype=7, count=1),
              PointField(name="z", offset=8, datatype=7, count=1), PointField(name="ring", offset=12, datatype=4, count=1)]
    if intensity:
        fields.append(PointField(name="intensity", offset=16, datatype=7, count=1))
    point_step = 20 + extra_padding
    width = len(points) // height
    data = bytearray()
    for r in range(height):
        for x, y, z, i in points[r * width:(r + 1) * width]:
            packed = struct.pack(order + "fffH2xf", x, y, z, 7, i)
            data += packed + b"\x00" * extra_padding
        data += b"\xEE" * row_pad
    msg = PointCloud2(height=height, width=width, fields=fields, is_bigendian=bigendian, point_step=point_step,
                      row_step=width * point_step + row_pad, is_dense=False)
    msg.data = bytes(data)
    return msg


@pytest.mark.parametrize("row_pad,height,bigendian", [(0, 1, False), (8, 3, False), (0, 2, True)])
def test_pointcloud_decoding_matches_read_points(row_pad, height, bigendian):
    points = RNG.normal(size=(12, 4)).astype(np.float32)
    points[3, 1] = np.nan  # sensor_msgs_py's skip_nans drops points with a NaN coordinate
    points[5, 3] = np.nan  # ... but not a NaN intensity
    cloud = pointcloud2_to_xyzi(hand_cloud(points, row_pad=row_pad, height=height, bigendian=bigendian))
    expected = np.delete(points, 3, axis=0)
    np.testing.assert_array_equal(cloud, expected)
    full = pointcloud2_to_xyzi(hand_cloud(points, row_pad=row_pad, height=height, bigendian=bigendian), skip_nans=False)
    assert len(full) == 12


def test_pointcloud_without_intensity_and_dense_flag():
    points = RNG.normal(size=(6, 4)).astype(np.float32)
    msg = hand_cloud(points, intensity=False)
    cloud = pointcloud2_to_xyzi(msg)
    np.testing.assert_array_equal(cloud[:, :3], points[:, :3])
    assert (cloud[:, 3] == 0).all()
    structured = pointcloud2_to_structured(msg)
    assert structured.dtype.names == ("x", "y", "z", "ring") and (structured["ring"] == 7).all()
    assert np.shares_memory(structured, np.frombuffer(msg.data, dtype=np.uint8))


def test_numpy_to_pointcloud2_round_trip():
    points = RNG.normal(size=(100, 4)).astype(np.float32)
    msg = numpy_to_pointcloud2(points, frame_id="velo")
    assert msg.point_step == 16 and msg.row_step == 1600 and msg.is_dense
    np.testing.assert_array_equal(pointcloud2_to_xyzi(msg), points)


@pytest.mark.parametrize("mutate,reason", [
    (lambda m: setattr(m, "fields", [f for f in m.fields if f.name != "z"]), "lacks field"),
    (lambda m: setattr(m, "data", bytes(m.data)[:-4]), "need"),
    (lambda m: setattr(m, "width", 0), "zero size"),
    (lambda m: setattr(m, "row_step", 8), "row_step"),
    (lambda m: setattr(m, "point_step", 8), "point_step"),
    (lambda m: m.fields.__setitem__(0, PointField(name="x", offset=0, datatype=42, count=1)), "datatype"),
])
def test_malformed_pointclouds_are_rejected(mutate, reason):
    msg = numpy_to_pointcloud2(RNG.normal(size=(10, 4)).astype(np.float32))
    mutate(msg)
    with pytest.raises(MalformedMessage, match=reason):
        pointcloud2_to_xyzi(msg)


def test_camera_info_round_trip():
    K = np.array([[718.856, 0, 607.19], [0, 718.856, 185.21], [0, 0, 1]])
    K2, width, height = camera_info_to_K(camera_info_msg(K, 1241, 376))
    np.testing.assert_array_equal(K2, K)
    assert (width, height) == (1241, 376)
    with pytest.raises(MalformedMessage):
        camera_info_to_K(CameraInfo())


@pytest.mark.parametrize("entry, value", [((0, 0), np.nan), ((1, 1), np.inf), ((0, 2), np.nan), ((1, 2), -np.inf)])
def test_camera_info_with_non_finite_intrinsics_is_malformed(entry, value):
    K = np.array([[718.856, 0, 607.19], [0, 718.856, 185.21], [0, 0, 1]])
    K[entry] = value
    with pytest.raises(MalformedMessage, match="no usable intrinsics"):
        camera_info_to_K(camera_info_msg(K, 1241, 376))


def test_decoders_accept_rosbags_messages():
    """The bag dataset decodes rosbags' dataclasses (numpy data) with the same functions."""
    from rosbags.typesys import Stores, get_typestore

    from rclpy.serialization import serialize_message

    store = get_typestore(Stores.ROS2_JAZZY)
    rgb = RNG.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    image = store.deserialize_cdr(serialize_message(numpy_to_image(rgb, "rgb8")), "sensor_msgs/msg/Image")
    np.testing.assert_array_equal(image_to_rgb(image), rgb)
    points = RNG.normal(size=(9, 4)).astype(np.float32)
    cloud = store.deserialize_cdr(serialize_message(numpy_to_pointcloud2(points)), "sensor_msgs/msg/PointCloud2")
    np.testing.assert_array_equal(pointcloud2_to_xyzi(cloud), points)
