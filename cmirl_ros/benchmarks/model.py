"""`cmirl bench model`: parameters and per-query latency of a model config, after warm-up.

The baseline measured in the same run is the RGB trunk alone (the part every query pays), so
the printed ratio shows what alignment, the depth stream, fusion and aggregation add.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from cmirl_ros.atomic import atomic_write_text

HELP = "model: parameter count and latency (p50 after warm-up) of a model config"
MODALITIES = ("image+depth", "image", "depth")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="model config name (config/models/) or YAML path")
    parser.add_argument("--height", type=int, default=None, help="input height (default: the config's)")
    parser.add_argument("--width", type=int, default=None, help="input width (default: the config's)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu or cuda")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1: one query)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")


def _synthetic_inputs(batch: int, height: int, width: int, max_depth: float, device):
    """A normalised image and a LiDAR-like sparse depth: every other row of the lower 60%, 40% of columns."""
    import torch

    generator = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 3, height, width, generator=generator)
    depth = torch.rand(batch, 1, height, width, generator=generator) * max_depth
    keep = torch.rand(batch, 1, height, width, generator=generator) < 0.4
    keep[:, :, : int(height * 0.4)] = False
    keep[:, :, 1::2] = False
    return image.to(device), (depth * keep).to(device)


def _p50_ms(fns: dict, warmup: int, repeats: int, synchronize) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall time and median process CPU time (all threads) of each function, in ms.

    Measured round-robin, so that load from other processes hits all of them alike; the CPU
    time barely moves with that load, the wall time does."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            synchronize()
            wall[name].append((time.perf_counter() - start) * 1000.0)
            cpu[name].append((time.process_time() - start_cpu) * 1000.0)
    return ({name: statistics.median(t) for name, t in wall.items()},
            {name: statistics.median(t) for name, t in cpu.items()})


def run(args: argparse.Namespace) -> int:
    import torch

    from cmirl_ros.models import build_model, resolve_device
    from cmirl_ros.models.describer import autocast_for

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup < 0 or args.repeats < 1 or args.batch < 1:
        raise ValueError("--warmup must be >= 0, --repeats and --batch >= 1")
    device = resolve_device(args.device)
    model = build_model(args.config, load_pretrained=False).to(device).eval()  # weights do not change timing
    height = args.height or model.preprocessing.height
    width = args.width or model.preprocessing.width
    image, depth = _synthetic_inputs(args.batch, height, width, model.preprocessing.max_depth, device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    inputs = {"image+depth": dict(image=image, depth=depth), "image": dict(image=image), "depth": dict(depth=depth)}

    fns = {"baseline": lambda: model.encoder.encode_image(image)}
    fns.update({modality: (lambda kw=inputs[modality]: model(**kw)) for modality in MODALITIES})
    with torch.inference_mode(), autocast_for(device):
        latencies, cpu_times = _p50_ms(fns, args.warmup, args.repeats, synchronize)
    baseline = latencies.pop("baseline")
    baseline_cpu = cpu_times.pop("baseline")

    result = {
        "config": model.name,
        "params_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 3),
        "latency_ms_p50": round(latencies["image+depth"], 2),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "input": [height, width],
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "latency_ms_p50_by_modality": {k: round(v, 2) for k, v in latencies.items()},
        "cpu_ms_p50_by_modality": {k: round(v, 2) for k, v in cpu_times.items()},
        "baseline_rgb_trunk_ms_p50": round(baseline, 2),
        "baseline_rgb_trunk_cpu_ms_p50": round(baseline_cpu, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "descriptor_dim": model.descriptor_dim,
    }
    print(f"{model.name}: {result['params_m']:.2f} M params, input {height}x{width}, batch {args.batch}, "
          f"{result['device']} ({result['threads']} threads)")
    print(f"  {'':<20s} {'wall p50':>10s} {'CPU p50':>10s}  (CPU time: all threads; load average {os.getloadavg()[0]:.1f})")
    print(f"  {'RGB trunk (baseline)':<20s} {baseline:7.1f} ms {baseline_cpu:7.1f} ms")
    for modality, ms in latencies.items():
        print(f"  {modality:<20s} {ms:7.1f} ms {cpu_times[modality]:7.1f} ms  ({ms / baseline:4.2f}x baseline wall)")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
