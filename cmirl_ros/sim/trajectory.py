"""Trajectories to simulate: a KITTI poses file or the built-in `loop` route, and the viewpoint change.

Poses are KITTI's T_world_cam0 (camera-0 frame: x right, y down, z forward); the ground
plane is the x-z plane, 'up' is -y.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from cmirl_ros.geometry import read_kitti_poses, read_times

KITTI_FRAME_PERIOD = 0.1036  # s, the mean spacing of KITTI odometry timestamps (~9.65 Hz)

# The built-in route (x, z in metres): a lead-in street, one lap around a 120 x 180 m block,
# then the first 390 m of the lap again in the same direction (~1 km in all). At 10 m/s the
# second pass comes about 60 s after the first, well outside a 30 s self-match exclusion window.
LOOP_WAYPOINTS = np.array(
    [[0, 0], [0, 120], [0, 300], [120, 300], [120, 120], [0, 120], [0, 300], [120, 300], [120, 210]], dtype=np.float64
)
LOOP_SPEED = 10.0  # m/s
LOOP_CORNER_SMOOTHING = 4  # Chaikin iterations: corners become ~15 m radius curves


@dataclass(frozen=True)
class Trajectory:
    poses: np.ndarray  # (N,4,4) T_world_cam0
    stamps: np.ndarray  # (N,) seconds
    name: str


def _chaikin(points: np.ndarray, iterations: int) -> np.ndarray:
    for _ in range(iterations):
        a, b = points[:-1], points[1:]
        cut = np.empty((2 * len(a), 2))
        cut[0::2] = 0.75 * a + 0.25 * b
        cut[1::2] = 0.25 * a + 0.75 * b
        points = np.vstack([points[:1], cut, points[-1:]])
    return points


def _resample(polyline: np.ndarray, step: float) -> np.ndarray:
    seg = np.linalg.norm(np.diff(polyline, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    s = np.arange(0.0, arc[-1], step)
    return np.stack([np.interp(s, arc, polyline[:, 0]), np.interp(s, arc, polyline[:, 1])], axis=1)


def poses_from_ground_path(xz: np.ndarray) -> np.ndarray:
    """Level camera-0 poses looking along a ground path (heading from the path tangent)."""
    tangent = np.gradient(xz, axis=0)
    heading = np.arctan2(tangent[:, 0], tangent[:, 1])  # 0 = looking along +z
    c, s = np.cos(heading), np.sin(heading)
    poses = np.tile(np.eye(4), (len(xz), 1, 1))
    # Columns are the camera axes in the world: right = (c, 0, -s), down = (0, 1, 0), forward = (s, 0, c).
    poses[:, 0, 0], poses[:, 2, 0] = c, -s
    poses[:, 0, 2], poses[:, 2, 2] = s, c
    poses[:, 0, 3], poses[:, 2, 3] = xz[:, 0], xz[:, 1]
    return poses


def loop_trajectory() -> Trajectory:
    xz = _resample(_chaikin(LOOP_WAYPOINTS, LOOP_CORNER_SMOOTHING), LOOP_SPEED * 0.1)
    return Trajectory(poses_from_ground_path(xz), np.arange(len(xz)) * 0.1, "loop")


def load_trajectory(spec: str | Path) -> Trajectory:
    """`loop` or a KITTI poses file; timestamps come from a sibling `../times/XX.txt` when present."""
    if str(spec) == "loop":
        return loop_trajectory()
    path = Path(spec)
    poses = read_kitti_poses(path)
    times_path = path.parent.parent / "times" / path.name
    stamps = read_times(times_path) if times_path.is_file() else np.arange(len(poses)) * KITTI_FRAME_PERIOD
    if len(stamps) != len(poses):
        raise ValueError(f"{times_path}: {len(stamps)} timestamps for {len(poses)} poses in {path}")
    return Trajectory(poses, stamps, path.stem)


def parse_frames(spec: str | None, count: int) -> range:
    """'A:B' or 'A:B:STEP' (Python slice semantics, B may be empty) -> the frame indices."""
    if not spec:
        return range(count)
    parts = spec.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        numbers = [int(p) if p else None for p in parts]
    except ValueError:
        raise ValueError(f"--frames {spec!r}: expected A:B or A:B:STEP") from None
    frames = range(count)[slice(*numbers)]
    if len(frames) == 0:
        raise ValueError(f"--frames {spec!r} selects no frame of a {count}-frame trajectory")
    return frames


def revisit_weight(poses: np.ndarray, stamps: np.ndarray, radius: float = 12.0, after_s: float = 30.0,
                   ramp_frames: int = 15, after_m: float = 50.0) -> np.ndarray:
    """(N,) in [0,1]: 1 on frames that come back to a place seen more than `after_s` and `after_m` of driving
    earlier (so waiting at a light is no revisit), ramped over `ramp_frames` at both ends."""
    xz = poses[:, [0, 2], 3]
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xz, axis=0), axis=1))])
    revisit = np.zeros(len(xz))
    for i, neighbours in enumerate(cKDTree(xz).query_ball_point(xz, radius)):
        j = np.asarray(neighbours, dtype=int)
        revisit[i] = float(np.any((stamps[j] < stamps[i] - after_s) & (arc[j] < arc[i] - after_m)))
    if ramp_frames == 0:
        return revisit
    width = 2 * ramp_frames + 1
    return np.convolve(revisit, np.ones(width), mode="same") / width  # sum first: full runs give exactly 1


def apply_viewpoint_change(poses: np.ndarray, weight: np.ndarray, lateral_m: float, yaw_deg: float) -> np.ndarray:
    """Shift each pose `weight * lateral_m` to its left and turn it by `weight * yaw_deg` about the vertical."""
    out = poses.copy()
    yaw = np.radians(yaw_deg) * weight
    c, s = np.cos(yaw), np.sin(yaw)
    for i in np.nonzero(weight > 0)[0]:
        # Rotation about the camera's own y (down) axis: positive yaw turns the view to the right.
        R_yaw = np.array([[c[i], 0, s[i]], [0, 1, 0], [-s[i], 0, c[i]]])
        out[i, :3, :3] = poses[i, :3, :3] @ R_yaw
        out[i, :3, 3] = poses[i, :3, 3] - poses[i, :3, 0] * lateral_m * weight[i]
    return out
