"""A transform tree with tf2's semantics, without ROS: what /tf_static and /tf describe.

Each edge is parent -> child: the pose of the child frame in the parent frame (a TransformStamped
with header.frame_id = parent). An edge is static (one transform for all times) or dynamic (a
history of stamped transforms, interpolated between stamps: linear translation, quaternion slerp).
`lookup(target, source, stamp)` returns T_target_source (maps points in `source` to `target`) over
any chain in the tree, walking edges up to the common ancestor and inverting where needed.

As in tf2: a frame has one parent (a transform with another parent re-parents the child), a
lookup outside a dynamic edge's stamps is an extrapolation error, and stamp None means the latest
time at which every dynamic edge of the chain is known.

Thread-safe: the ROS node adds transforms from its executor thread while its inference thread
looks them up at query stamps (without the lock a lookup may read an edge's history half pruned).
"""
from __future__ import annotations

import bisect
import functools
import threading
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

DEFAULT_CACHE_SECONDS = 10.0  # tf2's default buffer length


class TfError(LookupError):
    """A lookup that the tree cannot answer."""


class UnknownFrameError(TfError):
    pass


class ConnectivityError(TfError):
    pass


class ExtrapolationError(TfError):
    pass


@dataclass
class _Edge:
    parent: str
    static: bool
    stamps: list[float] = field(default_factory=list)
    translations: list[np.ndarray] = field(default_factory=list)
    quaternions: list[np.ndarray] = field(default_factory=list)  # x, y, z, w; unit norm


def _frame_name(frame: str) -> str:
    name = str(frame).lstrip("/")  # tf2 ignores a leading slash
    if not name:
        raise ValueError(f"empty frame id {frame!r}")
    return name


def _unit_quaternion(rotation) -> np.ndarray:
    q = np.asarray(rotation, dtype=np.float64).reshape(-1)
    if q.shape != (4,) or not np.all(np.isfinite(q)):
        raise ValueError(f"rotation must be 4 finite numbers (x, y, z, w), got {rotation!r}")
    norm = np.linalg.norm(q)
    if norm < 1e-9:
        raise ValueError(f"rotation quaternion {rotation!r} has zero norm")
    return q / norm


def _vector3(translation) -> np.ndarray:
    t = np.asarray(translation, dtype=np.float64).reshape(-1)
    if t.shape != (3,) or not np.all(np.isfinite(t)):
        raise ValueError(f"translation must be 3 finite numbers, got {translation!r}")
    return t


