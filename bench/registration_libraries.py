"""Registration libraries side by side on simulated HDL-64 scans (the measurement behind
docs/verification.md; needs `pip install small-gicp kiss-icp open3d`, only small-gicp is a dependency).

Pairs: each query scan of ROOT_Q (sequence 00) against (a) the map keyframe nearest to it, (b) the
farthest keyframe still within 10 m, (c) a keyframe over 50 m away (a wrong place). Both clouds
are downsampled on the same 1 m voxel grid; every method starts from the identity (the sensors
stood at the same place) and runs single-threaded. A pair is solved when the result is within
0.2 m and 1 degree of the ground-truth relative pose.

    OMP_NUM_THREADS=1 python bench/registration_libraries.py out/sim/cond_day out/sim/train_day 30
"""
from __future__ import annotations

import sys
import time

import numpy as np

from cmirl_ros.datasets.kitti import KittiSequence
from cmirl_ros.geometry.clouds import voxel_downsample
from cmirl_ros.geometry.poses import place_distances
from cmirl_ros.geometry.registration import RegistrationConfig, Target, register

VOXEL = 1.0


def small_gicp_staged(source, target):
    config = RegistrationConfig(voxel_m=VOXEL)
    return register(Target(source, config), Target(target, config), np.eye(4), config).T_target_source


def small_gicp_single(source, target):
    import small_gicp

    return small_gicp.align(target.astype(np.float64), source.astype(np.float64), registration_type="GICP",
                            downsampling_resolution=VOXEL, max_correspondence_distance=2.0, num_threads=1).T_target_source


def open3d_gicp(source, target):
    import open3d as o3d

    reg = o3d.pipelines.registration
    clouds = [o3d.geometry.PointCloud(o3d.utility.Vector3dVector(c.astype(np.float64))) for c in (source, target)]
    return reg.registration_generalized_icp(clouds[0], clouds[1], 2.0, np.eye(4),
                                            reg.TransformationEstimationForGeneralizedICP(),
                                            reg.ICPConvergenceCriteria(max_iteration=30)).transformation


def open3d_point_to_plane(source, target):
    import open3d as o3d

    reg = o3d.pipelines.registration
    clouds = [o3d.geometry.PointCloud(o3d.utility.Vector3dVector(c.astype(np.float64))) for c in (source, target)]
    clouds[1].estimate_normals(o3d.geometry.KDTreeSearchParamKNN(10))
    return reg.registration_icp(clouds[0], clouds[1], 2.0, np.eye(4), reg.TransformationEstimationPointToPlane(),
                                reg.ICPConvergenceCriteria(max_iteration=30)).transformation


def kiss_icp_point_to_point(source, target):
    from kiss_icp.mapping import VoxelHashMap
    from kiss_icp.registration import Registration

    voxel_map = VoxelHashMap(voxel_size=VOXEL, max_distance=100.0, max_points_per_voxel=20)
    voxel_map.add_points(target.astype(np.float64))
    registration = Registration(max_num_iterations=500, convergence_criterion=1e-4, max_num_threads=1)
    return registration.align_points_to_map(source.astype(np.float64), voxel_map, np.eye(4), 2.0 * 3, 2.0 / 3)


METHODS = {"small_gicp GICP, coarse-to-fine (this project)": small_gicp_staged, "small_gicp GICP, one stage": small_gicp_single,
           "Open3D GICP": open3d_gicp, "Open3D point-to-plane ICP": open3d_point_to_plane,
           "kiss-icp point-to-point (robust kernel)": kiss_icp_point_to_point}


def pairs(queries, keyframes, count):
    distance = place_distances(queries.poses, keyframes.poses, queries.ground_axes)
    for i in range(len(queries)):
        near = np.flatnonzero(distance[i] < 10)
        if not len(near):
            continue
        far = np.flatnonzero(distance[i] > 50)
        for label, j in (("nearest", near[np.argmin(distance[i][near])]), ("<10 m", near[np.argmax(distance[i][near])]),
                         ("wrong place", far[i % len(far)])):
            yield label, i, int(j)
        count -= 1
        if not count:
            return


def main(root_q: str, root_m: str, count: int) -> None:
    queries, keyframes = KittiSequence(root_q, "00"), KittiSequence(root_m, "00")
    T_cam_sensor = queries.calib.T_cam_sensor
    rows = {name: [] for name in METHODS}
    for label, i, j in pairs(queries, keyframes, count):
        source = voxel_downsample(queries[i].points, VOXEL)
        target = voxel_downsample(keyframes[j].points, VOXEL)
        truth = np.linalg.inv(keyframes.poses[j] @ T_cam_sensor) @ queries.poses[i] @ T_cam_sensor
        for name, method in METHODS.items():
            start = time.process_time()
            T = method(source, target)
            ms = (time.process_time() - start) * 1e3
            error = np.linalg.inv(truth) @ np.asarray(T)
            angle = np.degrees(np.arccos(np.clip((np.trace(error[:3, :3]) - 1) / 2, -1, 1)))
            rows[name].append((label, np.linalg.norm(error[:3, 3]) < 0.2 and angle < 1.0, ms, np.linalg.norm(error[:3, 3])))
    print("| method | solved, nearest keyframe | solved, farthest within 10 m | CPU ms p50 (all pairs) | CPU ms p95 | error p50 of solved (m) |")
    print("|---|---|---|---|---|---|")
    for name, result in rows.items():
        solved = {label: np.mean([ok for lab, ok, _, _ in result if lab == label]) for label in ("nearest", "<10 m")}
        ms = [r[2] for r in result]
        errors = [r[3] for r in result if r[1]]
        print(f"| {name} | {solved['nearest']:.2f} | {solved['<10 m']:.2f} | {np.median(ms):.1f} | {np.percentile(ms, 95):.1f} | "
              f"{np.median(errors):.3f} |")
    print(f"\n{len(rows[next(iter(rows))]) // 3} queries x 3 pairs")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 30)
