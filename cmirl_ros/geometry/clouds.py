"""Point-cloud helpers shared by the map's keyframe clouds and the query side of registration."""
from __future__ import annotations

import numpy as np


def voxel_downsample(points: np.ndarray, voxel_m: float) -> np.ndarray:
    """(N,>=3) points -> (M,3) float32 centroids of the occupied voxels (edge `voxel_m`); the map's
    keyframe clouds and the query scan go through this same function (small_gicp's voxel grid)."""
    import small_gicp

    if voxel_m <= 0:
        raise ValueError(f"voxel size must be > 0, got {voxel_m}")
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    xyz = np.ascontiguousarray(xyz[np.isfinite(xyz).all(1)])
    if len(xyz) == 0:
        return np.zeros((0, 3), np.float32)
    return small_gicp.voxelgrid_sampling(xyz, voxel_m, num_threads=1).points()[:, :3].astype(np.float32)


def transform_points(T_a_b: np.ndarray, points_b: np.ndarray) -> np.ndarray:
    """(N,3) points in frame b -> frame a."""
    T_a_b = np.asarray(T_a_b, dtype=np.float64)
    return (np.asarray(points_b, dtype=np.float64) @ T_a_b[:3, :3].T + T_a_b[:3, 3]).astype(np.float32)
