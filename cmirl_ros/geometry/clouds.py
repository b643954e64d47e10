"""Point-cloud helpers shared by the map's keyframe clouds and the query side of registration."""
from __future__ import annotations

import numpy as np


def voxel_downsample(points: np.ndarray, voxel_m: float) -> np.ndarray:
    """(N,>=3) points -> (M,3) float32 centroids of the occupied voxels (edge `voxel_m`), in a
    deterministic order (sorted voxel keys), so the map and the query are reduced the same way."""
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    xyz = xyz[np.isfinite(xyz).all(1)]
    if voxel_m <= 0:
        raise ValueError(f"voxel size must be > 0, got {voxel_m}")
    if len(xyz) == 0:
        return np.zeros((0, 3), np.float32)
    cells = np.floor(xyz / voxel_m).astype(np.int64)
    cells -= cells.min(0)
    extent = cells.max(0) + 1
    keys = (cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2]
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    sums = np.stack([np.bincount(inverse, weights=xyz[:, axis], minlength=len(counts)) for axis in range(3)], 1)
    return (sums / counts[:, None]).astype(np.float32)


def transform_points(T_a_b: np.ndarray, points_b: np.ndarray) -> np.ndarray:
    """(N,3) points in frame b -> frame a."""
    T_a_b = np.asarray(T_a_b, dtype=np.float64)
    return (np.asarray(points_b, dtype=np.float64) @ T_a_b[:3, :3].T + T_a_b[:3, 3]).astype(np.float32)
