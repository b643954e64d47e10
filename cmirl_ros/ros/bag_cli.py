"""`cmirl bag`: write KITTI sequences as rosbag2 (mcap), replay bags into ROS 2, evaluate the node on a bag."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "rosbag2 tools: from-kitti, play, eval"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bag_command", required=True)

    convert = sub.add_parser("from-kitti", help="KITTI odometry layout (real or simulated) -> rosbag2 (mcap)")
    convert.add_argument("--root", type=Path, required=True, help="KITTI root (sequences/XX, poses/XX.txt)")
    convert.add_argument("--seq", required=True, help="sequence id, e.g. 00")
    convert.add_argument("--frames", default=None, help="frame range A:B")
    convert.add_argument("--out", type=Path, required=True,
                         help="bag to write: a rosbag2 directory (OUT.mcap names the directory OUT holding OUT.mcap)")
    convert.add_argument("--compressed", action="store_true",
                         help="images as jpeg sensor_msgs/CompressedImage on <image topic>/compressed instead of raw Image")
    convert.add_argument("--odom-tf", action="store_true",
                         help="also /tf odom -> base_link from the ground truth (odometry for the node's session_map)")
    convert.set_defaults(bag_run=_run_from_kitti)

    play = sub.add_parser("play", help="replay a bag into the live ROS 2 graph")
    play.add_argument("path", type=Path, help="rosbag2 directory or its .mcap file")
    play.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    play.add_argument("--loop", action="store_true", help="start over at the end")
    play.add_argument("--clock", action="store_true", help="publish /clock from the bag times (use_sim_time)")
    play.add_argument("--topics", nargs="+", default=None, help="only these topics")
    play.add_argument("--wait-for", nargs="+", default=None, metavar="TOPIC",
                      help="wait until these topics have a subscriber before playing")
    play.set_defaults(bag_run=_run_play)

    evaluate = sub.add_parser("eval", help="start the node, play the bag, score its outputs against ground truth")
    evaluate.add_argument("path", type=Path, help="rosbag2 directory or its .mcap file (with ground-truth odometry)")
    evaluate.add_argument("--map", type=Path, required=True, help="map directory (cmirl map build)")
    evaluate.add_argument("--model", default="cmirl_driving", help="model the map was built with")
    evaluate.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    evaluate.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    evaluate.add_argument("--use-scan", action="store_true", help="query with image + live scan")
    evaluate.add_argument("--radius", type=float, default=10.0, help="a match is correct within this distance (m)")
    evaluate.add_argument("--exclude-seconds", type=float, default=30.0, help="revisit protocol time window (s)")
    evaluate.add_argument("--json", type=Path, default=None, help="write the result here")
    add_verify_arguments(evaluate)
    evaluate.set_defaults(bag_run=_run_eval)


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    """`bag eval --verify`: registration in the node (needs --use-scan), sequence on what it published."""
    from cmirl_ros.options import add_cli_arguments
    from cmirl_ros.ros.bag_eval import VERIFY_CHOICES

    parser.add_argument("--verify", choices=VERIFY_CHOICES, default="none",
                        help="registration: the node verifies each match by its live scan (node parameter verify); "
                             "sequence: the published matches in stamp order, after the replay. Either way the node "
                             "hides keyframes within --exclude-seconds of the query")
    add_cli_arguments(parser, ["sequence"])


def run(args: argparse.Namespace) -> int:
    return args.bag_run(args)


def _run_from_kitti(args) -> int:
    import sys

    from cmirl_ros.datasets.base import parse_frames
    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.ros.bag_writer import write_bag_from_dataset
    from cmirl_ros.ros.interfaces import InterfacesNotBuilt

    dataset = KittiSequence(args.root, args.seq, parse_frames(args.frames))
    try:
        out = write_bag_from_dataset(dataset, args.out, compressed=args.compressed, odometry_tf=args.odom_tf)
    except InterfacesNotBuilt as e:  # /tf_static needs the generated tf2_msgs: a setup step, not bad input
        print(f"cmirl bag from-kitti: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(dataset)} frames of {dataset.name} to the rosbag2 (mcap) bag {out}")
    return 0


def _run_play(args) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from cmirl_ros.ros.bag_player import play

    rclpy.init()
    node = rclpy.create_node("cmirl_bag_player")
    try:
        stats = play(node, args.path, rate=args.rate, loop=args.loop, clock=args.clock, topics=args.topics,
                     wait_for=args.wait_for)
        counts = ", ".join(f"{topic} {n}" for topic, n in sorted(stats.published.items()))
        print(f"played {args.path} in {stats.wall_seconds:.1f} s: {counts}")
    except (KeyboardInterrupt, ExternalShutdownException):
        print("bag play: interrupted")
    except RuntimeError as e:
        raise ValueError(f"{args.path}: {e}") from None
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _run_eval(args) -> int:
    from cmirl_ros.ros.bag_eval import evaluate_bag

    if not args.map.is_dir():
        raise FileNotFoundError(f"{args.map}: map directory not found")
    from cmirl_ros.options import sequence_config

    result = evaluate_bag(args.path, args.map, args.model, rate=args.rate, radius=args.radius,
                          exclude_seconds=args.exclude_seconds, use_scan=args.use_scan, device=args.device,
                          verify=args.verify, sequence=sequence_config(vars(args)), sequence_odometry=args.sequence_odometry)
    print(format_result(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        plot_loop_closure(result, args.json)
    return 0


def plot_loop_closure(result: dict, json_path: Path) -> None:
    """The PR curve of the published loop closures, beside the JSON (`NAME_pr.png`)."""
    from cmirl_ros.evaluation.metrics import PRCurve
    from cmirl_ros.evaluation.report import plot_pr_curves, pr_plot_path

    loop_closure = result["loop_closure"]
    curve = PRCurve.from_dict(loop_closure["pr_curve"], loop_closure["lc_positives"])
    plot_pr_curves({"published top-1 (score threshold)": curve}, pr_plot_path(json_path),
                   title=f"bag eval: loop closures, radius {result['radius_m']} m")


def format_result(result: dict) -> str:
    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}%"

    lines = [
        f"answered {result['queries_answered']}/{result['images_played']} queries "
        f"({pct(result['answered_fraction'])}), latency p50 {result['latency_ms_p50']} ms, p95 {result['latency_ms_p95']} ms",
    ]
    for name, protocol in result["protocols"].items():
        lines.append(f"{name:8s} Recall@1 {pct(protocol['recall@1'])}  Recall@1% (top {protocol['k_1_percent']}) "
                     f"{pct(protocol['recall@1%'])}  over {protocol['queries']} queries")
    lc = result["loop_closure"]
    lines.append(f"loop closures: max F1 {pct(lc['max_f1'])} (chance {pct(lc['chance_max_f1'])}), recall at 100% "
                 f"precision {pct(lc['recall_at_100p'])}, AP {pct(lc['average_precision'])} "
                 f"(chance {pct(lc['chance_average_precision'])}), precision of all {pct(lc['unverified_precision'])}")
    if result.get("verify", "none") != "none":
        lines.append(f"verified ({result['verify']}): precision {pct(result['verified_precision'])}, recall "
                     f"{pct(result['verified_recall'])}, {result['verified_matches']} verified, "
                     f"{result['unverified_queries']} unverified")
    return "\n".join(lines)
