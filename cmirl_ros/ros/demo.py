"""`cmirl demo`: the whole product on the embedded default, in one command, run as the package is
meant to run: camera + LiDAR of a robot, a prior map from another drive, a live session.

Simulates (or reuses) two drives through the same simulated world (same world seed): the prior
drive (`PRIOR_CONDITION`, driven `VIEWPOINT_OFFSET`'s lateral shift and yaw away from the live
drive's path over its whole length), whose map is built with keyframe clouds, and the live drive
(`DEMO_SIM`), written as a rosbag2 (mcap) as a robot records it: CompressedImage, CameraInfo,
PointCloud2, /tf_static base_link -> velodyne / camera_optical and /tf odom -> base_link (ground
truth, as a LIO front end's odometry). Starts the localizer node as a separate process with the
scan, registration verification, the live session map and a relocalization at start against the
prior map, replays the bag into it over ROS 2, and scores what it published: queries answered,
Recall@1 of its prior-map candidates, the session's loop closures (precision / recall against
ground truth, `metrics.session_loop_closure_figures`), the relocalization error and the node's
latency. Writes a PNG of the trajectory and, with --json, the summary. Everything is cached in
--out and rebuilt when what it was built from changed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "end-to-end demo: simulate, map, bag, run the node over ROS 2, score it"
SEQ = "00"
PRIOR_CONDITION = "shadows"  # the prior map was driven at another time of day (low sun, long shadows)
VIEWPOINT_OFFSET = "viewpoint"  # ... in another lane: this condition's lateral shift and yaw, whole drive
RECALL_RADIUS_M = 10.0  # a prior-map match is right within this distance (the node's bag evaluation uses it too)
LOOP_CLOSURE_RADIUS_M = 10.0  # a published pair is true when its two places are this close (as Recall@1's radius)
REVISIT_RADIUS_M = 5.0  # ... and a frame this close to one older than the gap is a revisit to close
LOOP_CLOSURE_MIN_GAP_S = 30.0  # the node's loop_closure_min_gap: revisits are counted the same way
# The drive is recorded at 3.3 Hz; a verified camera + LiDAR query with the session's loop-closure search
# takes ~0.8 s p50 of a shared 2-core machine (measured, load ~11), and every frame it drops is a revisit
# it cannot close. A quarter speed (0.8 Hz, about LIO-SAM's 1 Hz loop-closure rate) lets it answer them.
DEFAULT_RATE = 0.25
BAG_FORMAT = "compressed jpeg, points, camera_info, tf_static, tf odom->base_link, z-up ground truth"  # changing it rebuilds the bag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="working directory (reused between runs)")
    parser.add_argument("--model", default="cmirl_driving", help="shipped model name, checkpoint path, or model config")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE,
                        help=f"bag playback speed factor (default {DEFAULT_RATE}: the node keeps up with the 3.3 Hz drive on a "
                             "shared 2-core machine; a dropped frame is a revisit it cannot close)")
    parser.add_argument("--fresh", action="store_true", help="re-simulate and rebuild everything")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    parser.add_argument("--keyframe-distance", type=float, default=2.0, help="map and session keyframe spacing (m)")


def run(args: argparse.Namespace) -> int:
    import shutil

    from cmirl_ros.models import model_fingerprint
    from cmirl_ros.ros.bag_eval import SLAM_OUTPUTS, evaluate_bag

    if args.rate <= 0:
        raise ValueError(f"--rate must be > 0, got {args.rate}")
    out = args.out
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    model_ref, model = resolve_model(args.model, args.device, out)  # first: a bad name fails before any work
    live_root = simulate(out / "sim", live_sim(), "the live drive")
    prior_root = simulate(out / "prior_sim", prior_sim(), f"the prior map's drive ({PRIOR_CONDITION}, {VIEWPOINT_OFFSET} offset)",
                          viewpoint_offset())
    map_dir = build_or_reuse_map(prior_root, model, out, args.keyframe_distance)
    bag = write_or_reuse_bag(live_root, out)
    image_only = image_only_recall_or_reuse(live_root, map_dir, model, out)  # before the node: the CPU is its own
    print(f"demo: starting the localizer node and replaying {bag} (x{args.rate})")
    result = evaluate_bag(bag, map_dir, model_ref, rate=args.rate, radius=RECALL_RADIUS_M, device=args.device,
                          workdir=out / "run", use_scan=True, node_params=node_params(args.keyframe_distance),
                          details=True, wait_outputs=tuple(SLAM_OUTPUTS.values()))
    stamps, T_map_base = ground_truth(live_root)
    summary = summarize(result, image_only, score_slam(result["slam_outputs"], stamps, T_map_base))
    summary["model_fingerprint"] = model_fingerprint(model)  # the shipped model may be replaced: which one this was
    plot = out / "trajectory.png"
    plot_demo(plot, stamps, T_map_base, prior_keyframes(map_dir, prior_root), result["slam_outputs"], summary)
    print_summary(summary, plot)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"demo: summary written to {args.json}")
    return 0


def node_params(keyframe_distance: float) -> dict:
    """The node as the package is meant to run on a robot: image + scan queries verified by registration
    against the prior map, the live session map searched for loop closures, one relocalization at start."""
    return {"use_scan": True, "calib_file": "", "verify": "registration", "session_map": True,
            "keyframe_distance": keyframe_distance, "loop_closure_min_gap": LOOP_CLOSURE_MIN_GAP_S,
            "odom_frame": "odom", "base_frame": "base_link", "map_frame": "map", "relocalize_on_start": True}


def cached(target: Path, source: dict, build, what: str) -> Path:
    """`target`, built by `build()` unless it exists and was built from the same `source` (recorded in
    `<target>.source.json`, written after the build: an interrupted build is redone)."""
    from cmirl_ros.atomic import atomic_write_text

    record = target.with_name(target.name + ".source.json")
    source = json.loads(json.dumps(source))  # as it reads back: tuples are lists
    if target.exists() and record.is_file() and json.loads(record.read_text()) == source:
        print(f"demo: reusing {what} in {target}")
        return target
    print(f"demo: {'rebuilding' if target.exists() else 'building'} {what} in {target}")
    record.unlink(missing_ok=True)
    build()
    atomic_write_text(record, json.dumps(source, indent=2) + "\n")
    return target


def live_sim():
    from cmirl_ros.sim.sequence import DEMO_SIM

    return DEMO_SIM


def prior_sim():
    from dataclasses import replace

    return replace(live_sim(), condition=PRIOR_CONDITION)  # same trajectory, frames and world seed


def viewpoint_offset() -> dict:
    from cmirl_ros.sim.conditions import get_condition

    condition = get_condition(VIEWPOINT_OFFSET)
    return {"lateral_m": condition.viewpoint_lateral_m, "yaw_deg": condition.viewpoint_yaw_deg}


def simulate(root: Path, config, what: str, offset: dict | None = None) -> Path:
    """Sequence SEQ of `config` under `root`; `offset`: every pose shifted left by lateral_m and turned
    by yaw_deg (`apply_viewpoint_change` over the whole drive: another lane of the same world)."""
    from dataclasses import asdict

    from cmirl_ros.sim.world import WORLD_VERSION

    source = {"sim": {k: v for k, v in asdict(config).items() if k != "workers"}, "world_version": WORLD_VERSION,
              "whole_drive_offset": offset}
    return cached(root, source, lambda: simulate_drive(root, config, offset), what)


def simulate_drive(root: Path, config, offset: dict | None) -> None:
    import numpy as np

    from cmirl_ros.sim.sequence import Simulator, simulate_sequence
    from cmirl_ros.sim.trajectory import apply_viewpoint_change

    simulator = Simulator(config)  # the world comes from the trajectory and the seed, before any offset
    if offset:
        simulator.poses = apply_viewpoint_change(simulator.poses, np.ones(len(simulator.poses)), offset["lateral_m"],
                                                 offset["yaw_deg"])
    simulate_sequence(config, root, SEQ, simulator=simulator)


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


def source_of(target: Path) -> dict:
    """What `cached` recorded `target` was built from."""
    return json.loads(target.with_name(target.name + ".source.json").read_text())


def build_or_reuse_map(sim_root: Path, model, out: Path, keyframe_distance: float) -> Path:
    """The prior map, with keyframe clouds (registration verifies against them)."""
    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.formats import MAP_FORMAT_VERSION
    from cmirl_ros.mapdb import build_map
    from cmirl_ros.mapdb.clouds import DEFAULT_VOXEL_M
    from cmirl_ros.models import model_fingerprint

    map_dir = out / "map"

    def build():
        mapdb = build_map(KittiSequence(sim_root, SEQ), model, keyframe_distance=keyframe_distance,
                          cloud_voxel=DEFAULT_VOXEL_M)
        mapdb.save(map_dir, overwrite=True)

    source = {"drive": source_of(sim_root), "format": MAP_FORMAT_VERSION, "model": model_fingerprint(model),
              "keyframe_distance_m": keyframe_distance, "cloud_voxel_m": DEFAULT_VOXEL_M}
    return cached(map_dir, source, build, f"the prior map ({model.name})")


def write_or_reuse_bag(sim_root: Path, out: Path) -> Path:
    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.ros.bag_writer import write_bag_from_dataset

    bag = out / "bag"
    return cached(bag, {"drive": source_of(sim_root), "format": BAG_FORMAT},
                  lambda: write_bag_from_dataset(KittiSequence(sim_root, SEQ), bag, compressed=True, odometry_tf=True),
                  "the live drive's rosbag2 (mcap)")


def ground_truth(sim_root: Path):
    """(stamps (N,), T_map_base (N,4,4)) of the live drive: the base's true poses in the z-up map frame
    (the prior map's: both drives share the simulated world's coordinates)."""
    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.geometry.frames import base_pose_in_map, kitti_T_base_cam

    drive = KittiSequence(sim_root, SEQ)
    return drive.stamps, base_pose_in_map(drive.poses, kitti_T_base_cam(drive.calib.T_cam_sensor))


def edge_poses(pairs, edges: list[dict]):
    """(L,4,4) the relative pose of the ~/loop_closure_edge with each pair's two stamps (NaN where none)."""
    import numpy as np

    poses = np.full((len(pairs), 4, 4), np.nan)
    by_stamps = {(round(e["query_stamp"], 6), round(e["matched_stamp"], 6)): e["relative_pose"] for e in edges}
    for k, (query, matched) in enumerate(pairs):
        poses[k] = by_stamps.get((round(query, 6), round(matched, 6)), np.nan)
    return poses


