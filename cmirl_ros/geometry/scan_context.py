"""Scan Context (Kim and Kim, IROS 2018): a rotation-aware global descriptor of a 360-degree scan.

The scan is binned into a polar grid (rings of range x sectors of azimuth) around the sensor; a
cell holds the highest point's height above `floor_m` (0 = empty). Two scans are compared by the
mean cosine distance of their sector columns at the best column shift, which also estimates the
yaw between them. Used to propose loop-closure candidates from the live scan that the camera's
view cannot (a street revisited in another direction or across a junction).
"""
from __future__ import annotations

import numpy as np

RINGS, SECTORS, MAX_RANGE_M, FLOOR_M = 20, 60, 80.0, -3.0


def scan_context(points: np.ndarray, rings: int = RINGS, sectors: int = SECTORS, max_range_m: float = MAX_RANGE_M,
                 floor_m: float = FLOOR_M) -> np.ndarray:
    """(rings, sectors) float32 of (N, >=3) points in a z-up sensor frame."""
    xyz = np.asarray(points, np.float64)[:, :3]
    distance = np.hypot(xyz[:, 0], xyz[:, 1])
    keep = (distance < max_range_m) & (distance > 0)
    ring = np.minimum((distance[keep] / max_range_m * rings).astype(int), rings - 1)
    angle = np.arctan2(xyz[keep, 1], xyz[keep, 0]) + np.pi
    sector = np.minimum((angle / (2 * np.pi) * sectors).astype(int), sectors - 1)
    grid = np.zeros(rings * sectors)
    np.maximum.at(grid, ring * sectors + sector, np.maximum(xyz[keep, 2] - floor_m, 0.0))
    return grid.reshape(rings, sectors).astype(np.float32)


def ring_keys(contexts: np.ndarray) -> np.ndarray:
    """(..., rings) rotation-invariant summary: the share of occupied sectors of each ring."""
    return (np.asarray(contexts) > 0).mean(-1).astype(np.float32)


def distances(query: np.ndarray, contexts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scan Context distance (0 = same, 1 = unrelated) of `query` (R,S) to each of `contexts` (M,R,S)
    at its best column shift, and that shift as a yaw in radians (the query's sensor rotated by it
    about z is aligned with the keyframe's)."""
    sectors = query.shape[1]
    q = _unit_columns(query)  # (R, S)
    m = _unit_columns(contexts)  # (M, R, S)
    q_valid = np.linalg.norm(query, axis=0) > 0
    m_valid = np.linalg.norm(contexts, axis=1) > 0  # (M, S)
    best = np.full(len(contexts), np.inf)
    best_shift = np.zeros(len(contexts), int)
    for shift in range(sectors):
        rolled = np.roll(m, shift, axis=2)
        valid = q_valid[None] & np.roll(m_valid, shift, axis=1)
        cosine = np.einsum("rs,mrs->ms", q, rolled)
        count = np.maximum(valid.sum(1), 1)
        distance = 1.0 - (cosine * valid).sum(1) / count
        better = distance < best
        best[better], best_shift[better] = distance[better], shift
    yaw = -2 * np.pi * best_shift / sectors
    return best, np.angle(np.exp(1j * yaw))  # wrapped to (-pi, pi]


def _unit_columns(grid: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(grid, axis=-2, keepdims=True)
    return np.divide(grid, norm, out=np.zeros_like(grid, dtype=np.float64), where=norm > 0)
