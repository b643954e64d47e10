"""`cmirl localize`: offline localization of a dataset's images against a map, with recall."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cmirl_ros.options import add_cli_arguments

HELP = "localize a dataset's frames against a map database; writes matches and recall"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cmirl_ros.datasets import add_dataset_args

    parser.add_argument("--map", type=Path, required=True, help="map directory (cmirl map build)")
    add_dataset_args(parser)
    parser.add_argument("--model", default=None, help="model (default: the map's model name)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--with-scan", action="store_true", help="also feed each frame's scan (image + live LiDAR)")
    add_cli_arguments(parser, ("localizer", "verification", "sequence"))
    parser.add_argument("--radius", type=float, default=10.0, help="a match within this many metres is correct")
    parser.add_argument("--every", type=int, default=1, help="localize every n-th frame")
    parser.add_argument("--json", type=Path, default=None,
                        help="write per-query matches and the summary here (and the loop-closure PR curve, NAME_pr.png)")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from cmirl_ros.datasets import open_dataset
    from cmirl_ros.evaluation.metrics import LOOP_CLOSURE_KEYS
    from cmirl_ros.evaluation.report import plot_pr_curves, pr_plot_path
    from cmirl_ros.localization import Localizer
    from cmirl_ros.mapdb import MapDatabase
    from cmirl_ros.mapdb.validate import read_manifest
    from cmirl_ros.models import load_model, model_fingerprint
    from cmirl_ros.options import localizer_config, resolve_verify

    args.verify = resolve_verify(args.verify, args.with_scan)
    if args.every < 1:
        raise ValueError(f"--every must be >= 1, got {args.every}")
    dataset = open_dataset(args)
    model_name = args.model or read_manifest(args.map).get("model", {}).get("name")
    if not model_name:
        raise ValueError(f"{args.map}: the manifest names no model; pass --model")
    model = load_model(model_name, device=args.device)
    mapdb = MapDatabase.load(args.map, expect_fingerprint=model_fingerprint(model))
    config = localizer_config(vars(args), exclude_session=dataset.name)  # verify sequence: after the localizer
    localizer = Localizer(model, mapdb, config)
    map_poses = mapdb.keyframes.poses()
    queries, query_poses = [], []
    for i in tqdm(range(0, len(dataset), args.every), desc="localize", unit="frame"):
        frame = dataset[i]
        if frame.image is None:
            raise ValueError(f"dataset {dataset.name}: frame {frame.name} has no image to localize")
        result = _localize(localizer, frame, args)
        queries.append(_query_record(frame, result, mapdb.keyframes, map_poses, dataset, args))
        query_poses.append(frame.T_world_cam)
    summary = summarize(queries, args.top_k)
    loop_closure = loop_closure_of(queries, dataset.frame_convention.ground_axes, args, map_poses,
                                   dataset.frame_convention.to_map(np.array(query_poses)))
    summary.update({key: loop_closure.to_dict()[key] for key in LOOP_CLOSURE_KEYS})
    if args.verify == "registration":
        summary.update(verified_summary(queries))
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"map": str(args.map), "model": model_fingerprint(model), "dataset": dataset.name,
                  "config": config.to_dict(), "radius_m": args.radius, "with_scan": args.with_scan,
                  "summary": summary, "loop_closure": loop_closure.to_dict(), "queries": queries}
        args.json.write_text(json.dumps(report, indent=1, default=_json_number) + "\n")
        plot_pr_curves({"retrieval (score threshold)": loop_closure.curve,
                        f"verified ({args.verify})": loop_closure.verified_curve}, pr_plot_path(args.json),
                       title=f"{dataset.name}: loop closures, radius {args.radius} m")
        print(f"wrote {args.json}")
    return 0


def _localize(localizer, frame, args):
    """Image (+ scan with --with-scan); registration verification needs the scan even without --with-scan:
    then the descriptor is the image's and the scan only verifies."""
    if args.with_scan:
        return localizer.localize(frame.image, frame.points, frame.stamp, frame.calib)
    if args.verify == "registration":
        image_only = localizer.localize(frame.image, None, frame.stamp, frame.calib)
        return localizer.localize_descriptor(image_only.descriptor, frame.stamp, frame.points, frame.calib)
    return localizer.localize(frame.image, None, frame.stamp, frame.calib)


def verified_summary(queries: list[dict], tolerance_m: float = 1.0, tolerance_deg: float = 5.0) -> dict:
    """Verified-match figures (see `evaluation.verified`): a verified match is correct when its
    refined pose is within the tolerances of the ground truth."""
    import numpy as np

    from cmirl_ros.evaluation.metrics import poses_within, verified_match_figures

    verified = np.array([bool(q["matches"]) and q["matches"][0]["verified"] for q in queries])
    errors = np.array([q["pose_error"] or [np.nan, np.nan] for q in queries]).reshape(-1, 2)
    correct = poses_within(errors, tolerance_m, tolerance_deg)
    return verified_match_figures(verified, correct, np.array([q["counted"] for q in queries]), errors)


