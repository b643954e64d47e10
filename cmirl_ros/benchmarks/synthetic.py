"""Synthetic map descriptors shared by the map search and end-to-end benchmarks."""
from __future__ import annotations

import numpy as np


def trajectory_descriptors(entries: int, dim: int, route_length: int, step: float, seed: int) -> np.ndarray:
    """(N, D) float32 unit vectors; row r*L + t is keyframe t of route r."""
    rng = np.random.default_rng(seed)
    routes = -(-entries // route_length)
    out = np.empty((routes, route_length, dim), dtype=np.float32)
    x = normalize(rng.standard_normal((routes, dim), dtype=np.float32))
    for t in range(route_length):
        out[:, t] = x
        x = normalize(x + step / np.sqrt(dim) * rng.standard_normal((routes, dim), dtype=np.float32))
    return out.reshape(-1, dim)[:entries]


def normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
