"""Scan-to-keyframe registration for verifying place matches (small_gicp's GICP, see docs/verification.md).

`register(query_cloud, keyframe_target, T_init)` aligns the query scan (source, its sensor frame) to a
keyframe cloud (target, that keyframe's sensor frame) and returns T_target_source: the query sensor's
pose in the keyframe sensor frame. It runs coarse to fine (a coarse voxel grid with a wide
correspondence gate pulls in offsets of several metres, the fine cloud settles the pose) from each
yaw hypothesis and keeps the one with the best fitness. Acceptance figures follow Open3D's
`evaluate_registration` (fitness = fraction of query points with a keyframe point within
`inlier_m` after alignment; rmse = root mean square of those inliers' distances), counted over the
query's structure points only: points whose local surface is not horizontal (|normal . z| <
`flat_normal_z`). Road and terrain line up at any place along a street, so counting them lets a
wrong place reach 0.44 fitness where its structure fitness stays under 0.36 (docs/verification.md).

The information matrix is small_gicp's GICP Hessian H = sum J^T (C_t + R C_s R^T)^-1 J at the
solution. small_gicp perturbs T_target_source on the right, T exp(xi), with xi = (rotation,
translation) in the source frame; it is returned reordered to (translation, rotation), ROS's order.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cmirl_ros.geometry.clouds import voxel_downsample


@dataclass
class RegistrationConfig:
    voxel_m: float = 1.0  # fine grid of the query scan (= the map clouds' voxel, recorded in the map)
    coarse_voxel_m: float = 2.0  # coarse grid, both clouds
    coarse_correspondence_m: float = 4.0  # coarse gate: reaches the keyframe spacing + retrieval slack
    correspondence_m: float = 2.0  # fine gate
    inlier_m: float = 0.5  # fitness / rmse: a query point within this of the keyframe cloud is an inlier
    min_fitness: float = 0.4  # accept when fitness >= this ...
    max_rmse_m: float = 0.45  # ... and rmse <= this (of the inliers, so at most inlier_m)
    min_inliers: int = 200  # ... and at least this many inlier structure points (a near-empty scan proves nothing)
    yaw_hypotheses: int = 1  # initial yaws 2 pi i / n about the sensor's z axis (1 = identity only)
    max_iterations: int = 20
    neighbours: int = 10  # covariance estimation
    flat_normal_z: float = 0.9  # |normal z| above this = horizontal surface, left out of fitness and rmse
    threads: int = 1

    def __post_init__(self):
        for name in ("voxel_m", "coarse_voxel_m", "coarse_correspondence_m", "correspondence_m", "inlier_m"):
            if getattr(self, name) <= 0:
                raise ValueError(f"registration {name} must be > 0, got {getattr(self, name)}")
        if self.yaw_hypotheses < 1:
            raise ValueError(f"registration yaw_hypotheses must be >= 1, got {self.yaw_hypotheses}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RegistrationResult:
    T_target_source: np.ndarray  # (4,4)
    fitness: float
    rmse_m: float
    information: np.ndarray  # (6,6) over (tx, ty, tz, rx, ry, rz), right perturbation in the source frame
    iterations: int
    accepted: bool


class Target:
    """A keyframe cloud prepared once for registration (both grids, covariances, k-d trees)."""

    def __init__(self, points: np.ndarray, config: RegistrationConfig):
        fine = np.asarray(points, np.float64)
        self.fine, self.fine_tree = _prepare(fine, config)
        self.coarse, self.coarse_tree = _prepare(voxel_downsample(fine, config.coarse_voxel_m), config)
        self.structure = _structure_points(self.fine, config.flat_normal_z)
        self.coarse_structure = _structure_points(self.coarse, config.flat_normal_z)


def prepare_query(points: np.ndarray, config: RegistrationConfig) -> Target:
    """The query scan (N, >=3, its sensor frame) downsampled as the map's clouds are."""
    return Target(voxel_downsample(points, config.voxel_m), config)


