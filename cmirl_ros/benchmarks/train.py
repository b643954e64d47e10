"""`cmirl bench train`: training throughput of a training config, the engine against today's trainer.

Both run in one process on the same data, model and initial weights, step for step in turn (so
that load from other processes hits both alike). The baseline is the same `Trainer` with the
engine's levers switched off (`BASELINE_LEVERS`): frames decoded and projected in memory (a moved
cloud re-read and re-projected), every cache negative encoded again with gradients, Adam unfused.

Figures per step: wall and CPU seconds (CPU: all threads of this process), split into data,
forward, backward + optimizer, mining, and the descriptor-cache refresh. The refresh (every
`steps_per_epoch` steps, all training frames) is timed on one cache batch and spread over the
steps it serves; the descriptor cache is filled with random unit vectors (its content does not
change a step's cost). Every trainer gets the same modality at each step. One-off costs
(building the preprocessing cache, the baseline's first decoding of every frame) are reported
apart.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from dataclasses import replace
from pathlib import Path

from cmirl_ros.atomic import atomic_write_text

HELP = "train: triplets/s and s/step of a training config, engine vs today's trainer (breakdown by phase)"
BASELINE_LEVERS = {"memory_negatives": False, "fused_optimizer": False, "frame_cache": False, "freeze_stages": 0,
                   "accumulate_steps": 1}
PHASES = ("data", "forward", "backward", "mining", "cache_refresh")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config: a name under config/train/ or a .yaml path")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per trainer (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (interop: 1)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    parser.add_argument("--baseline", action="store_true", help="time today's trainer only (no engine)")
    parser.add_argument("--freeze-stages", type=int, default=None,
                        help="also time the engine with the trunk stem + this many blocks frozen")
    parser.add_argument("--cache-dir", type=Path, default=None, help="preprocessing cache root")


def _make_trainer(name, model, dataset, cfg, settings, rule, args, workdir: Path):
    import numpy as np
    import torch

    from cmirl_ros.training.cli import training_frames
    from cmirl_ros.training.trainer import Trainer

    started = time.perf_counter()
    frames = training_frames(dataset, model, cfg, settings, args.cache_dir, progress=True)
    if not settings.frame_cache:  # today's trainer keeps decoded frames in memory after their first use
        for i in range(len(frames)):
            frames.image(i)
    trainer = Trainer(model, frames, rule, settings, workdir / name, torch.device("cpu"), save_model=lambda *a: None)
    setup_s = time.perf_counter() - started  # with the feature cache's build, if any
    rng = np.random.default_rng(0)
    n, dim = len(frames), model.descriptor_dim
    for attr in ("cache_query", "cache_map"):
        table = rng.standard_normal((n, dim)).astype(np.float32)
        setattr(trainer, attr, table / np.linalg.norm(table, axis=1, keepdims=True))
    trainer.step = settings.mining_warmup_steps  # hardest-negative mining, as after the warm-up
    return trainer, setup_s


def _refresh_seconds(trainers: dict, repeats: int = 3) -> dict[str, tuple[float, float]]:
    """Wall and CPU seconds per step of each trainer's descriptor-cache refresh: one cache batch timed
    `repeats` times in turn (the least disturbed time kept), scaled to all frames and spread over
    the `steps_per_epoch` steps a refresh serves."""
    times = {name: [] for name in trainers}
    for _ in range(repeats):
        for name, trainer in trainers.items():
            wall, cpu = time.perf_counter(), time.process_time()
            trainer._encode(trainer.frames, trainer.features, False, "", limit=trainer.settings.cache_batch_size)
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    out = {}
    for name, trainer in trainers.items():
        scale = len(trainer.frames) / min(len(trainer.frames), trainer.settings.cache_batch_size)
        scale /= trainer.settings.steps_per_epoch
        out[name] = (min(w for w, _ in times[name]) * scale, min(c for _, c in times[name]) * scale)
    return out


def _summary(trainer, steps: int, wall: float, cpu: float, setup_s: float, refresh: tuple[float, float]) -> dict:
    s = trainer.settings
    refresh_wall, refresh_cpu = refresh
    step_wall, step_cpu = wall / steps + refresh_wall, cpu / steps + refresh_cpu
    timer = trainer.timer
    breakdown = {p: timer.wall.get(p, 0.0) / steps * 1000 for p in PHASES[:-1]}
    breakdown_cpu = {p: timer.cpu.get(p, 0.0) / steps * 1000 for p in PHASES[:-1]}
    breakdown["cache_refresh"], breakdown_cpu["cache_refresh"] = refresh_wall * 1000, refresh_cpu * 1000
    triplets = s.batch_size * s.accumulate_steps
    return {
        "triplets_per_step": triplets,
        "seconds_per_step": round(step_wall, 3),
        "cpu_seconds_per_step": round(step_cpu, 3),
        "triplets_per_s": round(triplets / step_wall, 3),
        "triplets_per_cpu_s": round(triplets / step_cpu, 3),
        "breakdown_ms": {k: round(v, 1) for k, v in breakdown.items()},
        "breakdown_cpu_ms": {k: round(v, 1) for k, v in breakdown_cpu.items()},
        "setup_s": round(setup_s, 1),
        "levers": {**{k: getattr(s, k) for k in (*BASELINE_LEVERS, "cloud_variants", "image_variants")},
                   "feature_cache": trainer.features is not None},  # what the arm ran with
    }


def _time_round_robin(trainers: dict, steps: int) -> dict[str, tuple[float, float]]:
    """Seconds (wall, CPU) of `steps` steps per trainer, in turn; every trainer gets the same modality
    at each step (an image+depth step costs about twice an image step), drawn by the config's weights."""
    import numpy as np

    from cmirl_ros.training.trainer import PhaseTimer

    first = next(iter(trainers.values()))
    names = list(first.settings.modality_weights)
    weights = np.array([first.settings.modality_weights[k] for k in names], dtype=np.float64)
    schedule = np.random.default_rng(0).choice(len(names), size=steps + 1, p=weights / weights.sum())
    for trainer in trainers.values():  # warm-up: allocator, thread pools, first-touch of the cache
        trainer._draw_modality = lambda: names[schedule[0]]
        trainer.train_step()
        trainer.timer = PhaseTimer()
    totals = {name: [0.0, 0.0] for name in trainers}
    for step in range(1, steps + 1):
        for name, trainer in trainers.items():
            trainer._draw_modality = lambda modality=names[schedule[step]]: modality
            wall, cpu = time.perf_counter(), time.process_time()
            trainer.train_step()
            totals[name][0] += time.perf_counter() - wall
            totals[name][1] += time.process_time() - cpu
    return {name: (w, c) for name, (w, c) in totals.items()}


