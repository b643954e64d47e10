"""Trajectories: KITTI pose files, place distances, positives/negatives and revisits.

KITTI ground-truth poses are T_world_cam0 in the camera-0 frame (x right, y DOWN,
z forward), so the distance on the ground uses x and z; using x and y (as some peer
code does) mixes in height and ignores forward motion.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cmirl_ros.atomic import atomic_write_text

KITTI_GROUND_AXES = (0, 2)


def read_kitti_poses(path: str | Path) -> np.ndarray:
    """(N,4,4) poses from a file of 12 numbers a line (row-major 3x4)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: poses file not found")
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: not a KITTI poses file ({e})") from None
    if values.shape[1] != 12:
        raise ValueError(f"{path}: expected 12 numbers per line, got {values.shape[1]}")
    poses = np.tile(np.eye(4), (len(values), 1, 1))
    poses[:, :3, :4] = values.reshape(-1, 3, 4)
    return poses


def write_kitti_poses(path: str | Path, poses: np.ndarray) -> None:
    lines = (" ".join(f"{v:.9e}" for v in T[:3, :4].reshape(-1)) for T in poses)
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_times(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: timestamps file not found")
    try:
        return np.loadtxt(path, dtype=np.float64, ndmin=1)
    except ValueError as e:
        raise ValueError(f"{path}: not a timestamps file ({e})") from None


def positions(poses: np.ndarray, axes: tuple[int, ...] | None = None) -> np.ndarray:
    """Translations of (N,4,4) poses, restricted to `axes` (None = all three)."""
    t = poses[:, :3, 3]
    return t if axes is None else t[:, list(axes)]


def place_distances(poses_a: np.ndarray, poses_b: np.ndarray, axes: tuple[int, ...] | None = None) -> np.ndarray:
    """(Na, Nb) Euclidean distances between pose positions on `axes`."""
    pa, pb = positions(poses_a, axes), positions(poses_b, axes)
    sq = (pa**2).sum(1)[:, None] + (pb**2).sum(1)[None, :] - 2.0 * pa @ pb.T
    return np.sqrt(np.maximum(sq, 0.0))


def view_angles_deg(poses_a: np.ndarray, poses_b: np.ndarray) -> np.ndarray:
    """(Na, Nb) angle in degrees between the viewing directions (camera z axes)."""
    za, zb = poses_a[:, :3, 2], poses_b[:, :3, 2]
    cos = np.clip(za @ zb.T, -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def place_matches(
    poses_a: np.ndarray,
    poses_b: np.ndarray,
    radius: float,
    axes: tuple[int, ...] | None = None,
    max_angle_deg: float | None = None,
) -> np.ndarray:
    """(Na, Nb) bool: same place = within `radius` metres (and `max_angle_deg` of view direction)."""
    same = place_distances(poses_a, poses_b, axes) < radius
    if max_angle_deg is not None:
        same &= view_angles_deg(poses_a, poses_b) < max_angle_deg
    return same


def time_exclusion(stamps_a: np.ndarray, stamps_b: np.ndarray, seconds: float) -> np.ndarray:
    """(Na, Nb) bool: True where the two stamps are within `seconds` (the self-match guard)."""
    return np.abs(np.asarray(stamps_a)[:, None] - np.asarray(stamps_b)[None, :]) <= seconds


def nearest_stamps(stamps: np.ndarray, reference: np.ndarray, tolerance: float = 1e-5) -> np.ndarray:
    """Index of the reference stamp equal to each stamp (within float error of epoch seconds), or -1."""
    stamps = np.asarray(stamps, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if len(reference) == 0:
        return np.full(len(stamps), -1, dtype=np.int64)
    order = np.argsort(reference)
    sorted_ref = reference[order]
    pos = np.clip(np.searchsorted(sorted_ref, stamps), 1, max(len(sorted_ref) - 1, 1))
    left = np.clip(pos - 1, 0, len(sorted_ref) - 1)
    right = np.clip(pos, 0, len(sorted_ref) - 1)
    best = np.where(np.abs(sorted_ref[left] - stamps) <= np.abs(sorted_ref[right] - stamps), left, right)
    found = np.abs(sorted_ref[best] - stamps) <= tolerance
    return np.where(found, order[best], -1)


def revisit_mask(
    poses: np.ndarray,
    stamps: np.ndarray,
    radius: float,
    exclude_seconds: float,
    axes: tuple[int, ...] | None = None,
    max_angle_deg: float | None = None,
) -> np.ndarray:
    """(N,) bool: frames that return within `radius` to a place visited more than `exclude_seconds` earlier."""
    same = place_matches(poses, poses, radius, axes, max_angle_deg)
    earlier = np.asarray(stamps)[None, :] < np.asarray(stamps)[:, None] - exclude_seconds
    return (same & earlier).any(axis=1)


def travelled_distance(poses: np.ndarray, axes: tuple[int, ...] | None = None) -> np.ndarray:
    """(N,) cumulative path length along the trajectory."""
    steps = np.linalg.norm(np.diff(positions(poses, axes), axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(steps)])