def register(source: Target, target: Target, T_init: np.ndarray, config: RegistrationConfig) -> RegistrationResult:
    """Align `source` to `target` from T_init (a T_target_source guess): every yaw hypothesis on the
    coarse grids, the one with the best coarse fitness refined on the fine clouds."""
    best, best_fitness = None, -1.0
    for yaw in 2 * np.pi * np.arange(config.yaw_hypotheses) / config.yaw_hypotheses:
        coarse = _align(source.coarse, target.coarse, target.coarse_tree, np.asarray(T_init, np.float64) @ yaw_about_z(yaw),
                        config.coarse_correspondence_m, config)
        fitness, _ = _overlap(source.coarse_structure, target.coarse_tree, coarse.T_target_source, config.coarse_voxel_m,
                              config)
        if fitness > best_fitness:
            best, best_fitness = coarse, fitness
    fine = _align(source.fine, target.fine, target.fine_tree, best.T_target_source, config.correspondence_m, config)
    fitness, rmse = _overlap(source.structure, target.fine_tree, fine.T_target_source, config.inlier_m, config)
    accepted = bool(fine.converged and fitness >= config.min_fitness and rmse <= config.max_rmse_m
                    and fitness * len(source.structure) >= config.min_inliers)
    return RegistrationResult(fine.T_target_source, fitness, rmse, _translation_first(fine.H),
                              int(best.iterations + fine.iterations), accepted)


def _align(source, target, target_tree, T_init: np.ndarray, gate_m: float, config: RegistrationConfig):
    import small_gicp

    return small_gicp.align(target, source, target_tree, T_init, max_correspondence_distance=gate_m,
                            max_iterations=config.max_iterations, num_threads=config.threads)


def _overlap(points: np.ndarray, target_tree, T_target_source: np.ndarray, inlier_m: float, config: RegistrationConfig):
    """(fitness, rmse): share of the (N,3) source points within `inlier_m` of the target, and their RMS distance."""
    if len(points) == 0:
        return 0.0, float("inf")
    points = points @ T_target_source[:3, :3].T + T_target_source[:3, 3]
    _, squared = target_tree.batch_nearest_neighbor_search(points, num_threads=config.threads)
    distances = np.sqrt(np.asarray(squared, np.float64))
    inliers = distances < inlier_m
    if not inliers.any():
        return 0.0, float("inf")
    return float(inliers.mean()), float(np.sqrt(np.mean(distances[inliers] ** 2)))


def _prepare(points: np.ndarray, config: RegistrationConfig):
    import small_gicp

    cloud = small_gicp.PointCloud(np.ascontiguousarray(points, np.float64))
    tree = small_gicp.KdTree(cloud, num_threads=config.threads)
    small_gicp.estimate_covariances(cloud, tree, num_neighbors=config.neighbours, num_threads=config.threads)
    return cloud, tree


def _structure_points(cloud, flat_normal_z: float) -> np.ndarray:
    """(M,3) points of `cloud` whose local surface (smallest-eigenvalue direction of the point's
    covariance) is not horizontal."""
    _, vectors = np.linalg.eigh(np.asarray(cloud.covs())[:, :3, :3])
    normal_z = np.abs(vectors[:, 2, 0])
    return np.ascontiguousarray(cloud.points()[normal_z < flat_normal_z, :3])


def _translation_first(H: np.ndarray) -> np.ndarray:
    order = [3, 4, 5, 0, 1, 2]
    H = np.asarray(H, np.float64)[np.ix_(order, order)]
    return 0.5 * (H + H.T)


def yaw_about_z(angle: float) -> np.ndarray:
    """(4,4) rotation by `angle` radians about z."""
    T = np.eye(4)
    c, s = np.cos(angle), np.sin(angle)
    T[:2, :2] = [[c, -s], [s, c]]
    return T


def adjoint(T_a_b: np.ndarray) -> np.ndarray:
    """(6,6) adjoint of T_a_b for (translation, rotation) twists: xi_a = Ad xi_b."""
    R, p = T_a_b[:3, :3], T_a_b[:3, 3]
    skew = np.array([[0, -p[2], p[1]], [p[2], 0, -p[0]], [-p[1], p[0], 0]])
    Ad = np.zeros((6, 6))
    Ad[:3, :3] = R
    Ad[:3, 3:] = skew @ R
    Ad[3:, 3:] = R
    return Ad


def information_in(T_a_b: np.ndarray, information_b: np.ndarray) -> np.ndarray:
    """Information of a right perturbation xi_b of a pose X (X exp(xi_b)), re-expressed for the
    pose X T_b_a: X exp(xi_b) T_b_a = X T_b_a exp(xi_a) with xi_a = Ad(T_a_b) xi_b, so
    information_a = Ad^-T information_b Ad^-1."""
    Ad_inv = np.linalg.inv(adjoint(T_a_b))
    info = Ad_inv.T @ information_b @ Ad_inv
    return 0.5 * (info + info.T)
