"""KITTI odometry layout (real or simulated):
ROOT/sequences/XX/{image_2/NNNNNN.png, velodyne/NNNNNN.bin, calib.txt, times.txt} + ROOT/poses/XX.txt.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cmirl_ros.datasets.base import DATASETS, Dataset, Frame, select_frames
from cmirl_ros.geometry import KITTI_GROUND_AXES, read_kitti_calib, read_kitti_poses, read_times
from cmirl_ros.geometry.frames import KITTI_CAMERA0
from cmirl_ros.geometry.kitti_calib import KITTI_IMAGE_SIZE


def read_velodyne(path: Path) -> np.ndarray:
    """(N,4) float32 x, y, z, reflectance from a KITTI .bin scan."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: scan not found")
    size = path.stat().st_size
    if size == 0 or size % 16:
        raise ValueError(f"{path}: {size} bytes is not a whole number of 16-byte points (x, y, z, intensity float32)")
    return np.fromfile(path, dtype=np.float32).reshape(-1, 4)


def read_rgb(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image not found")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except OSError as e:
        raise ValueError(f"{path}: unreadable image ({e})") from None


@DATASETS.register("kitti")
class KittiSequence(Dataset):
    ground_axes = KITTI_GROUND_AXES
    frame_convention = KITTI_CAMERA0  # poses in the y-down camera-0 world; maps store them z-up

    def __init__(self, root: Path, seq: str | None = None, frames: slice = slice(None)):
        if seq is None:
            raise ValueError("the kitti dataset needs --seq (for example --seq 00)")
        self.root = Path(root)
        self.seq_dir = self.root / "sequences" / seq
        if not self.seq_dir.is_dir():
            raise FileNotFoundError(f"{self.seq_dir}: sequence directory not found (expected ROOT/sequences/{seq})")
        self.name = f"kitti-{seq}"
        self.image_dir = self.seq_dir / "image_2"
        self.scan_dir = self.seq_dir / "velodyne"
        self.kitti_calib = read_kitti_calib(self.seq_dir / "calib.txt", self._image_size())
        self.calib = self.kitti_calib.calibration()
        all_stamps = read_times(self.seq_dir / "times.txt")
        poses_cam0 = read_kitti_poses(self.root / "poses" / f"{seq}.txt")
        if len(poses_cam0) != len(all_stamps):
            raise ValueError(
                f"{self.root / 'poses' / f'{seq}.txt'}: {len(poses_cam0)} poses but "
                f"{len(all_stamps)} stamps in {self.seq_dir / 'times.txt'}"
            )
        self.frame_ids = select_frames(list(range(len(all_stamps))), frames)
        self.stamps = all_stamps[self.frame_ids]
        # Ground truth is camera 0; the papers' query camera is the colour camera 2.
        self.poses = poses_cam0[self.frame_ids] @ self.kitti_calib.T_cam0_cam2

    def _image_size(self) -> tuple[int, int]:
        first = next(iter(sorted(self.image_dir.glob("*.png"))), None) if self.image_dir.is_dir() else None
        if first is None:
            return KITTI_IMAGE_SIZE
        with Image.open(first) as img:
            return img.size

    def __getitem__(self, i: int) -> Frame:
        fid = self.frame_ids[i]
        stem = f"{fid:06d}"
        image = read_rgb(self.image_dir / f"{stem}.png") if self.image_dir.is_dir() else None
        points = read_velodyne(self.scan_dir / f"{stem}.bin") if self.scan_dir.is_dir() else None
        return Frame(fid, float(self.stamps[i]), image, points, self.poses[i], self.calib, stem)