def score_slam(outputs: dict, stamps, T_map_base) -> dict:
    """Loop-closure and relocalization figures of the node's SLAM outputs against ground truth."""
    import numpy as np

    from cmirl_ros.evaluation.metrics import relocalization_figures, session_loop_closure_figures

    pairs = np.array(outputs["loop_closures"], np.float64).reshape(-1, 2)
    figures = session_loop_closure_figures(pairs, stamps, T_map_base, LOOP_CLOSURE_RADIUS_M, LOOP_CLOSURE_MIN_GAP_S,
                                           REVISIT_RADIUS_M, edge_poses(pairs, outputs["edges"]))
    poses = [p["pose"] for p in outputs["initialposes"]]
    figures.update(relocalization_figures(np.array(poses).reshape(-1, 4, 4), [p["stamp"] for p in outputs["initialposes"]],
                                          stamps, T_map_base))
    figures.update(loop_closure_edges=len(outputs["edges"]), loop_closures_rejected=len(outputs["rejected"]),
                   malformed_loop_closures=outputs["malformed_loop_closures"])
    return figures


def image_only_recall_or_reuse(live_root: Path, map_dir: Path, model, out: Path) -> dict:
    from cmirl_ros.atomic import atomic_write_text

    target = out / "image_only_recall.json"
    source = {"drive": source_of(live_root), "map": source_of(map_dir), "radius_m": RECALL_RADIUS_M,
              "exclude_seconds": LOOP_CLOSURE_MIN_GAP_S}
    cached(target, source, lambda: atomic_write_text(target, json.dumps(image_only_recall(live_root, map_dir, model))),
           "the image-only Recall@1 of the live drive against the prior map (the core, no node)")
    return json.loads(target.read_text())


