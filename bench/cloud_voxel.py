"""Keyframe-cloud voxel size: registration accuracy, speed and acceptance vs size (docs/mapdb.md).

Queries of 00's test part (ROOT_Q) against keyframes of 00's first part (ROOT_M): each query is
registered to its nearest keyframe, to the farthest keyframe within 10 m and to one over 50 m
away; a result is solved within 1 m of the ground-truth relative pose and its error is reported.

    python bench/cloud_voxel.py out/sim/cond_day out/sim/train_day 30 0.5 1.5 1.0
    python bench/cloud_voxel.py out/sim/cond_day out/sim/train_day 30 1.0 2.0 2.0
    python bench/cloud_voxel.py out/sim/cond_day out/sim/train_day 30 1.5 3.0 3.0
(arguments: queries, voxel, coarse voxel, fine correspondence gate)
"""
from __future__ import annotations

import sys
import time

import numpy as np

from cmirl_ros.datasets.kitti import KittiSequence
from cmirl_ros.geometry.clouds import voxel_downsample
from cmirl_ros.geometry.poses import place_distances
from cmirl_ros.geometry.registration import RegistrationConfig, Target, prepare_query, register


def main(root_q: str, root_m: str, count: int, voxel: float, coarse_voxel: float, gate: float) -> None:
    queries, keyframes = KittiSequence(root_q, "00"), KittiSequence(root_m, "00")
    T_cam_sensor = queries.calib.T_cam_sensor
    config = RegistrationConfig(voxel_m=voxel, coarse_voxel_m=coarse_voxel, correspondence_m=gate)
    distance = place_distances(queries.poses, keyframes.poses, queries.ground_axes)
    rows, sizes = [], []
    for i in range(len(queries)):
        near = np.flatnonzero(distance[i] < 10)
        if not len(near):
            continue
        far = np.flatnonzero(distance[i] > 50)
        source = prepare_query(queries[i].points, config)
        for label, j in (("nearest", near[np.argmin(distance[i][near])]), ("within 10 m", near[np.argmax(distance[i][near])]),
                         ("wrong place", far[i % len(far)])):
            cloud = voxel_downsample(keyframes[j].points, voxel)
            sizes.append(len(cloud))
            start = time.process_time()
            result = register(source, Target(cloud, config), np.eye(4), config)
            ms = (time.process_time() - start) * 1e3  # keyframe preparation excluded: the verifier caches it
            truth = np.linalg.inv(keyframes.poses[j] @ T_cam_sensor) @ queries.poses[i] @ T_cam_sensor
            error = np.linalg.norm((np.linalg.inv(truth) @ result.T_target_source)[:3, 3])
            rows.append((label, error < 1.0, result.accepted, error, ms))
        if len(rows) >= 3 * count:
            break
    print(f"voxel {voxel} m: {np.mean(sizes):.0f} points / keyframe ({6 * np.mean(sizes) / 1e3:.0f} KB)")
    for label in ("nearest", "within 10 m", "wrong place"):
        part = [r for r in rows if r[0] == label]
        solved = np.array([r[1] for r in part])
        accepted = np.array([r[2] for r in part])
        print(f"  {label}: solved {solved.mean():.2f}, accepted {accepted.mean():.2f}, false accepts {(accepted & ~solved).sum()}, "
              f"error p50 (solved) {np.median([r[3] for r in part if r[1]] or [np.nan]):.3f} m, "
              f"CPU ms p50 {np.median([r[4] for r in part]):.0f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *(float(a) for a in sys.argv[4:7]))
