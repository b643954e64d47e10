"""Camera inputs as cv_bridge / image_transport / image_proc hand them over, decoded without ROS.

Messages are duck-typed namespaces holding real encoded bytes (OpenCV's jpeg/png encoders, a bayer
mosaic of a known image, OpenCV's RGB -> yuv422), compared with the RGB ground truth.
"""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from cmirl_ros.sensor_decoding import (
    MalformedMessage,
    camera_info_to_K,
    camera_rectification,
    compressed_image_to_rgb,
    image_to_rgb,
)

RNG = np.random.default_rng(3)


def smooth_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    """Colour ramps with distinct channels: demosaicing and chroma subsampling recover them closely."""
    y, x = np.mgrid[0:height, 0:width]
    return np.clip(np.stack([40 + 2 * x, 30 + 3 * y, 230 - x - y], axis=2), 0, 255).astype(np.uint8)


def image_msg(pixels: np.ndarray, encoding: str, padding: int = 0, bigendian: bool = False) -> SimpleNamespace:
    """Rows serialised one by one with `padding` junk bytes after each (the message's `step`)."""
    order = ">" if bigendian else "<"
    rows = [row.astype(row.dtype.newbyteorder(order)).tobytes() + b"\xAB" * padding for row in pixels]
    return SimpleNamespace(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
                           is_bigendian=int(bigendian), step=len(rows[0]), data=b"".join(rows))


def compressed_msg(data: bytes, format_string: str) -> SimpleNamespace:
    return SimpleNamespace(format=format_string, data=np.frombuffer(data, np.uint8))


def interior_error(decoded: np.ndarray, truth: np.ndarray, border: int = 2) -> float:
    inner = (slice(border, -border or None),) * 2
    return float(np.abs(decoded[inner].astype(np.int32) - truth[inner].astype(np.int32)).mean())


@pytest.mark.parametrize("encoding,to_message", [
    ("rgb8", lambda rgb: rgb),
    ("bgr8", lambda rgb: rgb[:, :, ::-1]),
    ("8UC3", lambda rgb: rgb[:, :, ::-1]),  # cv_bridge passes 8UC3 bytes through: OpenCV reads them as BGR
    ("rgba8", lambda rgb: np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])),
    ("bgra8", lambda rgb: np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 7, np.uint8)])),
    ("8UC4", lambda rgb: np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 7, np.uint8)])),
])
@pytest.mark.parametrize("padding", [0, 5])
def test_eight_bit_colour_encodings(encoding, to_message, padding):
    rgb = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    decoded = image_to_rgb(image_msg(np.ascontiguousarray(to_message(rgb)), encoding, padding))
    assert decoded.dtype == np.uint8 and decoded.shape == (5, 7, 3)
    np.testing.assert_array_equal(decoded, rgb)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8_becomes_grey_rgb(encoding):
    grey = RNG.integers(0, 256, size=(4, 9), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_rgb(image_msg(grey, encoding, padding=3)), np.dstack([grey] * 3))


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("encoding,to_message", [
    ("rgb16", lambda rgb: rgb),
    ("bgr16", lambda rgb: rgb[:, :, ::-1]),
    ("rgba16", lambda rgb: np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint16)])),
    ("bgra16", lambda rgb: np.dstack([rgb[:, :, ::-1], np.zeros(rgb.shape[:2], np.uint16)])),
    ("mono16", lambda rgb: rgb[:, :, 0]),
])
def test_sixteen_bit_encodings_scale_by_256_and_honour_byte_order(encoding, to_message, bigendian):
    wide = RNG.integers(0, 65536, size=(6, 8, 3)).astype(np.uint16)
    wide[wide % 256 == 128] += 1  # no exact .5: the rounding of ties is OpenCV's business
    expected = np.clip(np.rint(wide / 256.0), 0, 255).astype(np.uint8)
    decoded = image_to_rgb(image_msg(np.ascontiguousarray(to_message(wide)), encoding, padding=2, bigendian=bigendian))
    if encoding == "mono16":
        expected = np.dstack([expected[:, :, 0]] * 3)
    np.testing.assert_array_equal(decoded, expected)


