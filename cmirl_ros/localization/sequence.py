"""Sequence verification of image-only matches, in the spirit of SeqSLAM.

A single image match is often a look-alike; a run of matches that moves through the map as the
query moves through the world rarely is. A query's match is confirmed only when the matches of the
last `length` queries agree with the motion between those queries, step by step:
- with odometry positions (any frame: only distances are compared), the distance between two
  consecutive matched keyframes must equal the distance travelled between the two queries within
  `tolerance_m`, so must the distance between the window's first and last matches, and the window
  must cover at least `min_travel_m` of travel (a standing vehicle
  repeating one match proves nothing);
- with stamps only, consecutive matched keyframes may be at most `max_speed` * dt + `tolerance_m`
  apart (a plausibility bound).
A query without a match, or a pause longer than `max_gap_s`, starts a new sequence.

`SequenceVerifier` is pure state + arithmetic (no ROS, no model). How a verify stage wraps it: keep
one verifier per query stream, call `update(stamp, position of the top candidate's keyframe,
odometry position or None)` for every query in stamp order, and drop all candidates (no match)
when it returns False. `verify_sequence` does the same for a whole recorded sequence.
"""
from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

from cmirl_ros.config import dataclass_from_mapping


@dataclass
class SequenceConfig:
    length: int = 3  # N: the last N queries' matches must agree (1 = no check)
    tolerance_m: float = 5.0  # per step: |keyframe distance - travelled distance| (odometry) or slack (stamps)
    max_speed: float = 30.0  # m/s, stamps only: how far apart consecutive matches may be per second
    max_gap_s: float = 5.0  # a longer pause between queries starts a new sequence
    min_travel_m: float = 0.0  # with odometry: the window must cover at least this much travel

    def __post_init__(self):
        if self.length < 1:
            raise ValueError(f"sequence length must be >= 1, got {self.length}")
        for name in ("tolerance_m", "max_speed", "max_gap_s", "min_travel_m"):
            if getattr(self, name) < 0:
                raise ValueError(f"sequence {name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, data: dict) -> "SequenceConfig":
        return dataclass_from_mapping(cls, data, "sequence")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Step:
    stamp: float
    match: np.ndarray  # matched keyframe position (ground axes)
    odometry: np.ndarray | None  # query position from odometry (ground axes), when given


class SequenceVerifier:
    """Online: feed every query's top match in stamp order; `update` says whether it is confirmed.
    `axes`: the dataset's ground axes (KITTI (0, 2)); None compares all three coordinates."""

    def __init__(self, config: SequenceConfig | None = None, axes: tuple[int, ...] | None = None):
        self.config = config or SequenceConfig()
        self.axes = list(axes) if axes is not None else [0, 1, 2]
        self._window: deque[_Step] = deque(maxlen=self.config.length)

    def reset(self) -> None:
        self._window.clear()

    def update(self, stamp: float, match_position: np.ndarray | None,
               odometry_position: np.ndarray | None = None) -> bool:
        """Add one query (its stamp, its top match's keyframe position or None for no match, its
        odometry position or None) and return True when its match is confirmed."""
        if match_position is None:
            self.reset()
            return False
        if self._window and stamp - self._window[-1].stamp > self.config.max_gap_s:
            self.reset()
        odometry = None if odometry_position is None else np.asarray(odometry_position, np.float64)[self.axes]
        step = _Step(float(stamp), np.asarray(match_position, np.float64)[self.axes], odometry)
        if self._window and not self._agrees(self._window[-1], step):
            self.reset()  # the new match may still start a consistent run
        self._window.append(step)
        return len(self._window) == self.config.length and self._travelled_enough() and self._spans_agree()

    def _agrees(self, previous: _Step, step: _Step) -> bool:
        jump = float(np.linalg.norm(step.match - previous.match))
        if step.odometry is not None and previous.odometry is not None:
            travelled = float(np.linalg.norm(step.odometry - previous.odometry))
            return abs(jump - travelled) <= self.config.tolerance_m
        return jump <= self.config.max_speed * max(step.stamp - previous.stamp, 0.0) + self.config.tolerance_m

    def _spans_agree(self) -> bool:
        """With odometry, the window end to end as well: a match stuck on one keyframe passes each
        short step within the tolerance, but not the whole window's travel."""
        first, last = self._window[0], self._window[-1]
        if first is last or first.odometry is None or last.odometry is None:
            return True
        return self._agrees(first, last)

    def _travelled_enough(self) -> bool:
        steps = list(self._window)
        if self.config.min_travel_m <= 0 or any(s.odometry is None for s in steps):
            return True
        travelled = sum(float(np.linalg.norm(b.odometry - a.odometry)) for a, b in zip(steps, steps[1:]))
        return travelled >= self.config.min_travel_m


def verify_sequence(stamps: np.ndarray, match_positions: np.ndarray, has_match: np.ndarray,
                    odometry_positions: np.ndarray | None = None, config: SequenceConfig | None = None,
                    axes: tuple[int, ...] | None = None) -> np.ndarray:
    """(Q,) bool: which of Q queries (in stamp order) have their match confirmed.
    `match_positions` (Q, 3), rows where `has_match` is False are ignored; `odometry_positions` (Q, 3) or None."""
    verifier = SequenceVerifier(config, axes)
    stamps = np.asarray(stamps, np.float64)
    if np.any(np.diff(stamps) < 0):
        raise ValueError("sequence verification needs the queries in stamp order")
    return np.array([
        verifier.update(stamps[i], match_positions[i] if has_match[i] else None,
                        None if odometry_positions is None else odometry_positions[i])
        for i in range(len(stamps))
    ], dtype=bool)

