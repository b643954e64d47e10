"""Keyframe table of a map (one row per descriptor) and keyframe selection along a trajectory."""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmirl_ros.formats import MapFormatError
from cmirl_ros.geometry.poses import travelled_distance

COLUMNS = ("id", "stamp", "session", "source_frame", "x", "y", "z", "qx", "qy", "qz", "qw", "frame_id")


@dataclass
class Keyframes:
    """Row i describes descriptor i. `id` is always the row number (merged maps renumber).

    The pose is the camera pose T_map_cam of the source frame (the query camera the scan was
    projected into), as position xyz + quaternion xyzw, in the map frame `frame_id` (z-up for
    KITTI: the manifest's `frame_convention` says how it was made from the dataset's world).
    `session` names the recording (the dataset name, for example `kitti-00`): the temporal exclusion window only
    applies to keyframes of the query's own session.
    """

    stamps: np.ndarray  # (N,) float64 seconds
    sessions: np.ndarray  # (N,) str objects, one shared object per distinct name
    source_frames: np.ndarray  # (N,) str: source file stem or frame index
    positions: np.ndarray  # (N,3) float64
    quaternions: np.ndarray  # (N,4) float64, xyzw
    frame_ids: np.ndarray  # (N,) str objects, one shared object per distinct name

    def __post_init__(self):
        n = len(self.stamps)
        self.stamps = np.asarray(self.stamps, dtype=np.float64).reshape(n)
        self.sessions = _shared_strings(self.sessions, n)
        self.source_frames = np.asarray(self.source_frames, dtype=str).reshape(n)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(n, 3)
        self.quaternions = np.asarray(self.quaternions, dtype=np.float64).reshape(n, 4)
        self.frame_ids = _shared_strings(self.frame_ids, n)

    def __len__(self) -> int:
        return len(self.stamps)

    @classmethod
    def from_poses(cls, T_world_cam: np.ndarray, stamps, session: str, source_frames, frame_id: str = "map"):
        from scipy.spatial.transform import Rotation

        T_world_cam = np.asarray(T_world_cam, dtype=np.float64).reshape(-1, 4, 4)
        n = len(T_world_cam)
        return cls(
            stamps=stamps,
            sessions=np.full(n, session),
            source_frames=source_frames,
            positions=T_world_cam[:, :3, 3],
            quaternions=Rotation.from_matrix(T_world_cam[:, :3, :3]).as_quat() if n else np.zeros((0, 4)),
            frame_ids=np.full(n, frame_id),
        )

    def pose(self, row: int) -> np.ndarray:
        """(4,4) T_world_cam of one keyframe."""
        return self.poses(np.array([row]))[0]

    def poses(self, rows: np.ndarray | None = None) -> np.ndarray:
        """(K,4,4) T_world_cam of the given rows (all when None)."""
        from scipy.spatial.transform import Rotation

        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        T = np.tile(np.eye(4), (len(rows), 1, 1))
        if len(rows):
            T[:, :3, :3] = Rotation.from_quat(self.quaternions[rows]).as_matrix()
        T[:, :3, 3] = self.positions[rows]
        return T

    def nbytes(self) -> int:
        arrays = (self.stamps, self.sessions, self.source_frames, self.positions, self.quaternions, self.frame_ids)
        shared = {id(s): sys.getsizeof(s) for s in (*set(self.sessions), *set(self.frame_ids))}
        return int(sum(a.nbytes for a in arrays) + sum(shared.values()))

    @staticmethod
    def concatenate(tables: list["Keyframes"]) -> "Keyframes":
        return Keyframes(
            stamps=np.concatenate([t.stamps for t in tables]),
            sessions=np.concatenate([t.sessions for t in tables]),
            source_frames=np.concatenate([t.source_frames for t in tables]),
            positions=np.concatenate([t.positions for t in tables]),
            quaternions=np.concatenate([t.quaternions for t in tables]),
            frame_ids=np.concatenate([t.frame_ids for t in tables]),
        )

    def write_csv(self, path: Path) -> None:
        # repr() of a Python float round-trips exactly, so a saved map reloads bit-identical.
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for i in range(len(self)):
                writer.writerow(
                    [i, repr(float(self.stamps[i])), self.sessions[i], self.source_frames[i]]
                    + [repr(float(v)) for v in self.positions[i]]
                    + [repr(float(v)) for v in self.quaternions[i]]
                    + [self.frame_ids[i]]
                )

    @classmethod
    def read_csv(cls, path: Path) -> "Keyframes":
        # numpy's C parser, one column group at a time: a million rows parsed through Python lists
        # would leave ~150 MB of freed-but-retained interpreter memory in a long-running node.
        with open(path, newline="") as f:
            reader = csv.reader(f)
            if tuple(next(reader, ())) != COLUMNS:
                raise MapFormatError(path, f"not a keyframe table (expected header {','.join(COLUMNS)})")
            if next(reader, None) is None:
                return cls(np.zeros(0), [], [], np.zeros((0, 3)), np.zeros((0, 4)), [])
        try:
            ids = _columns(path, 0, np.int64)
            numbers = _columns(path, (1, 4, 5, 6, 7, 8, 9, 10), np.float64).reshape(len(ids), 8)
            sessions, source_frames, frame_ids = (_columns(path, column, str) for column in (2, 3, 11))
        except ValueError as e:
            raise MapFormatError(path, f"malformed keyframe table: {e}") from None
        if not np.array_equal(ids, np.arange(len(ids))):
            raise MapFormatError(path, "keyframe ids must be the row numbers 0..N-1")
        return cls(numbers[:, 0], sessions, source_frames, numbers[:, 1:4], numbers[:, 4:8], frame_ids)


def _columns(path: Path, columns, dtype) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", skiprows=1, usecols=columns, dtype=dtype, quotechar='"',
                      ndmin=1 if isinstance(columns, int) else 2)


def _shared_strings(values, n: int) -> np.ndarray:
    """Few distinct names repeated N times: an object array of shared strings costs 8 bytes a row,
    where a fixed-width unicode array pays 4 bytes per character of the longest name."""
    names, codes = np.unique(np.asarray(values, dtype=str).reshape(n), return_inverse=True)
    return np.array([str(name) for name in names], dtype=object)[codes]


def select_keyframes(
    T_world_cam: np.ndarray, distance: float, angle_deg: float = 0.0, axes: tuple[int, ...] | None = None
) -> np.ndarray:
    """Indices of keyframes: the first frame, then each frame after which the camera has travelled
    `distance` metres (path length along the trajectory, over `axes`, e.g. (0, 2) for KITTI's ground
    plane) or turned by `angle_deg` since the last keyframe. distance == 0 keeps every frame;
    angle_deg == 0 disables the angle criterion."""
    poses = np.asarray(T_world_cam, dtype=np.float64).reshape(-1, 4, 4)
    if distance < 0 or angle_deg < 0:
        raise ValueError(f"keyframe distance and angle must be >= 0 (got {distance}, {angle_deg})")
    if len(poses) == 0 or distance == 0:
        return np.arange(len(poses))
    travelled = travelled_distance(poses, axes)
    keep = [0]
    for i in range(1, len(poses)):
        last = keep[-1]
        far = travelled[i] - travelled[last] >= distance - 1e-9
        if far or (angle_deg > 0 and _rotation_angle_deg(poses[last], poses[i]) >= angle_deg - 1e-6):
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def _rotation_angle_deg(T_a: np.ndarray, T_b: np.ndarray) -> float:
    R = T_a[:3, :3].T @ T_b[:3, :3]
    cos = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)))
