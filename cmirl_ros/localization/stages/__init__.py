"""The query path as stages: retrieve -> rerank -> verify -> pose, one module each, behind one registry.

Every stage is a callable `stage(candidates, query) -> Candidates` made by a factory registered as
`@register_stage(kind, name)`; the factory gets the `LocalizerConfig` and the map. The localizer
composes one stage of each kind in `KINDS` order, by the names in its config (`verify: registration`
picks `verify:registration`); the name `none` skips a kind. Every module in this package is imported
when the registry is first used, so a new stage is one new file here and nothing else.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from cmirl_ros.registry import Registry

KINDS = ("retrieve", "rerank", "verify", "pose")
STAGES: Registry = Registry("stage")
_discovered = False


@dataclass
class QueryInput:
    """What the stages know about one query."""

    descriptor: np.ndarray  # (D,) float32
    stamp: float = 0.0
    tokens: np.ndarray | None = None  # (T, C) local tokens, for the cross_attention reranker
    points: np.ndarray | None = None  # (N, >=3) live scan in the query's range-sensor frame
    calib: object | None = None  # Calibration of the query (T_cam_sensor links its scan to its camera)


@dataclass
class Candidates:
    """Map keyframes still in the running, best first, with what each stage found out about them.

    `extras` holds per-candidate arrays (first axis = candidate), e.g. `verified` (K,) bool,
    `fitness` (K,), `rmse_m` (K,), `T_keyframe_query` (K,4,4), `information` (K,6,6),
    `T_world_query` (K,4,4). `covariance` (6,6) belongs to the first candidate (the pose stage sets it).
    """

    ids: np.ndarray  # (K,) int64 keyframe ids
    scores: np.ndarray  # (K,) float32 similarity
    T_world_cam: np.ndarray  # (K,4,4) keyframe camera poses, map frame
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    covariance: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows) -> "Candidates":
        """The candidates at `rows` (indices or a mask), in that order, extras included."""
        rows = np.asarray(rows)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        return Candidates(self.ids[rows], self.scores[rows], self.T_world_cam[rows],
                          {key: value[rows] for key, value in self.extras.items()}, None)

    def with_extras(self, **arrays: np.ndarray) -> "Candidates":
        for key, value in arrays.items():
            if len(value) != len(self):
                raise ValueError(f"extra '{key}' has {len(value)} rows for {len(self)} candidates")
        return replace(self, extras={**self.extras, **arrays})


Stage = Callable[[Candidates, QueryInput], Candidates]


def register_stage(kind: str, name: str):
    """Decorator for a stage factory `factory(config, mapdb) -> Stage`."""
    if kind not in KINDS:
        raise ValueError(f"unknown stage kind '{kind}'; choose one of: {', '.join(KINDS)}")
    return STAGES.register(f"{kind}:{name}")


def stage_names(kind: str) -> list[str]:
    _discover()
    return ["none"] + [n.split(":", 1)[1] for n in STAGES.names() if n.startswith(f"{kind}:")]


def make_stage(kind: str, name: str, config, mapdb) -> "Stage | None":
    """The stage `kind:name` for this config and map; None for `none`."""
    if name == "none":
        return None
    _discover()
    if f"{kind}:{name}" not in STAGES:
        raise ValueError(f"unknown {kind} stage '{name}'; choose one of: {', '.join(stage_names(kind))}")
    return STAGES.get(f"{kind}:{name}")(config, mapdb)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