def image_only_recall(live_root: Path, map_dir: Path, model) -> dict:
    """Recall@1 (both protocols) of the live drive's images alone against the prior map, by the core as
    `cmirl eval` scores it (the node ranks image-only queries exactly as the core `Localizer` does:
    test/ros/test_end_to_end.py). The node itself runs with the scan; its figure is `node_recall@1`."""
    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.evaluation.evaluate import MapSide, encode_queries, score
    from cmirl_ros.mapdb import MapDatabase

    drive = KittiSequence(live_root, SEQ)
    results = score(encode_queries(model, drive, progress=False), MapSide.from_database(MapDatabase.load(map_dir)),
                    RECALL_RADIUS_M, drive.frame_convention.ground_axes, exclude_seconds=LOOP_CLOSURE_MIN_GAP_S)
    return {protocol: {key: result.to_dict()[key] for key in ("recall@1", "recall@1%", "num_queries", "chance@1")}
            for protocol, result in results.items()}


def prior_keyframes(map_dir: Path, prior_root: Path):
    """(K,4,4) true base poses of the prior map's keyframes in the map frame (by keyframe stamp)."""
    from cmirl_ros.geometry.poses import nearest_stamps
    from cmirl_ros.mapdb import MapDatabase

    stamps, T_map_base = ground_truth(prior_root)
    frames = nearest_stamps(MapDatabase.load(map_dir).keyframes.stamps, stamps, tolerance=1e-3)
    return T_map_base[frames[frames >= 0]]


