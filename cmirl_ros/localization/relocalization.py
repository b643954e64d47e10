"""One-shot relocalization: a verified prior-map match becomes an initial pose once per request (ROS-free).

Why one-shot: a pose filter such as Nav2 AMCL re-initialises itself (all its particles) on every
message on `/initialpose`. Feeding it the localizer's matches at frame rate would throw its state
away ten times a second; an initial pose is a correction for a robot that is lost (at start-up, or
after being carried), asked for once.

Why verified only: an initial pose is trusted blindly by its consumer, so a retrieval-only guess (a
place that merely looks alike) must never become one; the caller says whether a match passed
geometric verification (the live scan registered to the keyframe's cloud) and unverified ones are
ignored: they neither count nor break a streak, they carry no evidence either way.

States: idle -> `arm()` -> armed -> (enough verified matches) -> idle, with the released pose as
the last outcome. `offer` returns that pose exactly once per arming; re-arming asks for another.

`matches_needed` (K, default 1): the pose is released after K consecutive verified matches that
agree with each other. K = 1 is the default because verification is already a geometric test of the
whole scan against the map (its precision: docs/results.md, "Verified matches") and a lost robot
wants its pose at the first chance; K > 1 trades a few frames of delay for robustness where the map
repeats itself (corridors, parking decks). Agreement: when the odometry pose of both matches is
known, the map -> odom corrections they imply (T_map_base @ inv(T_odom_base)) must agree, so the
robot may move meanwhile; without odometry the base poses themselves must agree (a robot standing
still while it relocalizes). Each match is compared with the first of the streak (no slow drift
along a chain); one that disagrees starts a new streak. The released pose is the latest match.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from cmirl_ros.geometry.camera import invert_transform

AGREEMENT_M = 1.0  # verified poses are good to well under 1 m (test/ros/test_node_verify.py)
AGREEMENT_RAD = np.radians(10.0)


@dataclass(frozen=True)
class Relocalization:
    """A released initial pose: the base's pose in the map at `stamp`, with its covariance."""

    stamp: float
    T_map_base: np.ndarray  # (4, 4)
    covariance: np.ndarray  # (6, 6), (x, y, z, rx, ry, rz) in the map frame
    T_odom_base: np.ndarray | None = None  # odometry's pose of the base at `stamp`, when known

    @property
    def T_map_odom(self) -> np.ndarray | None:
        """The map -> odom correction this pose implies (None without odometry)."""
        return None if self.T_odom_base is None else self.T_map_base @ invert_transform(self.T_odom_base)


def poses_agree(a: Relocalization, b: Relocalization, max_m: float = AGREEMENT_M, max_rad: float = AGREEMENT_RAD) -> bool:
    """Whether two matches tell the same story: same map -> odom correction when both know odometry,
    else the same base pose."""
    both_odom = a.T_odom_base is not None and b.T_odom_base is not None
    T_a, T_b = (a.T_map_odom, b.T_map_odom) if both_odom else (a.T_map_base, b.T_map_base)
    delta = invert_transform(T_a) @ T_b
    angle = np.arccos(np.clip((np.trace(delta[:3, :3]) - 1.0) / 2.0, -1.0, 1.0))
    return bool(np.linalg.norm(delta[:3, 3]) <= max_m and angle <= max_rad)


class OneShotRelocalization:
    """Armed / idle; thread-safe (armed from a service callback, offered matches from an inference thread)."""

    def __init__(self, matches_needed: int = 1, max_m: float = AGREEMENT_M, max_rad: float = AGREEMENT_RAD):
        if int(matches_needed) < 1:
            raise ValueError(f"matches_needed must be >= 1, got {matches_needed}")
        self.matches_needed = int(matches_needed)
        self.max_m, self.max_rad = float(max_m), float(max_rad)
        self._lock = threading.Lock()
        self._armed = False
        self._streak: list[Relocalization] = []
        self.released = 0  # poses released so far
        self.last: Relocalization | None = None

    @property
    def armed(self) -> bool:
        return self._armed

    def arm(self) -> None:
        """Ask for one initial pose; a streak in progress starts over."""
        with self._lock:
            self._armed, self._streak = True, []

    def offer(self, stamp: float, T_map_base, covariance, verified: bool, T_odom_base=None) -> Relocalization | None:
        """A match of the query at `stamp`: the pose to publish when this one completes an armed
        request (then idle again), else None."""
        with self._lock:
            if not (self._armed and verified):
                return None
            match = Relocalization(float(stamp), np.array(T_map_base, dtype=np.float64),
                                   np.array(covariance, dtype=np.float64).reshape(6, 6),
                                   None if T_odom_base is None else np.array(T_odom_base, dtype=np.float64))
            if self._streak and not poses_agree(self._streak[0], match, self.max_m, self.max_rad):
                self._streak = []
            self._streak.append(match)
            if len(self._streak) < self.matches_needed:
                return None
            self._armed, self._streak = False, []
            self.released += 1
            self.last = match
            return match

    def status(self) -> str:
        """One line for diagnostics."""
        with self._lock:
            if self._armed:
                return f"armed ({len(self._streak)}/{self.matches_needed} agreeing verified matches)"
            if self.last is not None:
                return f"done at {self.last.stamp:.3f}"
            return "idle"
