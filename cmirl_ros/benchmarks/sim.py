"""`cmirl bench sim`: simulator throughput (image + full LiDAR scan per frame, written as KITTI files).

Per-stage medians come from one process (camera, LiDAR, writing); end-to-end frames/s from
`simulate_sequence` with 1 worker (the same-run baseline) and with `--workers` processes.
CPU seconds per frame are reported too: on a shared machine they predict the rate on idle
cores better than wall time does (frames/s on 2 free cores ~ 2 / CPU s per frame).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HELP = "simulator: frames/s for image + LiDAR scan (1 worker baseline vs --workers), per-stage medians"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=int, default=1241)
    parser.add_argument("--height", type=int, default=376)
    parser.add_argument("--frames", type=int, default=24, help="frames per end-to-end run (and per-stage timing)")
    parser.add_argument("--workers", type=int, default=2, help="processes of the parallel run")
    parser.add_argument("--condition", default="day")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")


def _median_ms(seconds: list[float]) -> float:
    return round(float(np.median(seconds)) * 1e3, 1)


def _frames_per_second(config, world, frames: str) -> float:
    """Wall-clock rate of `simulate_sequence` writing `frames` (world already built)."""
    from cmirl_ros.sim.sequence import Simulator, simulate_sequence

    simulator = Simulator(replace(config, frames=frames), world=world)
    with tempfile.TemporaryDirectory(prefix="cmirl-bench-sim-") as root:
        wall = time.perf_counter()
        simulate_sequence(simulator.config, root, "00", progress=False, simulator=simulator)
        wall = time.perf_counter() - wall
    return round(len(simulator.frames) / wall, 2)


def _stage_times(simulator, frames: range) -> dict[str, list]:
    """Wall time of each stage and CPU time of each whole frame, in one process."""
    from cmirl_ros.sim.sequence import SimFrame, write_frame

    times = {"camera": [], "lidar": [], "write": [], "cpu": [], "points": []}
    with tempfile.TemporaryDirectory(prefix="cmirl-bench-sim-") as root:
        out = Path(root)
        (out / "image_2").mkdir()
        (out / "velodyne").mkdir()
        simulator.render(frames[0] - 1)  # warm-up: scene build and ray tables
        for k, index in enumerate(frames):
            cpu = time.process_time()
            t0 = time.perf_counter()
            image = simulator.render_image(index)
            t1 = time.perf_counter()
            scan = simulator.scan(index)
            t2 = time.perf_counter()
            write_frame(out, k, SimFrame(image.image, image.depth, scan))
            times["write"].append(time.perf_counter() - t2)
            times["cpu"].append(time.process_time() - cpu)
            times["camera"].append(t1 - t0)
            times["lidar"].append(t2 - t1)
            times["points"].append(len(scan))
    return times


def run(args: argparse.Namespace) -> int:
    from cmirl_ros.sim.sequence import SimConfig, Simulator

    config = SimConfig(trajectory="loop", condition=args.condition, width=args.width, height=args.height, workers=1)
    wall = time.perf_counter()
    simulator = Simulator(config)
    world_s = time.perf_counter() - wall
    stages = _stage_times(simulator, range(100, 100 + args.frames))
    # End-to-end: distinct frame ranges so neither run reuses the other's scene.
    baseline = _frames_per_second(replace(config, workers=1), simulator.world, f"200:{200 + args.frames}")
    parallel = _frames_per_second(replace(config, workers=args.workers), simulator.world, f"400:{400 + args.frames}")
    cpu_per_frame = float(np.median(stages["cpu"]))
    figures = {
        "resolution": f"{args.width}x{args.height}",
        "condition": args.condition,
        "triangles": int(len(simulator.world.static.faces)),
        "world_build_s": round(world_s, 2),
        "camera_ms_median": _median_ms(stages["camera"]),
        "lidar_ms_median": _median_ms(stages["lidar"]),
        "write_ms_median": _median_ms(stages["write"]),
        "cpu_s_per_frame_median": round(cpu_per_frame, 3),
        "points_per_scan_median": int(np.median(stages["points"])),
        "fps_1_worker": baseline,
        f"fps_{args.workers}_workers": parallel,
        "speedup_vs_1_worker": round(parallel / baseline, 2),
        "fps_2_idle_cores_from_cpu_time": round(2.0 / cpu_per_frame, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    for key, value in figures.items():
        print(f"{key:32s} {value}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0