def summarize(result: dict, image_only: dict, slam: dict) -> dict:
    """`recall@1`: image-only, every frame of the live drive (`image_only_recall`); `node_recall@1`: the
    node's prior-map candidates for its image + scan queries (`query_inputs`)."""
    paper, revisit = result["protocols"]["paper"], result["protocols"]["revisit"]
    return {
        "images_played": result["images_played"],
        "queries_answered": result["queries_answered"],
        "answered_fraction": result["answered_fraction"],
        "recall_inputs": "image",
        "recall@1": image_only["paper"]["recall@1"],
        "recall@1%": image_only["paper"]["recall@1%"],
        "recall_queries": image_only["paper"]["num_queries"],
        "revisit_recall@1": image_only["revisit"]["recall@1"],
        "revisit_queries": image_only["revisit"]["num_queries"],
        "query_inputs": "image+scan",
        "node_recall@1": paper["recall@1"],
        "node_recall@1%": paper["recall@1%"],
        "node_revisit_recall@1": revisit["recall@1"],
        "node_revisit_queries": revisit["queries"],
        **slam,
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
    radius = f"correct within {summary['radius_m']:.0f} m"
    print(f"demo: Recall@1 {pct(summary['recall@1'])} on the prior map, image-only queries ({radius}; all "
          f"{summary['recall_queries']} frames, the core as `cmirl eval`), revisits only "
          f"{pct(summary['revisit_recall@1'])} over {summary['revisit_queries']} queries")
    print(f"demo: node Recall@1 {pct(summary['node_recall@1'])} on the prior map, the node's image+scan queries "
          f"({radius}; its answered queries), revisits only {pct(summary['node_revisit_recall@1'])} over "
          f"{summary['node_revisit_queries']} queries")
    print(f"demo: loop closures: {summary['loop_closures_published']} published; precision "
          f"{pct(summary['loop_closure_precision'])} = pairs whose published relative pose (~/loop_closure_edge) is "
          f"within 1 m / 5 deg of the truth; place precision {pct(summary['loop_closure_place_precision'])} = pairs "
          f"whose two places are within {summary['loop_closure_radius_m']:.0f} m of each other")
    print(f"demo: loop-closure recall {pct(summary['loop_closure_recall'])} of {summary['loop_closure_revisit_frames']} "
          f"true revisits (a frame within {summary['loop_closure_revisit_radius_m']:.0f} m of one > "
          f"{summary['loop_closure_min_gap_s']:.0f} s earlier) closed by a true pair; "
          f"{summary['loop_closures_rejected']} candidates rejected by verification")
    if summary["relocalization_error_m"] is None:
        print(f"demo: relocalization: {summary['relocalizations']} published on /initialpose, "
              f"{summary['relocalization_unknown_stamps']} stamped with no frame of the drive: no error to report")
    else:
        print(f"demo: relocalization against the prior map: error {summary['relocalization_error_m']:.2f} m, yaw "
              f"{summary['relocalization_yaw_error_deg']:.1f} deg ({summary['relocalizations']} published on /initialpose)")
    print(f"demo: node latency p50 {ms(summary['latency_ms_p50'])}, p95 {ms(summary['latency_ms_p95'])}; "
          f"dropped {summary['dropped']}, rejected {summary['rejected']}")
    print(f"demo: trajectory with loop closures and the relocalization in {plot}")


def plot_demo(path: Path, stamps, T_map_base, keyframes, outputs: dict, summary: dict) -> None:
    """Left: the map frame from above (prior map keyframes, live trajectory, verified loop closures green,
    rejected grey, the relocalization); right: each closure's matched stamp against its query stamp."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.collections import LineCollection

    from cmirl_ros.geometry.poses import nearest_stamps

    xy = T_map_base[:, :2, 3]
    fig, (ax, times) = plt.subplots(1, 2, figsize=(14, 7), gridspec_kw={"width_ratios": [3, 2]})
    ax.scatter(keyframes[:, 0, 3], keyframes[:, 1, 3], s=8, color="tan", zorder=1, label="prior map keyframes")
    ax.plot(xy[:, 0], xy[:, 1], color="tab:blue", lw=1.5, zorder=4, label="live drive (ground truth)")
    rejected = np.array([[e["query_stamp"], e["matched_stamp"]] for e in outputs["rejected"]], np.float64).reshape(-1, 2)
    verified = np.array(outputs["loop_closures"], np.float64).reshape(-1, 2)
    # Rejected pairs: faint lines under the drive (hundreds of them); verified: green lines and query dots on top.
    for pairs, colour, label, z, lw, alpha in ((rejected, "0.5", "rejected candidate", 2, 0.4, 0.2),
                                               (verified, "tab:green", "verified loop closure", 5, 1.2, 1.0)):
        q, m = nearest_stamps(pairs[:, 0], stamps, 1e-3), nearest_stamps(pairs[:, 1], stamps, 1e-3)
        known = (q >= 0) & (m >= 0)
        segments = np.stack([xy[q[known]], xy[m[known]]], axis=1)
        ax.add_collection(LineCollection(segments, colors=colour, linewidths=lw, alpha=alpha, zorder=z,
                                         label=f"{label} ({len(pairs)})"))
        if pairs is verified:
            ax.scatter(xy[q[known], 0], xy[q[known], 1], s=14, color=colour, zorder=z)
        times.scatter(pairs[:, 0], pairs[:, 1], s=10, color=colour, alpha=0.5 if pairs is rejected else 1.0, label=label)
    errors = summary["relocalization_errors_m"]
    for k, reloc in enumerate(outputs["initialposes"]):
        position = np.array(reloc["pose"])[:2, 3]
        ax.scatter(*position, marker="*", s=260, color="tab:red", edgecolor="k", zorder=6,
                   label="relocalization (/initialpose)")
        error = (f"relocalization error {errors[k]:.3f} m" if k < len(errors) and summary["relocalization_unknown_stamps"] == 0
                 else "stamp unknown")
        ax.annotate(error, position, xytext=(12, 12), textcoords="offset points")
    precision, recall = summary["loop_closure_precision"], summary["loop_closure_recall"]
    figures = ("n/a" if precision is None or recall is None else
               f"precision {precision:.2f} (pose within 1 m / 5 deg), recall {recall:.2f} of true revisits")
    ax.set_title(f"cmirl demo: loop closures {figures}", fontsize=11)
    ax.set_xlabel("map x (m)")
    ax.set_ylabel("map y (m)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="best", fontsize=8)
    times.plot([stamps[0], stamps[-1]], [stamps[0], stamps[-1]], color="0.85", lw=1)
    times.set_xlabel("query stamp (s)")
    times.set_ylabel("matched stamp (s)")
    times.set_title("loop closures by time")
    times.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
