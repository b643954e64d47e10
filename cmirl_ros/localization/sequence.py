"""Sequence verification of image-only matches, in the spirit of SeqSLAM.

A single image match is often a look-alike; a run of matches that moves through the map as the
query moves through the world rarely is. A query's match is confirmed only when the matches of the
last `length` queries agree with the motion between those queries.

With stamps only, `SequenceVerifier` checks each query's top-1: consecutive matched keyframes may
be at most `max_speed` * dt + `tolerance_m` apart (a plausibility bound). A query without a match,
or a pause longer than `max_gap_s`, starts a new sequence.

With odometry *poses* (position and heading), `PathVerifier` checks more than distances, and looks
beyond the top-1: each of the query's top `candidates` keyframes is a hypothesis "the query stands
at this keyframe"; it places the odometry's relative motion of the last `length` queries in the
map from there (T_kf @ inv(T_odom_now) @ T_odom_then), and each earlier query must have one of its
own top candidates within `tolerance_m` of its predicted position and `tolerance_deg` of its
predicted heading. The hypothesis's path score is the mean descriptor score along that path (the
best supporting candidate of each query); the best consistent hypothesis is the match, accepted
when its path score reaches `min_score` and the window covers `min_travel_m`. A wrong place must
then repeat the query's whole turn-by-turn motion among the look-alikes of every step, not only
their spacing. A straight stretch fits every parallel look-alike street: `min_turn_deg` asks the
window to contain a turn, and `unique_m` rejects a window that two places far apart both explain.

`SequenceVerifier` and `PathVerifier` are pure state + arithmetic (no ROS, no model).
`QueryStreamVerifier` is the one way to use them, online (the node: one per query stream, fed every
query in stamp order; no confirmed candidate, no match) and offline (`verify_ranked`, a whole
recorded sequence): stamps only -> `SequenceVerifier`, odometry poses -> `PathVerifier`.
"""
from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

from cmirl_ros.config import dataclass_from_mapping


@dataclass
class SequenceConfig:
    length: int = 3  # N: the last N queries' matches must agree (1 = no check)
    tolerance_m: float = 5.0  # slack per step (stamps) / support radius around the predicted position (odometry)
    max_speed: float = 30.0  # m/s, stamps only: how far apart consecutive matches may be per second
    max_gap_s: float = 5.0  # a longer pause between queries starts a new sequence
    # PathVerifier (odometry poses) only:
    min_travel_m: float = 0.0  # the window must cover at least this much travel
    candidates: int = 1  # K: each query's top-K keyframes are hypotheses / path supports
    tolerance_deg: float = 180.0  # predicted vs keyframe heading (180: position only)
    min_score: float = -1.0  # accept a path whose mean descriptor score reaches this (cosine, -1: any)
    min_turn_deg: float = 0.0  # the window's odometry must turn this much (a straight street fits any parallel one)
    unique_m: float = 0.0  # reject when another consistent path starts this far from the best (0: off) ...
    unique_margin: float = float("inf")  # ... and scores within this of the best (inf: whatever it scores)
    zscore: bool = False  # each query's candidate scores as z-scores over its K (SeqSLAM's contrast step)

    def __post_init__(self):
        if self.length < 1:
            raise ValueError(f"sequence length must be >= 1, got {self.length}")
        if self.candidates < 1:
            raise ValueError(f"sequence candidates must be >= 1, got {self.candidates}")
        for name in ("tolerance_m", "max_speed", "max_gap_s", "min_travel_m", "tolerance_deg", "min_turn_deg",
                     "unique_m", "unique_margin"):
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
    match: np.ndarray  # matched keyframe position


class SequenceVerifier:
    """Stamps only: feed every query's top match in stamp order; `update` says whether it is confirmed.
    `axes`: the ground axes positions are compared on (KITTI (0, 2)); None compares all three."""

    def __init__(self, config: SequenceConfig | None = None, axes: tuple[int, ...] | None = None):
        self.config = config or SequenceConfig()
        self.axes = list(axes) if axes is not None else [0, 1, 2]
        self._window: deque[_Step] = deque(maxlen=self.config.length)

    def reset(self) -> None:
        self._window.clear()

    def update(self, stamp: float, match_position: np.ndarray | None) -> bool:
        """Add one query (its stamp, its top match's keyframe position or None for no match) and
        return True when its match is confirmed."""
        if match_position is None:
            self.reset()
            return False
        if self._window and stamp - self._window[-1].stamp > self.config.max_gap_s:
            self.reset()
        step = _Step(float(stamp), np.asarray(match_position, np.float64)[self.axes])
        if self._window and not self._agrees(self._window[-1], step):
            self.reset()  # the new match may still start a consistent run
        self._window.append(step)
        return len(self._window) == self.config.length

    def _agrees(self, previous: _Step, step: _Step) -> bool:
        jump = float(np.linalg.norm(step.match - previous.match))
        return jump <= self.config.max_speed * max(step.stamp - previous.stamp, 0.0) + self.config.tolerance_m


