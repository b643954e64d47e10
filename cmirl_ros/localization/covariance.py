"""Covariance of a matched pose from the spread of the top-k candidates.

Place recognition returns keyframes, not a metric pose estimate, so the covariance says how far
the true pose may plausibly be from the best keyframe's pose:

    w_i   = exp((s_i - s_1) / T) / sum_j exp((s_j - s_1) / T)        (softmax of scores, s_1 best)
    S_pos = sum_i w_i (p_i - p_1)(p_i - p_1)^T + sigma_pos^2 I
    S_rot = sum_i w_i r_i r_i^T + sigma_rot^2 I,   r_i = log(R_1^T R_i)  (rotation vector, radians)

Candidates that score almost as well as the best one but lie elsewhere (an ambiguous place)
inflate the covariance along the direction to them; a clear winner leaves only the floor
sigma_pos / sigma_rot (the keyframe spacing and view tolerance of the map). The result is the
6x6 row-major covariance of (x, y, z, rx, ry, rz) in the map frame, as ROS's
PoseWithCovariance expects; position/rotation cross terms are zero.
"""
from __future__ import annotations

import numpy as np


def match_covariance(scores: np.ndarray, poses: np.ndarray, temperature: float = 0.02,
                     position_floor_m: float = 1.0, rotation_floor_deg: float = 5.0) -> np.ndarray:
    """(6,6) covariance from candidate scores (K,) best first and their poses (K,4,4) T_world_cam."""
    from scipy.spatial.transform import Rotation

    scores = np.asarray(scores, dtype=np.float64)
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
    if len(scores) == 0 or len(scores) != len(poses):
        raise ValueError(f"need one pose per score and at least one candidate, got {len(scores)} and {len(poses)}")
    if temperature <= 0:
        raise ValueError(f"covariance temperature must be > 0, got {temperature}")
    weights = np.exp((scores - scores.max()) / temperature)
    weights /= weights.sum()
    offsets = poses[:, :3, 3] - poses[0, :3, 3]
    rotations = Rotation.from_matrix(np.swapaxes(poses[:1, :3, :3], 1, 2) @ poses[:, :3, :3]).as_rotvec()
    covariance = np.zeros((6, 6))
    covariance[:3, :3] = (weights[:, None] * offsets).T @ offsets + position_floor_m**2 * np.eye(3)
    covariance[3:, 3:] = (weights[:, None] * rotations).T @ rotations + np.radians(rotation_floor_deg) ** 2 * np.eye(3)
    return covariance


def candidates_covariance(scores: np.ndarray, poses: np.ndarray, config) -> np.ndarray:
    """`match_covariance` of the first `config.top_k` candidates with the LocalizerConfig's temperature
    and floors: the one way the localizer and the node spread a keyframe match's covariance."""
    return match_covariance(np.asarray(scores)[: config.top_k], np.asarray(poses)[: config.top_k],
                            config.covariance_temperature, config.position_floor_m, config.rotation_floor_deg)
