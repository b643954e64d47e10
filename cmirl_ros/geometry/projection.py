"""FoV projection: a point cloud in the range-sensor frame -> a sparse depth image of a camera."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmirl_ros.geometry.camera import PinholeCamera

MIN_DEPTH = 0.1  # metres; returns closer than this are the sensor's own body or noise


@dataclass
class ProjectionStats:
    """What happened to the input points (a caller can log or count the dropped ones)."""

    total: int = 0
    nan_dropped: int = 0
    behind: int = 0
    outside: int = 0
    kept: int = 0


def validate_points(points: np.ndarray, source: str = "point cloud") -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] not in (3, 4):
        raise ValueError(f"{source}: expected an (N,3) or (N,4) array, got shape {points.shape}")
    if points.shape[0] == 0:
        raise ValueError(f"{source}: empty point cloud")
    return points


def project_to_depth(
    points: np.ndarray,
    T_cam_sensor: np.ndarray,
    camera: PinholeCamera,
    stats: ProjectionStats | None = None,
) -> np.ndarray:
    """Sparse (H,W) float32 depth in metres (0 = no return); the nearest point wins each pixel.

    Points behind the camera, outside the image and with NaN coordinates are dropped
    (counted in `stats` when given).
    """
    points = validate_points(points)
    xyz = np.asarray(points[:, :3], dtype=np.float32)
    # float32 throughout: 120k points per scan, and millimetre precision is plenty. The 3x3
    # transform is written out per axis: a BLAS matmul would wake a thread pool for (N,3)@(3,3),
    # which costs more than the arithmetic when cores are shared.
    R = T_cam_sensor[:3, :3].astype(np.float32)
    t = T_cam_sensor[:3, 3].astype(np.float32)
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    z_cam = R[2, 0] * x + R[2, 1] * y + R[2, 2] * z + t[2]
    with np.errstate(invalid="ignore"):
        in_front = z_cam > MIN_DEPTH  # False for NaN, so NaN points never reach the image
    x, y, z, z_cam = x[in_front], y[in_front], z[in_front], z_cam[in_front]
    x_cam = R[0, 0] * x + R[0, 1] * y + R[0, 2] * z + t[0]
    y_cam = R[1, 0] * x + R[1, 1] * y + R[1, 2] * z + t[1]
    K = camera.K.astype(np.float32)
    with np.errstate(invalid="ignore"):
        u = np.floor(K[0, 0] * x_cam / z_cam + K[0, 2] + 0.5)
        v = np.floor(K[1, 1] * y_cam / z_cam + K[1, 2] + 0.5)
        inside = (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)
    pixel = v[inside].astype(np.int64) * camera.width + u[inside].astype(np.int64)
    depth = np.full(camera.width * camera.height, np.inf, dtype=np.float32)
    np.minimum.at(depth, pixel, z_cam[inside])
    depth[np.isinf(depth)] = 0.0
    if stats is not None:
        nan = ~np.isfinite(xyz.sum(axis=1))
        stats.total += len(points)
        stats.nan_dropped += int(nan.sum())
        stats.behind += int((~in_front).sum() - nan.sum())
        stats.outside += int((~inside).sum())
        stats.kept += int(inside.sum())
    return depth.reshape(camera.height, camera.width)
