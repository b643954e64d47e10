"""`cmirl bench soak` (also `python bench/soak.py`): the localizer node over a long run, then overloaded.

Soak: KITTI-size images at `--rate` (10 Hz) for `--duration` s (600) into a node process; its
resident memory (VmRSS from /proc) is sampled every `--sample-every` s. Growth compares the last
sample with the first one taken after `--warmup` s (allocator pools and lazy buffers settle during
the first queries). Overload: images at `--overload-rate` (60 Hz, far above what inference
sustains on a CPU) for `--overload-seconds`: the node's latest-only slot must hold, i.e. the
`dropped` count of /diagnostics rises while the stamp->match latency stays bounded (p95 within
`BOUNDED_RATIO` x the soak's p95) instead of growing with a queue.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

HELP = "soak + overload of the node: RSS growth over a long run at 10 Hz, latency and drops at 60 Hz"
BOUNDED_RATIO = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="cmirl_driving", help="shipped model, checkpoint path, or model config")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the node")
    parser.add_argument("--duration", type=float, default=600.0, help="soak duration (s)")
    parser.add_argument("--rate", type=float, default=10.0, help="soak input rate (Hz)")
    parser.add_argument("--warmup", type=float, default=30.0, help="s of soak before the RSS baseline sample")
    parser.add_argument("--sample-every", type=float, default=5.0, help="s between RSS samples")
    parser.add_argument("--overload-rate", type=float, default=60.0, help="overload input rate (Hz)")
    parser.add_argument("--overload-seconds", type=float, default=20.0, help="overload duration (s)")
    parser.add_argument("--json", type=Path, default=Path("bench/soak.json"), help="write the figures here")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"process {pid} has no VmRSS")


class RssSampler:
    """Called before every publish; records (seconds since start, RSS KiB) every `every` s."""

    def __init__(self, pid: int, every: float):
        self.pid, self.every = pid, every
        self.start = time.monotonic()
        self.samples: list[tuple[float, int]] = []

    def __call__(self) -> None:
        elapsed = time.monotonic() - self.start
        if not self.samples or elapsed - self.samples[-1][0] >= self.every:
            self.samples.append((round(elapsed, 1), rss_kib(self.pid)))

    def growth(self, warmup: float) -> dict:
        settled = [s for s in self.samples if s[0] >= warmup] or self.samples[-1:]
        base, last = settled[0], self.samples[-1]
        return {"baseline_at_s": base[0], "baseline_mib": round(base[1] / 1024, 1), "last_at_s": last[0],
                "last_mib": round(last[1] / 1024, 1), "peak_mib": round(max(s[1] for s in self.samples) / 1024, 1),
                "growth_percent": round(100.0 * (last[1] - base[1]) / base[1], 3)}


def run(args: argparse.Namespace) -> int:
    from cmirl_ros.ros.node_bench import node_harness, prepare

    if min(args.duration, args.rate, args.overload_rate, args.overload_seconds, args.sample_every) <= 0:
        raise ValueError("--duration, --rate, --overload-rate, --overload-seconds and --sample-every must be > 0")
    work, model_ref, model, frames, map_dir = prepare(args.model, args.threads, "soak")
    del model  # the node process loads its own copy
    with node_harness(model_ref, map_dir, frames, args.threads, work, stats_window=args.overload_seconds) as h:
        sampler = RssSampler(h.process.process.pid, args.sample_every)
        print(f"bench soak: {args.duration:.0f} s at {args.rate:g} Hz, RSS of the node every {args.sample_every:g} s")
        soak = h.run_rate(args.rate, args.duration, tick=sampler)
        sampler()
        soak["dropped"] = int(h.diagnostics[-1]["dropped"])
        soak["rss"] = sampler.growth(args.warmup)
        print(f"bench soak: overload at {args.overload_rate:g} Hz for {args.overload_seconds:g} s")
        overload = h.run_rate(args.overload_rate, args.overload_seconds)
        overload["dropped"] = int(h.diagnostics[-1]["dropped"]) - soak["dropped"]
        overload["encode_ms_p50"] = float(h.diagnostics[-1]["encode_ms_p50"])
    result = {"model": args.model, "threads": args.threads, "load_average": round(os.getloadavg()[0], 2),
              "soak": {**soak, "rss_samples": sampler.samples}, "overload": overload,
              "latest_only_holds": latest_only_holds(soak, overload)}
    print(format_result(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"bench soak: figures written to {args.json}")
    return 0


def latest_only_holds(soak: dict, overload: dict) -> bool:
    """Under overload the node drops instead of queueing: drops rise, latency stays near the soak's."""
    return overload["dropped"] > 0 and overload["latency_ms_p95"] <= BOUNDED_RATIO * max(soak["latency_ms_p95"], 1.0)


def format_result(result: dict) -> str:
    soak, overload, rss = result["soak"], result["overload"], result["soak"]["rss"]
    return "\n".join([
        f"soak     {soak['rate_hz']:g} Hz x {soak['sent'] / soak['rate_hz']:.0f} s: answered "
        f"{100 * soak['answered_fraction']:.0f}% (dropped {soak['dropped']}), stamp->match p50 "
        f"{soak['latency_ms_p50']:.0f} ms, p95 {soak['latency_ms_p95']:.0f} ms",
        f"RSS      {rss['baseline_mib']} MiB at {rss['baseline_at_s']:g} s -> {rss['last_mib']} MiB at "
        f"{rss['last_at_s']:g} s: {rss['growth_percent']:+.2f} % (peak {rss['peak_mib']} MiB)",
        f"overload {overload['rate_hz']:g} Hz x {overload['sent'] / overload['rate_hz']:.0f} s: answered "
        f"{100 * overload['answered_fraction']:.0f}%, dropped {overload['dropped']}, stamp->match p50 "
        f"{overload['latency_ms_p50']:.0f} ms, p95 {overload['latency_ms_p95']:.0f} ms, max "
        f"{overload['latency_ms_max']:.0f} ms (forward p50 {overload['encode_ms_p50']:.0f} ms)",
        f"latest-only slot holds (drops rise, p95 <= {BOUNDED_RATIO:g}x the soak's): {result['latest_only_holds']}",
    ])
