"""RGB-D sequences in the Microsoft 7-Scenes layout:
frame-NNNNNN.{color.jpg, depth.png (uint16 mm; 0 and 65535 = no reading), pose.txt (4x4 camera-to-world)}
and optionally camera-intrinsics.txt (else the 7-Scenes Kinect defaults fx=fy=585, cx=320, cy=240).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from cmirl_ros.datasets.base import DATASETS, Dataset, Frame, select_frames
from cmirl_ros.datasets.kitti import read_rgb
from cmirl_ros.geometry import Calibration, PinholeCamera
from cmirl_ros.geometry.frames import as_given

FRAME_RATE_HZ = 30.0  # 7-Scenes is recorded at 30 Hz and ships no timestamps
INVALID_DEPTH = 65535
_FRAME_RE = re.compile(r"frame-(\d+)\.pose\.txt$")


def read_pose(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pose file not found")
    try:
        T = np.loadtxt(path, dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: not a 4x4 pose ({e})") from None
    if T.shape != (4, 4):
        raise ValueError(f"{path}: expected a 4x4 matrix, got shape {T.shape}")
    return T


def read_depth_mm(path: Path) -> np.ndarray:
    """(H,W) float32 metres, 0 where the sensor gave no reading."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: depth image not found")
    with Image.open(path) as img:
        raw = np.asarray(img)
    if raw.dtype != np.uint16:
        raise ValueError(f"{path}: expected a 16-bit depth PNG in millimetres, got {raw.dtype}")
    depth = raw.astype(np.float32) * 1e-3
    depth[raw == INVALID_DEPTH] = 0.0
    return depth


def read_intrinsics(root: Path, size: tuple[int, int]) -> PinholeCamera:
    path = root / "camera-intrinsics.txt"
    if not path.is_file():
        return PinholeCamera.from_params(585.0, 585.0, 320.0, 240.0, *size)
    K = np.loadtxt(path)
    if K.shape != (3, 3):
        raise ValueError(f"{path}: expected a 3x3 camera matrix, got shape {K.shape}")
    return PinholeCamera(K, *size)


@DATASETS.register("rgbd")
class RGBDSequence(Dataset):
    """The depth image becomes the 'scan': a point cloud in the depth camera frame.

    7-Scenes colour and depth cameras are not registered; we treat them as one camera
    (a few pixels of offset, see the data README), so T_cam_sensor is the identity.
    """

    ground_axes = None
    frame_convention = as_given("rgbd: the sequence's own world (pose.txt camera-to-world), stored as given")

    def __init__(self, root: Path, seq: str | None = None, frames: slice = slice(None)):
        self.root = Path(root) / f"seq-{seq}" if seq else Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: RGB-D sequence directory not found")
        numbers = sorted(int(m.group(1)) for p in self.root.iterdir() if (m := _FRAME_RE.search(p.name)))
        if not numbers:
            raise FileNotFoundError(f"{self.root}: no frame-NNNNNN.pose.txt files (7-Scenes layout expected)")
        self.name = f"rgbd-{self.root.name}"
        self.frame_ids = select_frames(numbers, frames)
        self.stamps = np.array(self.frame_ids, dtype=np.float64) / FRAME_RATE_HZ
        self.poses = np.stack([read_pose(self._path(f, "pose.txt")) for f in self.frame_ids]) if self.frame_ids else np.zeros((0, 4, 4))
        with Image.open(self._path(numbers[0], "color.jpg")) as img:
            size = img.size
        self.calib = Calibration(read_intrinsics(self.root, size), np.eye(4))

    def _path(self, frame_id: int, suffix: str) -> Path:
        return self.root / f"frame-{frame_id:06d}.{suffix}"

    def __getitem__(self, i: int) -> Frame:
        fid = self.frame_ids[i]
        depth = read_depth_mm(self._path(fid, "depth.png"))
        xyz = self.calib.camera.backproject(depth).astype(np.float32)
        points = np.concatenate([xyz, np.zeros((len(xyz), 1), np.float32)], axis=1)
        image = read_rgb(self._path(fid, "color.jpg"))
        return Frame(fid, float(self.stamps[i]), image, points, self.poses[i], self.calib, f"frame-{fid:06d}")
