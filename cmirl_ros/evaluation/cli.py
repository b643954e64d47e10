"""`cmirl eval`: Recall@1 / Recall@1% of image queries against a LiDAR map, both protocols, and the
loop-closure figures of the revisit protocol (PR curve over the top-1 score, `OUT_pr.png`; with
`--verify sequence`, those of the matches the sequence verifier confirms).

    cmirl eval --model cmirl_driving --map out/maps/00 --dataset kitti --root SIM --seq 00 \
        --frames 3000:4541 --radius 10 --exclude-seconds 30 --json out/eval/00.json

`--ablations full=cmirl_driving no_acma=DIR ...` evaluates several models (paper Table 1),
`--conditions day=ROOT fog=ROOT ...` query sets recorded under different conditions against
one map (paper Table 2; with --ablations too, one column per model). A variant without its own map (`NAME=MODEL@MAPDIR`)
gets an in-memory map built from the dataset by the same code path as `cmirl map build`.
`--verify registration --with-scan` also runs every query through the localizer's stages and reports
verified matches (`verified_precision`, `verified_recall`, `pose_error_m_p50`, `pose_error_deg_p50`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HELP = "evaluate place recognition (Recall@1, Recall@1%, both protocols, ablation/condition tables)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cmirl_ros.datasets import add_dataset_args
    from cmirl_ros.options import add_cli_arguments

    parser.add_argument("--model", help="shipped model name, checkpoint directory, or model config name")
    parser.add_argument("--map", type=Path, default=None,
                        help="map directory from `cmirl map build`; without it a map of the whole sequence is built in memory")
    add_dataset_args(parser)
    parser.add_argument("--map-frames", default=None,
                        help="frames A:B of the in-memory map (default: the whole sequence, as the paper does)")
    parser.add_argument("--radius", type=float, required=True, help="a match is correct within this distance (m)")
    parser.add_argument("--angle", type=float, default=None, help="... and within this view angle (deg; indoor)")
    parser.add_argument("--protocol", choices=("paper", "revisit", "both"), default="both",
                        help="paper: all map entries; revisit: entries within --exclude-seconds hidden, revisits only")
    parser.add_argument("--exclude-seconds", type=float, default=30.0, help="revisit protocol time window (s)")
    parser.add_argument("--with-scan", action="store_true", help="queries carry their live scan (image+depth)")
    parser.add_argument("--stride", type=int, default=1, help="use every k-th query frame")
    parser.add_argument("--ablations", nargs="+", metavar="NAME=MODEL[@MAPDIR]", default=None,
                        help="evaluate several models into one table (paper Table 1 layout)")
    parser.add_argument("--conditions", nargs="+", metavar="NAME=ROOT", default=None,
                        help="query sets of the same sequence under different conditions (paper Table 2 layout)")
    parser.add_argument("--label", default=None, help="column label (default: the sequence id)")
    parser.add_argument("--json", type=Path, required=True, help="write the results here")
    parser.add_argument("--markdown", type=Path, default=None, help="Markdown table (default: beside --json)")
    parser.add_argument("--plot", type=Path, default=None, help="Recall@N PNG (default: beside --json)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--keyframe-distance", type=float, default=0.0, help="in-memory map: keyframe spacing (m)")
    parser.add_argument("--keyframe-angle", type=float, default=0.0, help="in-memory map: keyframe rotation (deg)")
    add_cli_arguments(parser, ("verification", "sequence"), names=("retrieve",))


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag} expects NAME=VALUE items, got {item!r}")
        out.append((name, value))
    return out


def _subset(dataset, stride: int):
    if stride < 1:
        raise ValueError(f"--stride must be >= 1, got {stride}")
    from cmirl_ros.training.data import StridedDataset

    return dataset if stride == 1 else StridedDataset(dataset, stride)


def run(args: argparse.Namespace) -> int:
    import copy

    from cmirl_ros.datasets import open_dataset, parse_frames
    from cmirl_ros.evaluation.evaluate import MapSide, encode_queries, score
    from cmirl_ros.evaluation.metrics import LOOP_CLOSURE_KEYS
    from cmirl_ros.options import resolve_verify, sequence_config
    from cmirl_ros.atomic import atomic_write_text
    from cmirl_ros.evaluation.report import (markdown_table, plot_pr_curves, plot_recall_curves, pr_plot_path,
                                             write_json)
    from cmirl_ros.models import load_model, model_fingerprint
    from cmirl_ros.mapdb.clouds import DEFAULT_VOXEL_M
    from cmirl_ros.training.cli import set_torch_threads

    set_torch_threads()
    args.verify = resolve_verify(args.verify, args.with_scan)
    protocols = ("paper", "revisit") if args.protocol == "both" else (args.protocol,)
    if args.ablations:
        variants = [(name, *spec.partition("@")[::2]) for name, spec in _pairs(args.ablations, "--ablations")]
    else:
        if not args.model:
            raise ValueError("--model is required (or give --ablations)")
        variants = [(args.model, args.model, str(args.map) if args.map else "")]
    query_roots = _pairs(args.conditions, "--conditions") if args.conditions else [(None, str(args.root))]

    base = open_dataset(args)
    parse_frames(args.map_frames, "--map-frames")  # refused now, not after the models are loaded
    axes = base.frame_convention.ground_axes  # queries and keyframes are compared in the map frame
    label = args.label or args.seq or base.name
    databases: dict[int, object] = {}
    if args.verify == "registration" and not args.with_scan:
        raise ValueError("--verify registration registers each query's live scan: add --with-scan")
    if args.verify == "registration" and (args.conditions or args.ablations):
        raise ValueError("--verify registration evaluates one model on one query set; drop --ablations / --conditions")

    def map_for(model, map_dir: str) -> MapSide:
        from cmirl_ros.mapdb import MapDatabase, build_map

        if map_dir:
            mapdb = MapDatabase.load(map_dir, expect_fingerprint=model_fingerprint(model))
        else:
            map_args = copy.copy(args)
            map_args.frames = args.map_frames
            mapdb = build_map(open_dataset(map_args, "--map-frames"), model, args.keyframe_distance, args.keyframe_angle,
                              cloud_voxel=DEFAULT_VOXEL_M if args.verify == "registration" else None)
        databases[id(model)] = mapdb
        return MapSide.from_database(mapdb)

    table: dict[str, dict[str, dict]] = {}  # row label -> column group -> protocol -> metrics
    curves, pr_curves = {}, {}
    loop_protocol = "revisit" if "revisit" in protocols else protocols[0]  # revisit = the loop-closure case
    import torch

    for variant, model_name, map_dir in variants:
        torch.manual_seed(0)  # a config-only (untrained) model gets the same random heads every run
        model = load_model(model_name, device=args.device)
        map_side = map_for(model, map_dir)
        for condition, root in query_roots:
            query_args = copy.copy(args)
            query_args.root = Path(root)
            queries = encode_queries(model, _subset(open_dataset(query_args), args.stride), with_scan=args.with_scan)
            results = score(queries, map_side, args.radius, axes, args.angle, args.exclude_seconds, protocols)
            for result in results.values():
                verify_matches(result, queries, map_side, args, axes)
            metrics = {p: r.to_dict() for p, r in results.items()}
            if args.verify == "registration":
                for p in protocols:
                    metrics[p].update(_verified(args, queries, _subset(open_dataset(query_args), args.stride),
                                                databases[id(model)], axes, p))
            row_label = condition if condition else variant
            group = variant if condition else label
            # Table 2: rows = conditions, columns = models; otherwise rows = models, columns = the sequence.
            table.setdefault(row_label, {})[group] = metrics
            for p, r in results.items():
                name = f"{group} {row_label} ({p})" if condition else f"{row_label} ({p})"
                curves[name] = r.recall_curve
                if p == loop_protocol:
                    pr_curves[f"{name} retrieval"] = r.loop_closure.curve
                    pr_curves[f"{name} verified ({args.verify})"] = r.loop_closure.verified_curve
            summary = ", ".join(f"{p}: R@1 {_fmt(r.recall_at_1)} R@1% {_fmt(r.recall_at_1_percent)} "
                                f"({r.num_queries} queries)" for p, r in results.items())
            print(f"{row_label} [{group}]: {summary}")
            print(f"  loop closure ({loop_protocol}): {_loop_line(results[loop_protocol].to_dict())}")

    rows = list(table.items())
    primary = protocols[0]
    first = rows[0][1][next(iter(rows[0][1]))][primary]
    report = {
        "recall@1": first["recall@1"],
        "recall@1%": first["recall@1%"],
        "num_queries": first["num_queries"],
        "protocol": primary,
        "radius": args.radius,
        "angle": args.angle,
        "exclude_seconds": args.exclude_seconds,
        "with_scan": args.with_scan,
        "rows": [{"label": lab, "results": by_group} for lab, by_group in rows],
        "loop_closure_protocol": loop_protocol,
        **{key: rows[0][1][next(iter(rows[0][1]))][loop_protocol][key] for key in LOOP_CLOSURE_KEYS},
        # Registration verification: its figures (refined poses, verified matches) replace the score-based ones.
        **({key: first[key] for key in VERIFIED_KEYS} if args.verify == "registration" else {}),
        "sequence": sequence_config(vars(args)).to_dict() if args.verify == "sequence" else None,
    }
    kind = "conditions" if args.conditions else "ablations" if args.ablations else "model"
    title = f"{label}: Recall (%) ({kind}), radius {args.radius} m" + (f", angle {args.angle} deg" if args.angle else "")
    markdown = markdown_table(rows, title=title, row_header="condition" if args.conditions else "model")
    write_json(args.json, report)
    md_path = args.markdown or args.json.with_suffix(".md")
    atomic_write_text(md_path, markdown)
    plot_recall_curves(curves, args.plot or args.json.with_suffix(".png"), title=title)
    plot_pr_curves(pr_curves, pr_plot_path(args.json), title=f"{label}: loop closure ({loop_protocol}), radius {args.radius} m")
    print(markdown)
    return 0


def verify_matches(result, queries, map_side, args, axes) -> None:
    """Loop-closure figures of one protocol with `--verify sequence` (evaluate.verify_by_sequence)."""
    if args.verify != "sequence":
        return
    from cmirl_ros.evaluation.evaluate import verify_by_sequence
    from cmirl_ros.options import sequence_config

    verify_by_sequence(result, queries, map_side, sequence_config(vars(args)), args.radius, axes, args.angle,
                       args.exclude_seconds, odometry=args.sequence_odometry)


def _loop_line(m: dict) -> str:
    line = (f"max F1 {_fmt(m['max_f1'])} (chance {_fmt(m['chance_max_f1'])}), R@100%P {_fmt(m['recall_at_100p'])}, "
            f"AP {_fmt(m['average_precision'])} (chance {_fmt(m['chance_average_precision'])}), "
            f"all top-1: P {_fmt(m['unverified_precision'])} R {_fmt(m['unverified_recall'])}")
    if m["verify"] != "none":
        line += f"; verified ({m['verify']}): P {_fmt(m['verified_precision'])} R {_fmt(m['verified_recall'])}"
    return line


VERIFIED_KEYS = ("verify", "verified_precision", "verified_recall", "pose_error_m_p50", "pose_error_deg_p50",
                 "verified_place_precision", "verified_matches", "revisit_queries", "verify_candidates", "verify_ms_p50")


def _verified(args, queries, dataset, mapdb, axes, protocol: str) -> dict:
    """Verified-match figures of one protocol (revisit: the --exclude-seconds window applies)."""
    from cmirl_ros.evaluation.verified import evaluate_verified
    from cmirl_ros.options import localizer_config

    config = localizer_config(vars(args), top_k=1, exclude_seconds=args.exclude_seconds if protocol == "revisit" else 0.0)
    figures = evaluate_verified(queries, dataset, mapdb, config, args.radius, axes, with_scan=args.with_scan)
    print(f"{protocol}: verified precision {figures['verified_precision']}, recall {figures['verified_recall']} "
          f"({figures['verified_matches']} verified of {len(queries.descriptors)}, {figures['revisit_queries']} with a true "
          f"revisit), pose error p50 {figures['pose_error_m_p50']} m / {figures['pose_error_deg_p50']} deg")
    return figures


def _fmt(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"