# pattern -> the colour (0 R, 1 G, 2 B) at (row, col) = (0, 0), (0, 1), (1, 0), (1, 1)
BAYER_PATTERNS = {"rggb": (0, 1, 1, 2), "bggr": (2, 1, 1, 0), "gbrg": (1, 2, 0, 1), "grbg": (1, 0, 2, 1)}


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    out = np.empty(rgb.shape[:2], rgb.dtype)
    for (dy, dx), channel in zip(((0, 0), (0, 1), (1, 0), (1, 1)), BAYER_PATTERNS[pattern]):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, channel]
    return out


@pytest.mark.parametrize("pattern", list(BAYER_PATTERNS))
def test_bayer_demosaic_recovers_the_mosaicked_image(pattern):
    rgb = smooth_rgb()
    raw = mosaic(rgb, pattern)
    assert interior_error(image_to_rgb(image_msg(raw, f"bayer_{pattern}8", padding=4)), rgb) < 1.0
    # 16 bit: the same mosaic at 256x, demosaiced then scaled back
    raw16 = mosaic(rgb.astype(np.uint16) * 256, pattern)
    assert interior_error(image_to_rgb(image_msg(raw16, f"bayer_{pattern}16", bigendian=True)), rgb) < 1.0
    # the pattern matters: read as another one, the colours are far off
    other = next(p for p in BAYER_PATTERNS if BAYER_PATTERNS[p][0] != BAYER_PATTERNS[pattern][0])
    assert interior_error(image_to_rgb(image_msg(raw, f"bayer_{other}8")), rgb) > 20


@pytest.mark.parametrize("encoding,conversion,swapped", [
    ("yuv422", cv2.COLOR_RGB2YUV_UYVY, "yuv422_yuy2"),  # cv_bridge: yuv422 = UYVY
    ("yuv422_yuy2", cv2.COLOR_RGB2YUV_YUYV, "yuv422"),  # yuv422_yuy2 = YUYV
])
def test_yuv422_round_trip(encoding, conversion, swapped):
    rgb = smooth_rgb()
    packed = cv2.cvtColor(rgb, conversion)  # (H, W, 2) uint8, as a camera driver sends it
    assert interior_error(image_to_rgb(image_msg(packed, encoding, padding=6)), rgb) < 3.0
    assert interior_error(image_to_rgb(image_msg(packed, swapped)), rgb) > 20
    with pytest.raises(MalformedMessage, match="odd width"):
        image_to_rgb(image_msg(packed[:, :-1], encoding))


def test_non_colour_encodings_are_refused():
    with pytest.raises(MalformedMessage, match="not a colour or mono image"):
        image_to_rgb(image_msg(np.zeros((3, 4), np.uint16), "16UC1"))
    with pytest.raises(MalformedMessage, match="unsupported image encoding 'nv21'"):
        image_to_rgb(image_msg(np.zeros((3, 4), np.uint8), "nv21"))


@pytest.mark.parametrize("format_string", ["rgb8; jpeg compressed bgr8", "bgr8; jpeg compressed bgr8", "jpeg", "JPG"])
def test_jpeg_compressed_image(format_string):
    rgb = smooth_rgb(64, 96)
    ok, data = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])  # image_transport encodes BGR
    decoded = image_to_rgb(compressed_msg(data.tobytes(), format_string))
    assert ok and decoded.shape == rgb.shape and decoded.dtype == np.uint8
    assert interior_error(decoded, rgb, border=0) < 2.0
    assert interior_error(decoded[:, :, ::-1], rgb, border=0) > 20  # channel order is right


