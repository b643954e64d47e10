"""`cmirl demo`: the whole product on the embedded default, in one command.

Simulates (or reuses) the built-in driving sequence, builds a map with the shipped driving model,
writes the sequence as a rosbag2 (mcap), starts the localizer node as a separate process, replays
the bag into it over ROS 2, and prints what it answered: queries answered, Recall@1 and node
latency p50/p95; writes a PNG of the trajectory with the matches and, with --json, the summary.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "end-to-end demo: simulate, map, bag, run the node over ROS 2, score it"
SEQ = "00"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="working directory (reused between runs)")
    parser.add_argument("--model", default="cmirl_driving", help="shipped model name, checkpoint path, or model config")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--rate", type=float, default=1.0, help="bag playback speed factor")
    parser.add_argument("--fresh", action="store_true", help="re-simulate and rebuild everything")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    parser.add_argument("--keyframe-distance", type=float, default=2.0, help="map keyframe spacing (m)")


def run(args: argparse.Namespace) -> int:
    import shutil

    from cmirl_ros.ros.bag_eval import evaluate_bag

    if args.rate <= 0:
        raise ValueError(f"--rate must be > 0, got {args.rate}")
    out = args.out
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    model_ref, model = resolve_model(args.model, args.device, out)  # first: a bad name fails before any work
    sim_root = simulate(out)
    map_dir = build_or_reuse_map(sim_root, model, out, args.keyframe_distance)
    bag = write_or_reuse_bag(sim_root, out)
    print(f"demo: starting the localizer node and replaying {bag} (x{args.rate})")
    result = evaluate_bag(bag, map_dir, model_ref, rate=args.rate, device=args.device, workdir=out / "run", details=True)
    summary = summarize(result)
    plot = out / "trajectory.png"
    plot_matches(result, plot)
    print_summary(summary, plot)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"demo: summary written to {args.json}")
    return 0


def simulate(out: Path) -> Path:
    from cmirl_ros.sim.sequence import DEMO_SIM, simulate_sequence

    root = out / "sim"
    marker = root / "sequences" / SEQ / "times.txt"
    if marker.is_file() and (root / "poses" / f"{SEQ}.txt").is_file():
        print(f"demo: reusing the simulated sequence in {root}")
        return root
    print("demo: simulating the built-in driving sequence")
    simulate_sequence(DEMO_SIM, root, SEQ)
    return root


def resolve_model(name: str, device: str, out: Path):
    """(reference the node can load, model). A config name (untrained) is frozen into a checkpoint
    first: its random heads would differ between this process and the node's."""
    import torch

    from cmirl_ros.models import load_model
    from cmirl_ros.models.checkpoint import save_checkpoint
    from cmirl_ros.paths import models_dir

    path = Path(name)
    try:
        shipped = (models_dir() / name).is_dir()
    except FileNotFoundError:
        shipped = False
    if path.exists() or shipped:
        return name, load_model(name, device)
    torch.manual_seed(0)
    model = load_model(name, device)
    print(f"demo: '{name}' is not a shipped model or checkpoint; using its untrained config (matches will be poor)")
    frozen = out / "model" / name
    save_checkpoint(model, frozen)
    return str(frozen), load_model(frozen, device)


def build_or_reuse_map(sim_root: Path, model, out: Path, keyframe_distance: float) -> Path:
    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.mapdb import MapDatabase, build_map
    from cmirl_ros.models import model_fingerprint

    map_dir = out / "map"
    fingerprint = model_fingerprint(model)
    if (map_dir / "manifest.json").is_file():
        try:
            MapDatabase.load(map_dir, expect_fingerprint=fingerprint)
            print(f"demo: reusing the map in {map_dir}")
            return map_dir
        except ValueError:
            print(f"demo: {map_dir} was built with another model; rebuilding")
    print(f"demo: building the map with {model.name}")
    mapdb = build_map(KittiSequence(sim_root, SEQ), model, keyframe_distance=keyframe_distance)
    mapdb.save(map_dir, overwrite=True)
    return map_dir


def write_or_reuse_bag(sim_root: Path, out: Path) -> Path:
    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.ros.bag_writer import write_bag_from_dataset

    bag = out / "bag"
    if (bag / "metadata.yaml").is_file():
        print(f"demo: reusing the bag {bag}")
        return bag
    print("demo: writing the rosbag2 (mcap)")
    return write_bag_from_dataset(KittiSequence(sim_root, SEQ), bag)


def summarize(result: dict) -> dict:
    paper, revisit = result["protocols"]["paper"], result["protocols"]["revisit"]
    return {
        "images_played": result["images_played"],
        "queries_answered": result["queries_answered"],
        "answered_fraction": result["answered_fraction"],
        "recall@1": paper["recall@1"],
        "recall@1%": paper["recall@1%"],
        "revisit_recall@1": revisit["recall@1"],
        "revisit_queries": revisit["queries"],
        "latency_ms_p50": result["latency_ms_p50"],
        "latency_ms_p95": result["latency_ms_p95"],
        "dropped": result["dropped"],
        "rejected": result["rejected"],
        "model": result["model"],
        "radius_m": result["radius_m"],
    }


def print_summary(summary: dict, plot: Path) -> None:
    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}%"

    def ms(value):
        return "n/a" if value is None else f"{value:.0f} ms"

    print(f"demo: queries answered {summary['queries_answered']}/{summary['images_played']} ({pct(summary['answered_fraction'])})")
    print(f"demo: Recall@1 {pct(summary['recall@1'])} (correct within {summary['radius_m']:.0f} m), "
          f"revisits only {pct(summary['revisit_recall@1'])} over {summary['revisit_queries']} queries")
    print(f"demo: node latency p50 {ms(summary['latency_ms_p50'])}, p95 {ms(summary['latency_ms_p95'])}; "
          f"dropped {summary['dropped']}, rejected {summary['rejected']}")
    print(f"demo: trajectory with matches in {plot}")


def plot_matches(result: dict, path: Path) -> None:
    """Ground plane (x, y of the z-up map frame) with the map and each query's match."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    trajectory = np.asarray(result["trajectory"])
    keyframes = np.asarray(result["keyframes"])
    per_query = result["per_query"]
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.plot(trajectory[:, 0], trajectory[:, 1], color="0.7", lw=1, label="trajectory")
    ax.scatter(keyframes[:, 0], keyframes[:, 1], s=6, color="0.4", label="map keyframes")
    for truth, match, correct in zip(per_query["true_positions"], per_query["match_positions"], per_query["correct"]):
        ax.plot([truth[0], match[0]], [truth[1], match[1]], color="tab:green" if correct else "tab:red", lw=0.8, alpha=0.7)
    ax.plot([], [], color="tab:green", label="correct match")
    ax.plot([], [], color="tab:red", label="wrong match")
    paper = result["protocols"]["paper"]
    recall = "n/a" if paper["recall@1"] is None else f"{100 * paper['recall@1']:.1f}%"
    ax.set_title(f"cmirl demo: {result['queries_answered']}/{result['images_played']} answered, Recall@1 {recall}")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_aspect("equal")
    ax.legend(loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
