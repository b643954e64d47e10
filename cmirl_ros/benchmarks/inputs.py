"""`cmirl bench inputs`: decoding camera inputs at KITTI size (1240x376): every kind of encoding the
node accepts, jpeg, and CameraInfo rectification (maps once, then the cached remap per image)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np

from cmirl_ros.sensor_decoding import camera_rectification, image_to_rgb

HELP = "camera input decoding (encodings, jpeg, rectification) at 1240x376 (median ms)"
WIDTH, HEIGHT = 1240, 376  # KITTI's size, made even: yuv422 packs pixel pairs
KITTI_K = np.array([[718.856, 0, 607.1928], [0, 718.856, 185.2157], [0, 0, 1]])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 3)


def _image(pixels: np.ndarray, encoding: str) -> SimpleNamespace:
    pixels = np.ascontiguousarray(pixels)
    return SimpleNamespace(height=HEIGHT, width=WIDTH, encoding=encoding, is_bigendian=0, step=pixels.strides[0],
                           data=pixels.tobytes())


def input_messages() -> dict:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.dstack([x % 256, y % 256, (x + y) % 256]).astype(np.uint8)
    bayer = rgb[:, :, 1].copy()
    bayer[0::2, 0::2], bayer[1::2, 1::2] = rgb[0::2, 0::2, 0], rgb[1::2, 1::2, 2]
    _, jpeg = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    return {
        "rgb8": _image(rgb, "rgb8"),
        "bgr8": _image(rgb[:, :, ::-1], "bgr8"),
        "bayer_rggb8": _image(bayer, "bayer_rggb8"),
        "yuv422": _image(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_UYVY), "yuv422"),
        "rgb16": _image(rgb.astype(np.uint16) * 256, "rgb16"),
        "jpeg_q95": SimpleNamespace(format="rgb8; jpeg compressed bgr8", data=jpeg.tobytes()),
    }


def camera_info() -> SimpleNamespace:
    return SimpleNamespace(width=WIDTH, height=HEIGHT, distortion_model="plumb_bob", d=[-0.3, 0.1, 0.0, 0.0, 0.0],
                           k=KITTI_K.ravel().tolist(), r=np.eye(3).ravel().tolist(),
                           p=np.hstack([KITTI_K, np.zeros((3, 1))]).ravel().tolist(), binning_x=0, binning_y=0, roi=None)


def run(args: argparse.Namespace) -> int:
    figures = {f"{name}_ms": _median_ms(lambda m=msg: image_to_rgb(m), args.repeats) for name, msg in input_messages().items()}
    start = time.perf_counter()
    rectification = camera_rectification(camera_info())
    figures["rectification_maps_ms"] = round(1000 * (time.perf_counter() - start), 3)
    figures["rectification_cached_ms"] = _median_ms(lambda: camera_rectification(camera_info()), args.repeats)
    rgb = image_to_rgb(input_messages()["rgb8"])
    figures["remap_ms"] = _median_ms(lambda: rectification.apply(rgb), args.repeats)
    result = {"width": WIDTH, "height": HEIGHT, "repeats": args.repeats, **figures}
    for key, value in figures.items():
        print(f"{key:28s} {value:8.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