def test_png_compressed_images_are_lossless():
    rgb = RNG.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    _, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    np.testing.assert_array_equal(compressed_image_to_rgb(compressed_msg(data.tobytes(), "rgb8; png compressed bgr8")), rgb)
    bgra = np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 200, np.uint8)])
    _, data = cv2.imencode(".png", bgra)
    np.testing.assert_array_equal(image_to_rgb(compressed_msg(data.tobytes(), "bgra8; png compressed bgra8")), rgb)
    grey16 = RNG.integers(0, 65536, size=(10, 12)).astype(np.uint16)
    grey16[grey16 % 256 == 128] += 1
    _, data = cv2.imencode(".png", grey16)
    expected = np.clip(np.rint(grey16 / 256.0), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(image_to_rgb(compressed_msg(data.tobytes(), "mono16; png compressed mono16")),
                                  np.dstack([expected] * 3))


@pytest.mark.parametrize("format_string,data,reason", [
    ("16UC1; compressedDepth png", b"\x89PNG", "compressedDepth"),
    ("theora", b"\x00", "unsupported compressed image format 'theora'"),
    ("", b"\x00", "unsupported compressed image format ''"),
    ("jpeg", b"not a jpeg at all", "does not decode as jpeg"),
    ("png", b"", "0 bytes"),
])
def test_bad_compressed_images_are_malformed(format_string, data, reason):
    with pytest.raises(MalformedMessage, match=reason):
        image_to_rgb(compressed_msg(data, format_string))


# ------------------------------------------------------------------ CameraInfo: validity and rectification
WIDTH, HEIGHT = 160, 120
K = np.array([[100.0, 0, 80.5], [0, 95.0, 60.2], [0, 0, 1]])


def camera_info(D=(0.0,) * 5, model="plumb_bob", R=None, P=None, K_=K, **extra) -> SimpleNamespace:
    P = np.hstack([K_, np.zeros((3, 1))]) if P is None else np.asarray(P)
    R = np.eye(3) if R is None else np.asarray(R)
    fields = dict(width=WIDTH, height=HEIGHT, distortion_model=model, d=list(D), k=K_.reshape(-1).tolist(),
                  r=R.reshape(-1).tolist(), p=P.reshape(-1).tolist(), binning_x=0, binning_y=0,
                  roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0, do_rectify=False))
    return SimpleNamespace(**{**fields, **extra})


@pytest.mark.parametrize("field,index", [("d", 1), ("p", 3), ("p", 0), ("r", 4)])
def test_camera_info_with_non_finite_D_R_or_P_is_malformed(field, index):
    msg = camera_info(D=(0.1, 0.01, 0, 0, 0))
    values = getattr(msg, field)
    values[index] = np.nan
    with pytest.raises(MalformedMessage, match=f"non-finite {field.upper()}"):
        camera_info_to_K(msg)
    with pytest.raises(MalformedMessage, match=f"non-finite {field.upper()}"):
        camera_rectification(msg)


def test_camera_without_distortion_needs_no_rectification():
    for msg in (camera_info(), camera_info(D=[]), camera_info(model="", D=[]), camera_info(R=np.zeros((3, 3)))):
        rectification = camera_rectification(msg)
        assert rectification.maps is None
        np.testing.assert_array_equal(rectification.K, K)
        image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        assert rectification.apply(image) is image


def blobs_at(pixels: np.ndarray) -> np.ndarray:
    """A float image with a small Gaussian blob centred on each (u, v)."""
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    image = np.zeros((HEIGHT, WIDTH), np.float32)
    for x, y in pixels:
        image += np.exp(-((u - x) ** 2 + (v - y) ** 2) / (2 * 1.5**2))
    return image


