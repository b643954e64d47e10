"""`cmirl bench verify`: registration cost per candidate and query latency with verification.

A short stretch of the simulator's `loop` route (KITTI 00-02 calibration, 64-beam LiDAR) is
rendered into a temporary KITTI directory; a map with keyframe clouds is built from it by
`build_map`, as `cmirl map build` does. Each query frame is then
- registered against its `--candidates` best-ranked keyframes one by one (wall ms per candidate,
  accepted or not: most candidates of a loop-closure query are wrong places, which cost the most;
  CPU ms beside it, all threads summed, which a shared machine distorts less than wall time),
- localized with image + scan and `verify registration` for k = 1, 5, 10 candidates, beside the
  bare model forward (`encode`) of the same run.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HELP = "registration verification: ms per candidate (p50/p95), query latency with k = 1, 5, 10 candidates"
KS = (1, 5, 10)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="cmirl_driving", help="shipped model name or checkpoint")
    parser.add_argument("--frames", default="60:240:3", help="frames of the loop route that make the map (A:B:STEP)")
    parser.add_argument("--queries", type=int, default=12, help="query frames (between the map's frames)")
    parser.add_argument("--candidates", type=int, default=10, help="candidates registered per query for the per-candidate figure")
    parser.add_argument("--threads", type=int, default=2, help="torch and registration threads")
    parser.add_argument("--width", type=int, default=414)
    parser.add_argument("--height", type=int, default=126)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")


def run(args: argparse.Namespace) -> int:
    import torch

    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.mapdb import build_map
    from cmirl_ros.mapdb.clouds import DEFAULT_VOXEL_M
    from cmirl_ros.models import load_model
    from cmirl_ros.sim import SimConfig, Simulator, simulate_sequence

    torch.set_num_threads(args.threads)
    start, stop, step = (int(x) for x in args.frames.split(":"))
    query_step = max(1, (stop - start) // args.queries)
    config = SimConfig(trajectory="loop", width=args.width, height=args.height, seed=0, workers=1)
    map_sim = Simulator(replace(config, frames=f"{start}:{stop}:{step}"))
    query_sim = Simulator(replace(config, frames=f"{start + 1}:{stop}:{query_step}"), world=map_sim.world)
    model = load_model(args.model, device="cpu")
    with tempfile.TemporaryDirectory(prefix="cmirl-bench-verify-") as root:
        simulate_sequence(map_sim.config, root, "00", progress=False, simulator=map_sim)
        simulate_sequence(query_sim.config, root, "01", progress=False, simulator=query_sim)
        mapdb = build_map(KittiSequence(Path(root), "00"), model, cloud_voxel=DEFAULT_VOXEL_M, progress=False)
        queries = KittiSequence(Path(root), "01")
        frames = [queries[i] for i in range(len(queries))]
    figures = {"model": model.name, "threads": args.threads, "map_keyframes": len(mapdb), "queries": len(frames),
               "cloud_voxel_m": DEFAULT_VOXEL_M, "scan_points_p50": int(np.median([len(f.points) for f in frames])),
               "registration": _per_candidate(model, mapdb, frames, args),
               "latency_ms": _latency(model, mapdb, frames, args)}
    print(json.dumps(figures, indent=2))
    if args.json:
        from cmirl_ros.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(figures, indent=2) + "\n")
    return 0


def _per_candidate(model, mapdb, frames, args) -> dict:
    """Wall ms of one registration (query scan prepared once, keyframe cloud prepared once, as the
    verifier caches them), over every query's top `--candidates` keyframes."""
    from cmirl_ros.geometry.registration import Target, prepare_query, register
    from cmirl_ros.localization import Localizer, LocalizerConfig

    retrieval = Localizer(model, mapdb, LocalizerConfig(top_k=args.candidates), check_model=False)
    config = LocalizerConfig(registration_threads=args.threads).registration_config(mapdb.clouds.voxel_m)
    targets = {i: Target(mapdb.clouds.cloud(i), config) for i in range(len(mapdb))}
    ms, cpu_ms, prepare_ms, accepted = [], [], [], []
    for frame in frames:
        ids = [m.keyframe_id for m in retrieval.localize(frame.image, frame.points, frame.stamp, frame.calib).matches]
        t0 = time.perf_counter()
        source = prepare_query(frame.points, config)
        prepare_ms.append((time.perf_counter() - t0) * 1e3)
        for i in ids:
            t0, c0 = time.perf_counter(), time.process_time()
            result = register(source, targets[i], np.eye(4), config)
            ms.append((time.perf_counter() - t0) * 1e3)
            cpu_ms.append((time.process_time() - c0) * 1e3)
            accepted.append(result.accepted)
    return {"ms_per_candidate_p50": round(float(np.median(ms)), 2), "ms_per_candidate_p95": round(float(np.percentile(ms, 95)), 2),
            "cpu_ms_per_candidate_p50": round(float(np.median(cpu_ms)), 2),
            "prepare_query_ms_p50": round(float(np.median(prepare_ms)), 2), "candidates": len(ms),
            "accepted_share": round(float(np.mean(accepted)), 3)}


def _latency(model, mapdb, frames, args) -> dict:
    """Median ms per stage of `Localizer.localize(image, scan)`: no verification, then k candidates."""
    from cmirl_ros.localization import Localizer, LocalizerConfig

    out = {}
    for k in (0, *KS):
        config = LocalizerConfig(top_k=max(k, 1), verify="registration" if k else "none", verify_candidates=max(k, 1),
                                 registration_threads=args.threads)
        localizer = Localizer(model, mapdb, config, check_model=False)
        runs = []
        for frame in [frames[0], *frames]:  # the first query warms up (and fills the keyframe cloud cache)
            runs.append(localizer.localize(frame.image, frame.points, frame.stamp, frame.calib).timings_ms)
        runs = runs[1:]
        stages = {stage: round(float(np.median([r.get(stage, 0.0) for r in runs])), 2)
                  for stage in ("preprocess", "encode", "search", "verify")}
        stages["total"] = round(float(np.median([sum(r.values()) for r in runs])), 2)
        out["no_verification" if not k else f"k={k}"] = stages
    return out