@dataclass
class _Query:
    stamp: float
    odometry: np.ndarray  # (4,4) odometry pose (any fixed frame: only relative motion is used)
    poses: np.ndarray  # (K,4,4) candidate keyframe poses, best first
    scores: np.ndarray  # (K,) their descriptor scores


class PathVerifier:
    """Online, with odometry poses: feed every query's top candidates in stamp order; `update` returns
    the index of the candidate a consistent path confirms (or None) and that path's score (module doc).
    Poses are camera poses (view direction = z axis); `axes`: the ground axes positions are compared on."""

    def __init__(self, config: SequenceConfig | None = None, axes: tuple[int, ...] | None = None):
        self.config = config or SequenceConfig()
        self.axes = list(axes) if axes is not None else [0, 1, 2]
        self._window: deque[_Query] = deque(maxlen=self.config.length)

    def reset(self) -> None:
        self._window.clear()

    def update(self, stamp: float, candidate_poses: np.ndarray, candidate_scores: np.ndarray,
               odometry_pose: np.ndarray) -> tuple[int | None, float]:
        """Add one query: its candidates' keyframe poses (K,4,4) and scores (K,), best first (K = 0 or
        non-finite scores: no candidate), and its odometry pose (4,4). Returns (index of the confirmed
        candidate or None, score of the best consistent path or -inf when there is none)."""
        k = self.config.candidates
        poses = np.asarray(candidate_poses, np.float64).reshape(-1, 4, 4)[:k]
        scores = np.asarray(candidate_scores, np.float64).reshape(-1)[:k]
        valid = np.isfinite(scores)
        if not valid.any():
            self.reset()
            return None, -np.inf
        if self._window and stamp - self._window[-1].stamp > self.config.max_gap_s:
            self.reset()
        scores = self._normalized(scores[valid])
        self._window.append(_Query(float(stamp), np.asarray(odometry_pose, np.float64), poses[valid], scores))
        if len(self._window) < self.config.length or not self._travelled_enough() or not self._turned_enough():
            return None, -np.inf
        path_scores = self._path_scores(poses[valid], scores)
        best = int(np.argmax(path_scores))
        if not np.isfinite(path_scores[best]):
            return None, -np.inf
        confirmed = path_scores[best] >= self.config.min_score and self._unique(poses[valid], path_scores, best)
        return (int(np.flatnonzero(valid)[best]) if confirmed else None), float(path_scores[best])

    def _normalized(self, scores: np.ndarray) -> np.ndarray:
        """With `zscore`, a query's scores relative to its own candidates: a query whose every candidate
        scores high (a bland view) does not outweigh one that singles out a place."""
        if not self.config.zscore or len(scores) < 2:
            return scores
        return (scores - scores.mean()) / max(float(scores.std()), 1e-9)

    def _unique(self, poses: np.ndarray, path_scores: np.ndarray, best: int) -> bool:
        """No other consistent path starting `unique_m` or more from the best one scores within
        `unique_margin` of it: two places that both explain the motion are a look-alike pair."""
        if self.config.unique_m <= 0:
            return True
        apart = np.linalg.norm(poses[:, self.axes, 3] - poses[best, self.axes, 3], axis=1) >= self.config.unique_m
        rival = path_scores[apart].max() if apart.any() else -np.inf
        margin = self.config.unique_margin
        return bool(np.isneginf(rival) or rival < path_scores[best] - margin)

    def _turned_enough(self) -> bool:
        """The odometry's view direction changed by at least `min_turn_deg` within the window."""
        if self.config.min_turn_deg <= 0:
            return True
        from cmirl_ros.geometry.poses import view_angles_deg

        odometry = np.stack([q.odometry for q in self._window])
        return float(view_angles_deg(odometry[-1:], odometry).max()) >= self.config.min_turn_deg

    def _path_scores(self, keyframe_poses: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """(K,) mean score along the path that puts the newest query at each keyframe pose; -inf where
        an earlier query has no candidate where the odometry places it."""
        from cmirl_ros.geometry.poses import view_angles_deg

        odometry_to_map = keyframe_poses @ np.linalg.inv(self._window[-1].odometry)  # (K,4,4)
        total = scores.copy()
        for query in list(self._window)[:-1]:
            predicted = odometry_to_map @ query.odometry  # (K,4,4): where each hypothesis puts this query
            offsets = np.linalg.norm(predicted[:, None, self.axes, 3] - query.poses[None, :, self.axes, 3], axis=2)
            support = (offsets <= self.config.tolerance_m) & (view_angles_deg(predicted, query.poses) <= self.config.tolerance_deg)
            total += np.where(support, query.scores[None], -np.inf).max(1)
        return total / len(self._window)

    def _travelled_enough(self) -> bool:
        positions = np.array([q.odometry[self.axes, 3] for q in self._window])
        return float(np.linalg.norm(np.diff(positions, axis=0), axis=1).sum()) >= self.config.min_travel_m


class QueryStreamVerifier:
    """Sequence verification of one query stream: each query's ranked candidates in, the index of the
    confirmed one out. Stamps only (`odometry` False): `SequenceVerifier` on the top-1; with odometry:
    `PathVerifier` over the top `config.candidates`, and a query without its odometry pose starts a
    new sequence. A stamp older than the last (a replay restarted) starts one too."""

    def __init__(self, config: SequenceConfig | None = None, odometry: bool = False,
                 axes: tuple[int, ...] | None = None):
        self.config = config or SequenceConfig()
        self.odometry = odometry
        self._verifier = PathVerifier(self.config, axes) if odometry else SequenceVerifier(self.config, axes)
        self._last_stamp = -np.inf

    def update(self, stamp: float, candidate_poses: np.ndarray, candidate_scores: np.ndarray,
               odometry_pose: np.ndarray | None = None) -> tuple[int | None, float]:
        """One query: its candidates' keyframe poses (K,4,4) and scores (K,), best first (K = 0 or a
        non-finite score: no candidate), and its odometry pose (4,4) or None. Returns (index of the
        confirmed candidate or None, its score: the path's with odometry, else the top-1's; -inf: none)."""
        if stamp < self._last_stamp:
            self._verifier.reset()
        self._last_stamp = stamp
        poses = np.asarray(candidate_poses, np.float64).reshape(-1, 4, 4)
        scores = np.asarray(candidate_scores, np.float64).reshape(-1)
        if self.odometry:
            if odometry_pose is None:
                self._verifier.reset()
                return None, -np.inf
            return self._verifier.update(stamp, poses, scores, odometry_pose)
        answered = len(scores) > 0 and np.isfinite(scores[0])
        confirmed = self._verifier.update(stamp, poses[0, :3, 3] if answered else None)
        return (0 if confirmed else None), (float(scores[0]) if answered else -np.inf)


def verify_ranked(stamps: np.ndarray, ranked: np.ndarray, ranked_scores: np.ndarray, keyframe_poses: np.ndarray,
                  odometry_poses: np.ndarray | None, config: SequenceConfig | None = None,
                  axes: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`--verify sequence` over Q queries' rankings (`QueryStreamVerifier`): ranked (Q,K) keyframe ids,
    best first, ranked_scores (Q,K) (non-finite: no candidate), odometry_poses (Q,4,4) or None (stamps only).
    Returns the match each query ends with (Q,) (the verifier's pick, else the top-1), whether it is
    confirmed (Q,) and its score (Q,) (the path score with odometry, else the top-1's)."""
    stamps = np.asarray(stamps, np.float64)
    if np.any(np.diff(stamps) < 0):
        raise ValueError("sequence verification needs the queries in stamp order")
    ranked, ranked_scores = np.asarray(ranked, np.int64), np.asarray(ranked_scores, np.float64)
    verifier = QueryStreamVerifier(config, odometry_poses is not None, axes)
    results = [verifier.update(stamps[i], keyframe_poses[ranked[i]], ranked_scores[i],
                               None if odometry_poses is None else odometry_poses[i]) for i in range(len(stamps))]
    chosen = np.array([-1 if index is None else index for index, _ in results], dtype=np.int64)
    picked = np.take_along_axis(ranked, np.maximum(chosen, 0)[:, None], 1)[:, 0]
    return picked, chosen >= 0, np.array([score for _, score in results], dtype=np.float64)
