"""`--verify sequence` parameters swept on one query set (the measurement behind docs/results.md,
"Sequence verification"): image-only queries of a KITTI-layout sequence against a map, revisit
protocol, every setting of a small grid through the same code as `cmirl eval --verify sequence`
(`evaluation.evaluate.verify_by_sequence`). Odometry = the queries' ground-truth poses (their
relative motion only, what a robot's odometry gives over a few tens of metres).

For each setting: verified precision / recall / accepted with no score threshold, and the lowest
path-score threshold at and above which precision stays >= --target (the `min_score` that setting
would need), with the recall it keeps. Choose on a validation sequence only; then run the chosen
setting with `cmirl eval` on the test sequences.

    python bench/sequence_sweep.py --model cmirl_driving --map out/maps/val1_cmirl_driving \
        --root out/sim/val_seed1 --seq 00 --cache out/cache/val1_cmirl.npz --json docs/results/sequence_sweep_val1_cmirl.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cmirl_ros.evaluation.evaluate import MapSide, QuerySide, encode_queries, score, verify_by_sequence
from cmirl_ros.localization.sequence import SequenceConfig

# Each row: one setting; every one has tolerance 5 m / 20 degrees. candidates 0 = every map entry
# (SeqSLAM-like: the path collects whatever score the map gives where the odometry puts each query).
MARGINS = {0: (None, 0.25, 0.5, 1.0)}  # unique 30 m at these z-score margins; top-K: off or any margin


def grid(lengths, candidates) -> list[dict]:
    """The odometry rows: every N x K, without and with `unique 30 m`; the turn rows at N = 4, K = 20."""
    rows = [dict(length=n, candidates=k, zscore=k == 0, unique_m=30.0 if margin is not None else 0.0,
                 unique_margin=float("inf") if margin in (None, "any") else margin, tolerance_m=5.0, tolerance_deg=20.0)
            for n in lengths for k in candidates for margin in MARGINS.get(k, (None, "any"))]
    if 4 in lengths and 20 in candidates:
        rows += [dict(length=4, candidates=20, min_turn_deg=turn, tolerance_m=5.0, tolerance_deg=20.0)
                 for turn in (20.0, 45.0)]
    return rows


def queries_of(args) -> QuerySide:
    """Image-only query descriptors, cached: encoding is the slow part on a shared CPU."""
    if args.cache and args.cache.exists():
        data = np.load(args.cache)
        return QuerySide(data["descriptors"], data["poses"], data["stamps"])
    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.datasets.base import parse_frames
    from cmirl_ros.models import load_model
    from cmirl_ros.training.data import StridedDataset

    dataset = KittiSequence(args.root, args.seq, parse_frames(args.frames))
    if args.stride > 1:
        dataset = StridedDataset(dataset, args.stride)
    queries = encode_queries(load_model(args.model, device="cpu"), dataset)
    if args.cache:
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.cache, descriptors=queries.descriptors, poses=queries.poses, stamps=queries.stamps)
    return queries


def threshold_for(curve: dict, target: float) -> tuple[float | None, float]:
    """Lowest score threshold whose precision, and that of every stricter one, is >= target; its recall."""
    precision, recall, thresholds = (np.array(curve[k], dtype=float) for k in ("precision", "recall", "thresholds"))
    ok = np.flatnonzero(np.minimum.accumulate(precision >= target))  # thresholds are descending
    return (float(thresholds[ok[-1]]), float(recall[ok[-1]])) if len(ok) else (None, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--map", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--seq", default="00")
    parser.add_argument("--frames", default=None)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--radius", type=float, default=10.0)
    parser.add_argument("--exclude-seconds", type=float, default=30.0)
    parser.add_argument("--target", type=float, default=0.99, help="precision the threshold must keep")
    parser.add_argument("--cache", type=Path, default=None, help="query descriptors (.npz), reused when present")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4, 8, 12], help="odometry rows: these N")
    parser.add_argument("--candidates", type=int, nargs="+", default=[20, 0],
                        help="odometry rows: these K (0: the whole map, with z-scores)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    from cmirl_ros.mapdb import MapDatabase

    queries = queries_of(args)
    mapdb = MapDatabase.load(args.map)
    map_side = MapSide.from_database(mapdb)
    axes = mapdb.frame_convention.ground_axes  # queries and keyframes are compared in the map frame (z-up)
    result = score(queries, map_side, args.radius, axes, exclude_seconds=args.exclude_seconds, protocols=("revisit",))["revisit"]
    base = result.loop_closure.to_dict()
    rows = []
    settings = [("stamps", dict(length=n)) for n in range(2, 7)]
    settings += [("odometry", {**setting, "candidates": setting["candidates"] or len(map_side.descriptors)})
                 for setting in grid(args.lengths, args.candidates)]
    for mode, setting in settings:
        verify_by_sequence(result, queries, map_side, SequenceConfig(**setting), args.radius, axes,
                           exclude_seconds=args.exclude_seconds, odometry=mode == "odometry")
        lc = result.loop_closure.to_dict()
        threshold, kept = threshold_for(lc["verified_pr_curve"], args.target)
        rows.append({"mode": mode, **setting, "precision": lc["verified_precision"], "recall": lc["verified_recall"],
                     "accepted": lc["verified_accepted"], "min_score": threshold, "recall_at_target": kept})
        print(json.dumps(rows[-1]))
    report = {"queries": len(queries.descriptors), "positives": base["lc_positives"], "target_precision": args.target,
              "top1_precision": base["unverified_precision"], "top1_recall": base["unverified_recall"],
              "recall_at_100p": base["recall_at_100p"], "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    best = max(rows, key=lambda r: r["recall_at_target"])
    print(f"{report['queries']} queries, {report['positives']} with a true revisit; top-1 P {base['unverified_precision']} "
          f"R {base['unverified_recall']}, score-only R@100%P {base['recall_at_100p']}; best at P >= {args.target}: {best}")


if __name__ == "__main__":
    main()