def _matrix(translation: np.ndarray, quaternion: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(quaternion).as_matrix()
    T[:3, 3] = translation
    return T


def slerp(q0: np.ndarray, q1: np.ndarray, fraction: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions along the shorter arc."""
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # q and -q are one rotation: take the short way
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly parallel: linear is exact to float precision and avoids 0/0
        q = q0 + fraction * (q1 - q0)
        return q / np.linalg.norm(q)
    angle = np.arccos(dot)
    return (np.sin((1.0 - fraction) * angle) * q0 + np.sin(fraction * angle) * q1) / np.sin(angle)


def _locked(method):
    @functools.wraps(method)
    def under_lock(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return under_lock


class TfTree:
    def __init__(self, cache_seconds: float = DEFAULT_CACHE_SECONDS):
        self.cache_seconds = float(cache_seconds)
        self._lock = threading.RLock()
        self._edges: dict[str, _Edge] = {}  # keyed by child frame

    @_locked
    def frames(self) -> set[str]:
        return set(self._edges) | {edge.parent for edge in self._edges.values()}

    @_locked
    def parent(self, frame: str) -> str | None:
        edge = self._edges.get(_frame_name(frame))
        return edge.parent if edge else None

    @_locked
    def set_transform(self, parent: str, child: str, translation, rotation, stamp: float | None = None) -> None:
        """Add parent -> child (child's pose in parent; rotation as quaternion x, y, z, w).
        stamp None: a static transform; else one sample of a dynamic edge."""
        parent, child = _frame_name(parent), _frame_name(child)
        if parent == child:
            raise ValueError(f"transform from frame '{parent}' to itself")
        translation, quaternion = _vector3(translation), _unit_quaternion(rotation)
        if stamp is not None and not np.isfinite(stamp):
            raise ValueError(f"stamp of '{parent}' -> '{child}' is not finite: {stamp!r}")
        self._check_no_cycle(parent, child)
        edge = self._edges.get(child)
        static = stamp is None
        if edge is None or edge.parent != parent or edge.static != static:
            edge = self._edges[child] = _Edge(parent, static)
        if static:
            edge.stamps, edge.translations, edge.quaternions = [0.0], [translation], [quaternion]
        else:
            self._insert_sample(edge, float(stamp), translation, quaternion)

    @_locked
    def clear(self) -> None:
        """Forget the dynamic transforms; static ones stay (tf2 does the same when time jumps back)."""
        self._edges = {child: edge for child, edge in self._edges.items() if edge.static}

    def set_matrix(self, parent: str, child: str, T_parent_child, stamp: float | None = None) -> None:
        T = np.asarray(T_parent_child, dtype=np.float64)
        if T.shape != (4, 4):
            raise ValueError(f"transform '{parent}' -> '{child}' must be 4x4, got shape {T.shape}")
        self.set_transform(parent, child, T[:3, 3], Rotation.from_matrix(T[:3, :3]).as_quat(), stamp)

    def _check_no_cycle(self, parent: str, child: str) -> None:
        frame = parent
        while frame in self._edges:
            frame = self._edges[frame].parent
            if frame == child:
                raise ValueError(f"transform '{parent}' -> '{child}' would close a loop: '{child}' is an ancestor of '{parent}'")

    def _insert_sample(self, edge: _Edge, stamp: float, translation: np.ndarray, quaternion: np.ndarray) -> None:
        i = bisect.bisect_left(edge.stamps, stamp)
        if i < len(edge.stamps) and edge.stamps[i] == stamp:  # a repeated stamp replaces the sample
            edge.translations[i], edge.quaternions[i] = translation, quaternion
        else:
            edge.stamps.insert(i, stamp)
            edge.translations.insert(i, translation)
            edge.quaternions.insert(i, quaternion)
        oldest_kept = bisect.bisect_left(edge.stamps, edge.stamps[-1] - self.cache_seconds)
        del edge.stamps[:oldest_kept], edge.translations[:oldest_kept], edge.quaternions[:oldest_kept]

    @_locked
    def lookup(self, target: str, source: str, stamp: float | None = None) -> np.ndarray:
        """T_target_source (4x4) at `stamp` (None: the latest time the whole chain is known)."""
        target, source = _frame_name(target), _frame_name(source)
        up_from_source, up_from_target = self._chain(source), self._chain(target)
        if up_from_source[-1] != up_from_target[-1]:
            raise ConnectivityError(f"frames '{target}' and '{source}' are not connected: their trees have roots "
                                    f"'{up_from_target[-1]}' and '{up_from_source[-1]}'")
        ancestor = next(f for f in up_from_source if f in set(up_from_target))
        source_edges = up_from_source[:up_from_source.index(ancestor)]
        target_edges = up_from_target[:up_from_target.index(ancestor)]
        if stamp is None:
            stamp = self._latest_common_stamp(source_edges + target_edges)
        T_ancestor_source = self._compose(source_edges, stamp, target, source)
        T_ancestor_target = self._compose(target_edges, stamp, target, source)
        return np.linalg.inv(T_ancestor_target) @ T_ancestor_source

    def can_transform(self, target: str, source: str, stamp: float | None = None) -> bool:
        try:
            self.lookup(target, source, stamp)
        except TfError:
            return False
        return True

    def _chain(self, frame: str) -> list[str]:
        """The frame and its ancestors up to the root."""
        if frame not in self.frames():
            known = ", ".join(sorted(self.frames())) or "none"
            raise UnknownFrameError(f"unknown frame '{frame}' (known frames: {known})")
        chain = [frame]
        while chain[-1] in self._edges:
            chain.append(self._edges[chain[-1]].parent)
        return chain

    def _latest_common_stamp(self, children: list[str]) -> float | None:
        dynamic = [self._edges[c].stamps[-1] for c in children if not self._edges[c].static]
        return min(dynamic) if dynamic else None

    def _compose(self, children: list[str], stamp: float | None, target: str, source: str) -> np.ndarray:
        """T_ancestor_child over the edges child -> ... -> ancestor (children listed bottom-up)."""
        T = np.eye(4)
        for child in children:
            T = self._edge_matrix(child, stamp, target, source) @ T
        return T

    def _edge_matrix(self, child: str, stamp: float | None, target: str, source: str) -> np.ndarray:
        edge = self._edges[child]
        if edge.static:
            return _matrix(edge.translations[0], edge.quaternions[0])
        first, last = edge.stamps[0], edge.stamps[-1]
        if stamp < first or stamp > last:
            where = "before the oldest" if stamp < first else "after the newest"
            raise ExtrapolationError(
                f"lookup '{target}' <- '{source}' at t={stamp}: edge '{edge.parent}' -> '{child}' is known from "
                f"t={first:.6f} to t={last:.6f}; the time asked is {where}")
        i = bisect.bisect_left(edge.stamps, stamp)
        if edge.stamps[i] == stamp:
            return _matrix(edge.translations[i], edge.quaternions[i])
        fraction = (stamp - edge.stamps[i - 1]) / (edge.stamps[i] - edge.stamps[i - 1])
        translation = (1.0 - fraction) * edge.translations[i - 1] + fraction * edge.translations[i]
        return _matrix(translation, slerp(edge.quaternions[i - 1], edge.quaternions[i], fraction))
