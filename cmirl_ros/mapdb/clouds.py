"""Keyframe point clouds of a map: each keyframe's scan, voxel-downsampled, for geometric verification.

Stored in the map directory beside the descriptors (checksummed in `manifest.json` like them):
- `clouds.npy`: (P, 3) int16, every keyframe's points concatenated, in that keyframe's range-sensor
  frame, in units of `scale_m` (1 cm: +-327 m of range at a fixed 5 mm rounding error, 6 bytes a
  point, half of float32 and finer than float16 beyond 16 m).
- `cloud_offsets.npy`: (N+1,) int64; keyframe i owns rows offsets[i]:offsets[i+1].
- `cloud_T_cam_sensor.npy`: (N, 4, 4) float64, the keyframe's sensor pose in its camera, so a
  cloud is placed in the map frame by T_map_cam (keyframes.csv, map frame) @ T_cam_sensor.
The manifest's `clouds` entry records the voxel size, the scale and the point count.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmirl_ros.geometry.clouds import transform_points, voxel_downsample

CLOUDS = "clouds.npy"
CLOUD_OFFSETS = "cloud_offsets.npy"
CLOUD_T_CAM_SENSOR = "cloud_T_cam_sensor.npy"
CLOUD_FILES = (CLOUDS, CLOUD_OFFSETS, CLOUD_T_CAM_SENSOR)
SCALE_M = 0.01
DEFAULT_VOXEL_M = 1.0  # chosen by measurement, see docs/mapdb.md ("Keyframe clouds")


@dataclass
class KeyframeClouds:
    points: np.ndarray  # (P, 3) int16, units of scale_m, sensor frame of each keyframe
    offsets: np.ndarray  # (N+1,) int64
    T_cam_sensor: np.ndarray  # (N, 4, 4) float64
    voxel_m: float
    scale_m: float = SCALE_M

    def __post_init__(self):
        n = len(self.T_cam_sensor)
        if self.offsets.shape != (n + 1,) or self.offsets[0] != 0 or self.offsets[-1] != len(self.points):
            raise ValueError(f"cloud offsets {self.offsets.shape} do not cover {len(self.points)} points of {n} keyframes")
        if np.any(np.diff(self.offsets) < 0):
            raise ValueError("cloud offsets must not decrease")

    def __len__(self) -> int:
        return len(self.T_cam_sensor)

    @property
    def nbytes(self) -> int:
        return int(self.points.nbytes + self.offsets.nbytes + self.T_cam_sensor.nbytes)

    def cloud(self, i: int) -> np.ndarray:
        """(n, 3) float32 points of keyframe i in its sensor frame."""
        return self.points[self.offsets[i] : self.offsets[i + 1]].astype(np.float32) * np.float32(self.scale_m)

    def in_map_frame(self, i: int, T_map_cam: np.ndarray) -> np.ndarray:
        """Keyframe i's points in the map frame, from its camera pose there (`Keyframes.pose(i)`)."""
        return transform_points(np.asarray(T_map_cam) @ self.T_cam_sensor[i], self.cloud(i))

    @classmethod
    def from_scans(cls, scans, T_cam_sensor, voxel_m: float) -> "KeyframeClouds":
        """Downsample each (n, >=3) scan (sensor frame) with `voxel_m`; one T_cam_sensor (4,4) per scan."""
        clouds = [quantize(voxel_downsample(scan, voxel_m)) for scan in scans]
        offsets = np.concatenate([[0], np.cumsum([len(c) for c in clouds])]).astype(np.int64)
        points = np.concatenate(clouds) if clouds else np.zeros((0, 3), np.int16)
        return cls(points, offsets, np.asarray(T_cam_sensor, np.float64).reshape(-1, 4, 4), voxel_m)

    @staticmethod
    def concatenate(parts: list["KeyframeClouds"]) -> "KeyframeClouds":
        if len({(p.voxel_m, p.scale_m) for p in parts}) > 1:
            raise ValueError(f"cannot merge clouds with voxel sizes {[p.voxel_m for p in parts]}")
        starts = np.cumsum([0] + [len(p.points) for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, starts)]).astype(np.int64)
        return KeyframeClouds(np.concatenate([p.points for p in parts]), offsets,
                              np.concatenate([p.T_cam_sensor for p in parts]), parts[0].voxel_m, parts[0].scale_m)

    def save(self, directory: Path) -> dict:
        """Write the three files; returns the manifest's `clouds` entry."""
        np.save(directory / CLOUDS, np.ascontiguousarray(self.points, dtype=np.int16))
        np.save(directory / CLOUD_OFFSETS, np.ascontiguousarray(self.offsets, dtype=np.int64))
        np.save(directory / CLOUD_T_CAM_SENSOR, np.ascontiguousarray(self.T_cam_sensor, dtype=np.float64))
        return {"voxel_m": self.voxel_m, "scale_m": self.scale_m, "dtype": "int16", "points": int(len(self.points)),
                "frame": "each keyframe's range-sensor frame; map frame = T_map_cam @ T_cam_sensor"}

    @classmethod
    def load(cls, directory: Path, entry: dict, count: int) -> "KeyframeClouds":
        points = _read(directory / CLOUDS, np.int16, lambda a: a.ndim == 2 and a.shape[1] == 3, "(P, 3)")
        offsets = _read(directory / CLOUD_OFFSETS, np.int64, lambda a: a.shape == (count + 1,), f"({count + 1},)")
        poses = _read(directory / CLOUD_T_CAM_SENSOR, np.float64, lambda a: a.shape == (count, 4, 4), f"({count}, 4, 4)")
        try:
            return cls(points, offsets, poses, float(entry["voxel_m"]), float(entry.get("scale_m", SCALE_M)))
        except (KeyError, ValueError) as e:
            raise ValueError(f"{directory / CLOUD_OFFSETS}: inconsistent keyframe clouds ({e})") from None


def quantize(points_m: np.ndarray, scale_m: float = SCALE_M) -> np.ndarray:
    limit = np.iinfo(np.int16).max * scale_m
    kept = points_m[(np.abs(points_m) < limit).all(1)]
    return np.round(kept / scale_m).astype(np.int16)


def _read(path: Path, dtype, shape_ok, expected: str) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path}: corrupted array ({e})") from None
    if array.dtype != dtype or not shape_ok(array):
        raise ValueError(f"{path}: expected {np.dtype(dtype).name} {expected}, found {array.dtype} {array.shape}")
    return array
