"""pose:standard: the pose and covariance of the best candidate.

A verified candidate (a registration stage set `T_world_query` and `information`) gives the refined
query pose; its covariance is the inverse information, rotated from the query camera frame to the
map frame (ROS's convention: position and rotation about the map's fixed axes). Otherwise the pose is the keyframe's and the covariance comes
from the spread of the candidates' scores and poses (`localization.covariance.candidates_covariance`).
"""
from __future__ import annotations

import numpy as np

from cmirl_ros.localization.covariance import candidates_covariance
from cmirl_ros.localization.stages import Candidates, QueryInput, register_stage


@register_stage("pose", "standard")
def standard_pose(config, mapdb):
    def pose(candidates: Candidates, query: QueryInput) -> Candidates:
        if not len(candidates):
            return candidates
        if "information" in candidates.extras:
            candidates.covariance = map_frame_covariance(candidates.extras["T_world_query"][0],
                                                         candidates.extras["information"][0])
        else:
            candidates.covariance = candidates_covariance(candidates.scores, candidates.T_world_cam, config)
        return candidates

    return pose


def map_frame_covariance(T_world_query: np.ndarray, information: np.ndarray) -> np.ndarray:
    """(6,6) covariance of (x, y, z, rx, ry, rz) in the map frame from the information of a right
    perturbation (rho, omega) in the query frame: T exp(xi) moves the position by R rho and turns
    about the map's axes by R omega, so both blocks rotate by R. (The full adjoint would give a
    left perturbation, whose translation part is not the position's error away from the origin.)"""
    covariance = np.linalg.pinv(information, hermitian=True)
    rotate = np.kron(np.eye(2), T_world_query[:3, :3])
    covariance = rotate @ covariance @ rotate.T
    return 0.5 * (covariance + covariance.T)