def run(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from cmirl_ros.config import load_yaml, resolve_config
    from cmirl_ros.models import build_model
    from cmirl_ros.training.cli import model_config, open_data
    from cmirl_ros.training.pairs import PairRule
    from cmirl_ros.training.trainer import TrainSettings

    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.threads:
        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(1)
    config_path = resolve_config(args.config, "train")
    cfg = load_yaml(config_path)
    settings = TrainSettings.from_config(cfg)
    settings.init_centroids = 0
    no_flags = argparse.Namespace(dataset=None, root=None, seq=None, frames=None)
    dataset, _, _ = open_data(cfg, no_flags, config_path)
    rule = PairRule.from_config(cfg.get("pairs") or {})
    torch.manual_seed(settings.seed)
    model = build_model(model_config(cfg["model"], config_path))

    arms = {"baseline": replace(settings, **BASELINE_LEVERS)}
    if not args.baseline:
        arms["engine"] = settings
        if args.freeze_stages:  # the frozen part run live every step, and read from the feature cache
            arms["engine_frozen_live"] = replace(settings, freeze_stages=args.freeze_stages, feature_cache=False)
            arms["engine_frozen"] = replace(settings, freeze_stages=args.freeze_stages, feature_cache=True)
    with tempfile.TemporaryDirectory() as workdir:
        built = {name: _make_trainer(name, copy.deepcopy(model), dataset, cfg, s, rule, args, Path(workdir))
                 for name, s in arms.items()}
        trainers = {name: trainer for name, (trainer, _) in built.items()}
        totals = _time_round_robin(trainers, args.steps)
        refresh = _refresh_seconds(trainers)
        arms_out = {name: _summary(trainers[name], args.steps, *totals[name], built[name][1], refresh[name])
                    for name in arms}

    main = arms_out.get("engine", arms_out["baseline"])
    base = arms_out["baseline"]
    for arm in arms_out.values():  # each arm against today's trainer, per CPU-second
        arm["speedup"] = round(arm["triplets_per_cpu_s"] / base["triplets_per_cpu_s"], 2)
    result = {
        "config": config_path.stem,
        "model": model.name,
        "input": [model.preprocessing.height, model.preprocessing.width],
        "frames": len(dataset),
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "triplets_per_s": main["triplets_per_s"],
        "baseline_triplets_per_s": base["triplets_per_s"],
        # Per CPU-second (the issue's measure; robust to other processes' load); the wall ratio beside it.
        "speedup": round(main["triplets_per_cpu_s"] / base["triplets_per_cpu_s"], 2),
        "speedup_wall": round(main["triplets_per_s"] / base["triplets_per_s"], 2),
        "breakdown_ms": main["breakdown_ms"],
        "baseline_breakdown_ms": base["breakdown_ms"],
        "arms": arms_out,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    _print(result)
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _print(result: dict) -> None:
    print(f"{result['config']} ({result['model']}, input {result['input'][0]}x{result['input'][1]}, "
          f"{result['frames']} frames), {result['steps']} steps, {result['threads']} threads, "
          f"load average {result['load_average_1min']}")
    print(f"  {'':<18s} {'trip/s':>7s} {'trip/CPU-s':>10s} {'speedup':>7s} {'s/step':>7s}  CPU ms/step: "
          + " ".join(f"{p:>13s}" for p in PHASES))
    for name, arm in result["arms"].items():
        phases = " ".join(f"{arm['breakdown_cpu_ms'][p]:13.0f}" for p in PHASES)
        print(f"  {name:<18s} {arm['triplets_per_s']:7.2f} {arm['triplets_per_cpu_s']:10.2f} {arm['speedup']:7.2f} "
              f"{arm['seconds_per_step']:7.2f}               {phases}")
    print(f"  speedup {result['speedup']}x per CPU-second ({result['speedup_wall']}x wall)")
