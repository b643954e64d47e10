"""Pinhole cameras, rigid transforms and the camera + range-sensor calibration bundle."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def make_transform(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def invert_transform(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (R^T, -R^T t), cheaper and exacter than np.linalg.inv."""
    R, t = T[:3, :3], T[:3, 3]
    return make_transform(R.T, -R.T @ t)


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to (N,3) points."""
    return points @ T[:3, :3].T + T[:3, 3]


def quaternion_to_matrix(q_xyzw) -> np.ndarray:
    x, y, z, w = np.asarray(q_xyzw, dtype=np.float64) / np.linalg.norm(q_xyzw)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion (x, y, z, w) with w >= 0 (Shepperd's method)."""
    m = np.asarray(R, dtype=np.float64)
    trace = np.trace(m)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0, 0.0, 0.0, (m[k, j] - m[j, k]) / s]
        q[i] = 0.25 * s
        q[j] = (m[j, i] + m[i, j]) / s
        q[k] = (m[k, i] + m[i, k]) / s
    q = np.array(q)
    return q if q[3] >= 0 else -q


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics K (3x3) of an undistorted image of `width` x `height` pixels."""

    K: np.ndarray
    width: int
    height: int

    def __post_init__(self):
        K = np.asarray(self.K, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"camera matrix must be 3x3, got {K.shape}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        object.__setattr__(self, "K", K)

    @classmethod
    def from_params(cls, fx, fy, cx, cy, width, height) -> "PinholeCamera":
        return cls(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]), int(width), int(height))

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    def cropped(self, top: int = 0, left: int = 0, height: int | None = None, width: int | None = None) -> "PinholeCamera":
        """The camera seeing the sub-image [top:top+height, left:left+width]."""
        height = self.height - top if height is None else height
        width = self.width - left if width is None else width
        if top < 0 or left < 0 or top + height > self.height or left + width > self.width or height <= 0 or width <= 0:
            raise ValueError(f"crop top={top} left={left} {width}x{height} does not fit a {self.width}x{self.height} image")
        K = self.K.copy()
        K[0, 2] -= left
        K[1, 2] -= top
        return PinholeCamera(K, width, height)

    def resized(self, width: int, height: int) -> "PinholeCamera":
        """The camera of the same view resampled to width x height (pixel-corner convention)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, 0] *= sx
        K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
        K[1, 1] *= sy
        K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
        return PinholeCamera(K, int(width), int(height))

    def project(self, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N,3) points in the camera frame -> (N,2) pixel coordinates and (N,) depths (z)."""
        z = points_cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.fx * points_cam[:, 0] / z + self.cx
            v = self.fy * points_cam[:, 1] / z + self.cy
        return np.stack([u, v], axis=1), z

    def backproject(self, depth: np.ndarray) -> np.ndarray:
        """(H,W) depth image (0 = none) -> (M,3) points in the camera frame, row-major order of valid pixels."""
        v, u = np.nonzero(depth > 0)
        z = depth[v, u].astype(np.float64)
        x = (u - self.cx) * z / self.fx
        y = (v - self.cy) * z / self.fy
        return np.stack([x, y, z], axis=1)


@dataclass(frozen=True)
class Calibration:
    """The query camera and the transform from the range sensor (LiDAR or depth camera) into it."""

    camera: PinholeCamera
    T_cam_sensor: np.ndarray

    def __post_init__(self):
        T = np.asarray(self.T_cam_sensor, dtype=np.float64)
        if T.shape != (4, 4):
            raise ValueError(f"T_cam_sensor must be 4x4, got {T.shape}")
        object.__setattr__(self, "T_cam_sensor", T)
