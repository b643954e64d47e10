"""Scan Context (after Kim and Kim, IROS 2018): a rotation-aware global descriptor of a 360-degree scan.

The scan is binned into a polar grid (rings of range x sectors of azimuth) around a viewpoint; a
cell holds the vertical extent of its points (highest minus lowest, plus `MIN_EXTENT_M` so that a
cell of flat ground still counts as occupied). The paper's cell value, the highest point's height,
shifts with the sensor's height above the scene; the extent does not, which matters where the two
passes of a revisit drive at heights metres apart. Two scans are compared by the mean cosine
similarity of their sector columns at the best column shift, which also estimates the yaw between
them; every shift at once, as a circular cross-correlation along the sectors (FFT).

The polar grid loses a place seen from a few metres aside (the other lane, the next keyframe), so
a map keyframe is described from several virtual viewpoints around its sensor
(`VIEWPOINT_OFFSETS_M`, the keyframe cloud re-centred on each): the best viewpoint also gives the
query's position in the keyframe's frame. Used to propose loop-closure candidates from the live
scan that the camera's view cannot (a street revisited in another direction or across a junction).
"""
from __future__ import annotations

import numpy as np

RINGS, SECTORS, MAX_RANGE_M = 20, 60, 80.0
MIN_EXTENT_M = 0.1
# Virtual viewpoints (x, y metres in the sensor frame): a 3 x 3 grid 6 m apart reaches revisits
# up to ~10 m from a keyframe (keyframe spacing, other lane) within ~4 m of a viewpoint.
VIEWPOINT_OFFSETS_M = tuple((dx, dy) for dx in (-6.0, 0.0, 6.0) for dy in (-6.0, 0.0, 6.0))


def scan_context(points: np.ndarray, rings: int = RINGS, sectors: int = SECTORS, max_range_m: float = MAX_RANGE_M,
                 viewpoint_m: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(rings, sectors) float32 of (N, >=3) points in a z-up sensor frame, seen from `viewpoint_m`
    (x, y in that frame; the axes stay the sensor's)."""
    xyz = np.asarray(points, np.float64)[:, :3] - (viewpoint_m[0], viewpoint_m[1], 0.0)
    distance = np.hypot(xyz[:, 0], xyz[:, 1])
    keep = (distance < max_range_m) & (distance > 0)
    ring = np.minimum((distance[keep] / max_range_m * rings).astype(int), rings - 1)
    angle = np.arctan2(xyz[keep, 1], xyz[keep, 0]) + np.pi
    sector = np.minimum((angle / (2 * np.pi) * sectors).astype(int), sectors - 1)
    cell = ring * sectors + sector
    highest, lowest = np.full(rings * sectors, -np.inf), np.full(rings * sectors, np.inf)
    np.maximum.at(highest, cell, xyz[keep, 2])
    np.minimum.at(lowest, cell, xyz[keep, 2])
    occupied = np.isfinite(highest)
    grid = np.zeros(rings * sectors)
    grid[occupied] = highest[occupied] - lowest[occupied] + MIN_EXTENT_M
    return grid.reshape(rings, sectors).astype(np.float32)


def viewpoint_contexts(points: np.ndarray, offsets_m=VIEWPOINT_OFFSETS_M) -> np.ndarray:
    """(V, rings, sectors): the scan's context from each virtual viewpoint in `offsets_m`."""
    return np.stack([scan_context(points, viewpoint_m=offset) for offset in offsets_m])


class ContextSpectra:
    """Contexts (M, R, S) prepared for comparison: the FFT along sectors of their unit columns and of
    their column occupancy."""

    def __init__(self, contexts: np.ndarray):
        contexts = np.asarray(contexts, np.float64)
        self.sectors = contexts.shape[-1]
        self.columns = np.fft.rfft(_unit_columns(contexts), axis=-1).astype(np.complex64)  # (M, R, F)
        self.occupied = np.fft.rfft(np.linalg.norm(contexts, axis=-2) > 0, axis=-1).astype(np.complex64)  # (M, F)

    def __len__(self) -> int:
        return len(self.columns)

    def distances(self, query: np.ndarray, rows=slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Scan Context distance (0 = same, 1 = unrelated) of the `query` context (R, S) to the
        contexts at `rows`, at the best column shift, and that shift as a yaw in radians (the query's
        sensor rotated by it about z is aligned with the context's)."""
        query = ContextSpectra(np.asarray(query)[None])
        # correlation[k] = sum over rings and sectors s of q[s] * m[s - k]: FFT(q) * conj(FFT(m))
        cosine = np.fft.irfft(np.einsum("rf,mrf->mf", query.columns[0], np.conj(self.columns[rows])), self.sectors)
        both = np.fft.irfft(query.occupied[0] * np.conj(self.occupied[rows]), self.sectors)
        distance = 1.0 - cosine / np.maximum(np.rint(both), 1.0)
        best_shift = np.argmin(distance, axis=1)
        yaw = -2 * np.pi * best_shift / self.sectors
        return distance[np.arange(len(distance)), best_shift], np.angle(np.exp(1j * yaw))  # wrapped to (-pi, pi]


def distances(query: np.ndarray, contexts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`ContextSpectra(contexts).distances(query)`: distance of `query` (R, S) to each of `contexts`
    (M, R, S) at its best column shift, and that shift as a yaw in radians."""
    return ContextSpectra(contexts).distances(query)


def _unit_columns(grid: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(grid, axis=-2, keepdims=True)
    return np.divide(grid, norm, out=np.zeros_like(grid, dtype=np.float64), where=norm > 0)
