"""Classical (non-learned) depth completion in the style of IP-Basic (Ku et al., CRV 2018).

Depth is inverted (far -> small) so that grey dilation spreads the *nearest* surface,
which keeps foreground objects from being swallowed by the background behind them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class DensifyConfig:
    max_depth: float = 100.0
    dilation_kernel: int = 5  # diamond kernel: first spread of each LiDAR return
    close_kernel: int = 5  # closes the gaps between scan lines
    small_hole_kernel: int = 7
    large_hole_kernel: int = 31
    extend_to_top: bool = True  # above the highest return (sky) copy the top value, as IP-Basic does
    median_blur: int = 5
    gaussian_blur: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def _diamond(size: int) -> np.ndarray:
    r = size // 2
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return (np.abs(x) + np.abs(y) <= r).astype(np.uint8)


def _fill_empty(inv: np.ndarray, kernel_size: int) -> None:
    grown = cv2.dilate(inv, np.ones((kernel_size, kernel_size), np.uint8))
    empty = inv <= 0
    inv[empty] = grown[empty]


def _extend_columns_to_top(inv: np.ndarray) -> None:
    valid = inv > 0
    has_value = valid.any(axis=0)
    top_row = np.argmax(valid, axis=0)
    cols = np.nonzero(has_value)[0]
    top_value = inv[top_row[cols], cols]
    rows = np.arange(inv.shape[0])[:, None]
    above = (rows < top_row[None, cols])
    inv[:, cols] = np.where(above, top_value[None, :], inv[:, cols])


def densify(sparse: np.ndarray, cfg: DensifyConfig = DensifyConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Sparse (H,W) metric depth (0 = empty) -> (dense depth float32, valid mask bool)."""
    sparse = np.asarray(sparse, dtype=np.float32)
    if sparse.ndim != 2:
        raise ValueError(f"densify expects an (H,W) depth image, got shape {sparse.shape}")
    measured = (sparse > 0) & (sparse <= cfg.max_depth)
    inv = np.where(measured, cfg.max_depth + 1.0 - sparse, 0.0).astype(np.float32)
    inv = cv2.dilate(inv, _diamond(cfg.dilation_kernel))
    inv = cv2.morphologyEx(inv, cv2.MORPH_CLOSE, np.ones((cfg.close_kernel, cfg.close_kernel), np.uint8))
    _fill_empty(inv, cfg.small_hole_kernel)
    if cfg.extend_to_top:
        _extend_columns_to_top(inv)
    _fill_empty(inv, cfg.large_hole_kernel)
    if cfg.median_blur > 1:
        blurred = cv2.medianBlur(inv, cfg.median_blur)
        inv = np.where(inv > 0, blurred, inv)
    if cfg.gaussian_blur:
        blurred = cv2.GaussianBlur(inv, (5, 5), 0)
        inv = np.where(inv > 0, blurred, inv)
    valid = inv > 0
    dense = np.where(valid, cfg.max_depth + 1.0 - inv, 0.0).astype(np.float32)
    # Measured returns are kept exactly: completion only fills, never moves, real data.
    dense[measured] = sparse[measured]
    return dense, valid