def centroid_near(image: np.ndarray, x: float, y: float, radius: int = 5) -> np.ndarray:
    x0, y0 = int(round(x)), int(round(y))
    window = image[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
    v, u = np.mgrid[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
    return np.array([(u * window).sum(), (v * window).sum()]) / window.sum()


POINTS = np.array([[-0.45, -0.35, 1.0], [0.4, -0.3, 1.0], [0.0, 0.0, 1.0], [-0.4, 0.35, 1.0], [0.42, 0.32, 1.0], [0.2, -0.1, 1.0]])


def project_distorted(model: str, D: np.ndarray) -> np.ndarray:
    zero = np.zeros(3)
    if model == "equidistant":
        pixels, _ = cv2.fisheye.projectPoints(POINTS[None], zero, zero, K, D)
    else:
        pixels, _ = cv2.projectPoints(POINTS, zero, zero, K, D)
    return pixels.reshape(-1, 2)


@pytest.mark.parametrize("model,D", [
    ("plumb_bob", np.array([-0.28, 0.07, 0.001, -0.0015, 0.0])),
    ("rational_polynomial", np.array([-0.3, 0.08, 0.001, 0.002, 0.0, 0.0, 0.0, 0.05])),
    ("equidistant", np.array([0.05, -0.02, 0.01, -0.003])),
])
def test_rectification_moves_distorted_points_to_their_pinhole_pixels(model, D):
    """A scene point's blob in the raw image lands, after rectification, where the rectified
    camera (rotation R, intrinsics P) projects that point."""
    R = cv2.Rodrigues(np.array([0.0, 0.02, -0.01]))[0]
    K_rect = np.array([[110.0, 0, 79.0], [0, 110.0, 61.0], [0, 0, 1]])
    msg = camera_info(D=D, model=model, R=R, P=np.hstack([K_rect, np.zeros((3, 1))]))
    rectification = camera_rectification(msg)
    np.testing.assert_array_equal(rectification.K, K_rect)
    rectified = rectification.apply(blobs_at(project_distorted(model, D)))
    in_rectified = (K_rect @ (R @ POINTS.T)).T
    expected = in_rectified[:, :2] / in_rectified[:, 2:]
    found = np.array([centroid_near(rectified, *p) for p in expected])
    np.testing.assert_allclose(found, expected, atol=0.25)
    # and the distortion mattered: without rectification the blobs are elsewhere
    assert np.abs(project_distorted(model, D) - expected).max() > 2.0


def test_rectification_is_cached_per_camera_info_content():
    D = (-0.2, 0.05, 0.0, 0.0, 0.0)
    first = camera_rectification(camera_info(D=D))
    assert camera_rectification(camera_info(D=D)) is first
    assert camera_rectification(camera_info(D=(-0.21, 0.05, 0.0, 0.0, 0.0))) is not first


@pytest.mark.parametrize("msg,reason", [
    (camera_info(D=(0.1, 0, 0, 0), model="fov"), "distortion model 'fov' is not supported"),
    (camera_info(D=(0.1, 0.0, 0.0), model="plumb_bob"), "needs 5 coefficients in D, got 3"),
    (camera_info(D=(0.1, 0.0, 0.0, 0.0, 0.0), model="equidistant"), "needs 4 coefficients"),
    (camera_info(binning_x=2, binning_y=2), "binning 2x2"),
    (camera_info(roi=SimpleNamespace(x_offset=10, y_offset=0, width=100, height=80, do_rectify=True)), "region of interest"),
])
def test_unsupported_camera_models_are_refused_with_the_reason(msg, reason):
    with pytest.raises(MalformedMessage, match=reason):
        camera_rectification(msg)


def test_rectifying_an_image_of_another_size_is_malformed():
    with pytest.raises(MalformedMessage, match=f"camera_info says {WIDTH}x{HEIGHT}"):
        camera_rectification(camera_info(D=(-0.2, 0, 0, 0, 0))).apply(np.zeros((HEIGHT, WIDTH + 2, 3), np.uint8))


def test_inputs_benchmark_writes_its_figures(tmp_path):
    import json

    from cmirl_ros.cli import main

    out = tmp_path / "inputs.json"
    assert main(["bench", "inputs", "--repeats", "1", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert {"rgb8_ms", "bayer_rggb8_ms", "yuv422_ms", "jpeg_q95_ms", "rectification_maps_ms", "remap_ms"} <= set(figures)
    assert all(figures[key] >= 0 for key in figures if key.endswith("_ms"))