def _query_record(frame, result, kf, map_poses, dataset, args) -> dict:
    """One query: its matches, whether top-1 / any top-k is within the radius, and whether the map
    holds the place at all once the exclusion window is applied (only those queries count)."""
    import numpy as np

    from cmirl_ros.evaluation.metrics import pose_errors
    from cmirl_ros.geometry.poses import place_distances

    truth = dataset.frame_convention.to_map(frame.T_world_cam)  # ground truth in the map frame
    axes = dataset.frame_convention.ground_axes
    distances = place_distances(truth[None], map_poses, axes)[0]
    allowed = np.ones(len(distances), bool)
    if args.exclude_seconds > 0:
        allowed = ~((np.abs(kf.stamps - frame.stamp) <= args.exclude_seconds) & (kf.sessions == dataset.name))
    reachable = (distances < args.radius) & allowed
    hits = [bool(distances[m.keyframe_id] < args.radius) for m in result.matches]
    best = result.matches[0] if result.matches else None
    output_pose = None if best is None else best.T_world_query if best.T_world_query is not None else best.T_world_cam
    return {
        "index": frame.index, "name": frame.name, "stamp": frame.stamp,
        "position": truth[:3, 3].tolist(),
        "matches": [dict(m.to_dict(), distance_m=float(distances[m.keyframe_id])) for m in result.matches],
        "covariance_diag": None if result.covariance is None else np.diag(result.covariance).tolist(),
        "counted": bool(reachable.any()),
        "correct_top1": bool(hits[:1] == [True]),
        "correct_topk": any(hits),
        "chance_correct": float(reachable.sum() / max(allowed.sum(), 1)),
        # The output pose: refined by registration when verified, else the matched keyframe's.
        "pose_error": None if output_pose is None else pose_errors(output_pose, truth, axes)[0].tolist(),
        "timings_ms": result.timings_ms,
    }


def loop_closure_of(queries: list[dict], axes, args, map_poses, query_poses):
    """Loop-closure figures of the queries' top-1 matches, with `--verify sequence` when asked
    (`sequence.verify_ranked` over each query's top-k matches; `--sequence-odometry`: the frames'
    ground-truth poses as odometry). An image-only match's output pose is its keyframe's pose."""
    import numpy as np

    from cmirl_ros.evaluation.metrics import loop_closure_metrics, pose_errors
    from cmirl_ros.localization.sequence import verify_ranked
    from cmirl_ros.options import sequence_config

    scores = np.array([q["matches"][0]["score"] if q["matches"] else -np.inf for q in queries])
    errors = np.array([q["pose_error"] or [np.nan, np.nan] for q in queries]).reshape(-1, 2)
    counted, chance = [q["counted"] for q in queries], [q["chance_correct"] for q in queries]
    if args.verify != "sequence":
        return loop_closure_metrics(scores, [q["correct_top1"] for q in queries], counted, None, args.verify, chance,
                                    errors)
    depth = max([len(q["matches"]) for q in queries] + [1])
    ranked = np.zeros((len(queries), depth), np.int64)
    ranked_scores = np.full((len(queries), depth), -np.inf)
    distances = np.full((len(queries), depth), np.inf)
    for i, q in enumerate(queries):
        for j, match in enumerate(q["matches"]):
            ranked[i, j], ranked_scores[i, j], distances[i, j] = match["keyframe_id"], match["score"], match["distance_m"]
    picked, accepted, picked_scores = verify_ranked(
        np.array([q["stamp"] for q in queries]), ranked, ranked_scores, map_poses,
        query_poses if args.sequence_odometry else None, sequence_config(vars(args)), axes)
    column = (ranked == picked[:, None]).argmax(1)
    correct = distances[np.arange(len(queries)), column] < args.radius
    picked_errors = np.where(np.isfinite(ranked_scores[:, :1]), pose_errors(map_poses[picked], query_poses, axes), np.nan)
    return loop_closure_metrics(scores, [q["correct_top1"] for q in queries], counted, accepted, args.verify, chance,
                                picked_errors, verified_correct=correct, verified_scores=picked_scores)


def summarize(queries: list[dict], top_k: int) -> dict:
    import numpy as np

    from cmirl_ros.evaluation.metrics import recall

    counted = [q["counted"] for q in queries]
    timings = {stage: round(float(np.median([q["timings_ms"][stage] for q in queries])), 3)
               for stage in ("preprocess", "encode", "search")} if queries else {}
    return {
        "queries": len(queries),
        "counted_queries": int(sum(counted)),
        "recall@1": _rounded(recall([q["correct_top1"] for q in queries], counted)),
        f"recall@{top_k}": _rounded(recall([q["correct_topk"] for q in queries], counted)),
        "median_ms": timings,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _json_number(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
