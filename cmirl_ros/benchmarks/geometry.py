"""`cmirl bench geometry`: FoV projection + densification of a 120k-point scan on one core.

Baseline (same run, interleaved so both see the same load): a straightforward float64 implementation with a sort-based z-buffer,
the way projection is usually written; the ratio shows what the vectorised float32 path buys.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

HELP = "projection + densification latency at 128x800 and 376x1241 (median ms, one core)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")


def synthetic_hdl64_scan(seed: int = 0) -> np.ndarray:
    """64 beams x 1875 azimuths (~120k points): ground plane 1.73 m below, walls 8-40 m away."""
    rng = np.random.default_rng(seed)
    elevation = np.radians(np.linspace(2.0, -24.8, 64))[:, None]
    azimuth = np.linspace(-np.pi, np.pi, 1875, endpoint=False)[None, :]
    wall = 8.0 + 32.0 * (0.5 + 0.5 * np.sin(3 * azimuth)) + rng.uniform(0, 2, (64, 1875))
    ground = np.where(elevation < 0, 1.73 / np.maximum(np.sin(-elevation), 1e-6), np.inf)
    r = np.minimum(wall / np.cos(elevation), ground)
    x = r * np.cos(elevation) * np.cos(azimuth)
    y = r * np.cos(elevation) * np.sin(azimuth)
    z = r * np.sin(elevation) * np.ones_like(azimuth)
    return np.stack([x, y, z, rng.uniform(0, 1, x.shape)], axis=-1).reshape(-1, 4).astype(np.float32)


def _reference_projection(points, T, camera):
    cam = points[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]
    cam = cam[cam[:, 2] > 0.1]
    uv, z = camera.project(cam)
    u, v = np.floor(uv[:, 0] + 0.5).astype(int), np.floor(uv[:, 1] + 0.5).astype(int)
    keep = (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)
    pixel, z = v[keep] * camera.width + u[keep], z[keep]
    order = np.lexsort((z, pixel))
    pixel, z = pixel[order], z[order]
    first = np.r_[True, pixel[1:] != pixel[:-1]]
    depth = np.zeros(camera.width * camera.height)
    depth[pixel[first]] = z[first]
    return depth.reshape(camera.height, camera.width).astype(np.float32)


def _pin_to_one_core() -> None:
    """Every thread of this process (BLAS pools included) on one core: the goal is per core."""
    core = {min(os.sched_getaffinity(0))}
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), core)


def _interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median wall and CPU ms of each function, run round-robin so that both see the same load."""
    for fn in fns.values():
        fn()  # warm-up
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return {name: (float(np.median(wall[name]) * 1e3), float(np.median(cpu[name]) * 1e3)) for name in fns}


def run(args: argparse.Namespace) -> int:
    import cv2

    from cmirl_ros.atomic import atomic_write_text
    from cmirl_ros.geometry import densify, project_to_depth
    from cmirl_ros.geometry.kitti_calib import kitti_00_02_calib
    from cmirl_ros.preprocess import Preprocessing

    cv2.setNumThreads(1)
    _pin_to_one_core()
    scan = synthetic_hdl64_scan()
    T_cam_velo = np.array([[0, -1, 0, 0], [0, 0, -1, -0.08], [1, 0, 0, -0.27], [0, 0, 0, 1.0]])
    full = kitti_00_02_calib().camera2
    cameras = {"128x800": Preprocessing(height=128, width=800).virtual_camera(full), "376x1241": full}
    results = {"points": len(scan)}
    for name, camera in cameras.items():
        figures = _interleaved_medians(
            {
                "ours": lambda: densify(project_to_depth(scan, T_cam_velo, camera)),
                "baseline": lambda: densify(_reference_projection(scan, T_cam_velo, camera)),
            },
            args.repeats,
        )
        (ours, ours_cpu), (base, base_cpu) = figures["ours"], figures["baseline"]
        results[name] = {
            "project_densify_ms_p50": ours,
            "project_densify_cpu_ms_p50": ours_cpu,
            "baseline_ms_p50": base,
            "baseline_cpu_ms_p50": base_cpu,
            "speedup": base / ours,
        }
        print(f"{name}: projection + densification {ours:.2f} ms wall, {ours_cpu:.2f} ms CPU "
              f"(baseline {base:.2f} ms wall, {base_cpu:.2f} ms CPU; {base / ours:.2f}x)")
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0
