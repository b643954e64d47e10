"""`cmirl bag eval`: the node, live, against a bag's ground truth.

Starts a recorder process and the localizer node process, replays the bag into the graph, then
scores what the node published: answered fraction, latency, loop-closure precision / recall of its
top-1 candidates over their published score (`~/candidates`), and Recall@1 / Recall@1% under both
protocols (paper: every keyframe counts; revisit: keyframes within `exclude_seconds` of the query
are hidden and only queries that truly revisit a mapped place count). The node runs without its
own exclusion and publishes the whole ranked map as candidates, so one replay gives both.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmirl_ros.datasets.bag import BagSequence
from cmirl_ros.evaluation.metrics import LOOP_CLOSURE_KEYS
from cmirl_ros.geometry.poses import nearest_stamps
from cmirl_ros.ros.processes import start_localizer, start_recorder
from cmirl_ros.topics import BAG_TOPICS, COMPRESSED_SUFFIX

NODE = "/localizer"
OUTPUTS = {
    "match": f"{NODE}/match",
    "candidates": f"{NODE}/candidates",
    "loop_closure": f"{NODE}/loop_closure",
    "diagnostics": "/diagnostics",
}
# What a SLAM front end takes from a node with session_map / relocalize_on_start (recorded always: a
# node without them never advertises these topics).
SLAM_OUTPUTS = {
    "loop_closure_edge": f"{NODE}/loop_closure_edge",
    "loop_closure_rejected": f"{NODE}/loop_closure_rejected",
    "initialpose": "/initialpose",
}
MAX_CANDIDATES = 500


def isolate_dds() -> None:
    """A private DDS domain on loopback for this run (children inherit it): a replay must never
    reach, or be disturbed by, a live robot's graph, whatever ROS_DOMAIN_ID the shell has."""
    from cmirl_ros.paths import config_dir

    os.environ["ROS_DOMAIN_ID"] = str(random.randint(101, 200))
    os.environ["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(config_dir() / "fastdds_local.xml")


@dataclass
class Recorded:
    """What the node published, one row per answered query, ordered by query stamp."""

    stamps: np.ndarray  # (Q,) query stamps (s)
    frame_ids: list[str]
    candidates: list[np.ndarray]  # per query: (k,) candidate keyframe ids, best first
    scores: list[np.ndarray]  # per query: (k,) their scores
    receive_times: np.ndarray  # (Q,) wall time the match arrived at the recorder (s)
    diagnostics: list[dict]
    match_poses: dict[float, np.ndarray]  # {query stamp: published ~/match pose (4,4)}, every match
    slam_outputs: dict  # see `SlamOutputs.to_dict`

    @property
    def loop_closures(self) -> list:
        """[query stamp, matched keyframe stamp] of each well-formed session-map closure."""
        return self.slam_outputs["loop_closures"]


@dataclass
class SlamOutputs:
    """The SLAM-facing outputs of a recording, as JSON-ready lists: `loop_closures` [query_stamp,
    matched_stamp] of each ~/loop_closure (exactly 2 values; other sizes are counted in
    `malformed_loop_closures`), `edges` / `rejected` {query_stamp, matched_stamp, score, fitness,
    relative_pose (4x4)} of each LoopClosure, `initialposes` {stamp, frame_id, pose (4x4)} of each /initialpose."""

    loop_closures: list
    malformed_loop_closures: int
    edges: list
    rejected: list
    initialposes: list

    def add(self, role: str, msg) -> None:
        from cmirl_ros.datasets.bag import pose_to_matrix
        from cmirl_ros.sensor_decoding import stamp_to_seconds

        if role == "loop_closure":
            if len(msg.data) == 2:
                self.loop_closures.append([float(v) for v in msg.data])
            else:
                self.malformed_loop_closures += 1
        elif role == "initialpose":
            self.initialposes.append({"stamp": stamp_to_seconds(msg.header.stamp), "frame_id": msg.header.frame_id,
                                      "pose": pose_to_matrix(msg.pose.pose).tolist()})
        else:
            edges = self.edges if role == "loop_closure_edge" else self.rejected
            edges.append({"query_stamp": stamp_to_seconds(msg.query_stamp),
                          "matched_stamp": stamp_to_seconds(msg.matched_stamp), "score": float(msg.score),
                          "fitness": float(msg.fitness), "relative_pose": pose_to_matrix(msg.relative_pose).tolist()})

    def to_dict(self) -> dict:
        return dict(vars(self))


def read_recording(path: Path) -> Recorded:
    """Everything the node published in one pass over the recording."""
    from rosbags.rosbag2 import Reader

    from cmirl_ros.datasets.bag import pose_to_matrix
    from cmirl_ros.ros.interfaces import interfaces_typestore

    store = interfaces_typestore()
    slam_roles = {OUTPUTS["loop_closure"]: "loop_closure", **{v: k for k, v in SLAM_OUTPUTS.items()}}
    slam = SlamOutputs([], 0, [], [], [])
    matches, candidates, diagnostics, match_poses = {}, {}, [], {}
    with Reader(path) as reader:
        for connection, bag_time, raw in reader.messages():
            msg = store.deserialize_cdr(raw, connection.msgtype)
            if connection.topic == OUTPUTS["match"]:
                key = (msg.header.stamp.sec, msg.header.stamp.nanosec)  # exact: the query's stamp
                matches[key] = (key[0] + key[1] * 1e-9, msg.header.frame_id, bag_time * 1e-9)
                match_poses[key[0] + key[1] * 1e-9] = pose_to_matrix(msg.pose.pose)
            elif connection.topic == OUTPUTS["candidates"]:
                key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
                candidates[key] = (np.asarray(msg.keyframe_ids, np.int64), np.asarray(msg.scores, np.float64))
            elif connection.topic == OUTPUTS["diagnostics"]:
                for status in msg.status:
                    diagnostics.append({kv.key: kv.value for kv in status.values})
            if connection.topic in slam_roles:
                slam.add(slam_roles[connection.topic], msg)
    keys = sorted(k for k in matches if k in candidates)
    return Recorded(
        stamps=np.array([matches[k][0] for k in keys]),
        frame_ids=[matches[k][1] for k in keys],
        candidates=[candidates[k][0] for k in keys],
        scores=[candidates[k][1] for k in keys],
        receive_times=np.array([matches[k][2] for k in keys]),
        diagnostics=diagnostics,
        match_poses=match_poses,
        slam_outputs=slam.to_dict(),
    )


def top1_scores(recorded: Recorded) -> np.ndarray:
    """(Q,) the score of each answered query's best candidate (NaN where it published none)."""
    return np.array([s[0] if len(s) else np.nan for s in recorded.scores], dtype=np.float64)


def score(recorded: Recorded, bag: BagSequence, mapdb, radius: float, exclude_seconds: float) -> dict:
    """Recall of both protocols from the published rankings, and the loop-closure figures of what the
    node published (its top-1 and score, under the node's own exclusion: none in a replay)."""
    from cmirl_ros.evaluation.metrics import loop_closure_metrics, recall_from_rankings, top1_percent_k
    from cmirl_ros.geometry import place_distances, time_exclusion

    frame_of = nearest_stamps(recorded.stamps, bag.stamps)
    known = [i for i, f in enumerate(frame_of) if f >= 0]
    frames = [int(frame_of[i]) for i in known]
    positions = mapdb.keyframes.positions
    map_poses = np.repeat(np.eye(4)[None], len(positions), axis=0)
    map_poses[:, :3, 3] = positions
    query_poses = bag.frame_convention.to_map(bag.poses[frames])
    correct = place_distances(query_poses, map_poses, bag.frame_convention.ground_axes) < radius
    rankings = [recorded.candidates[i] for i in known]
    excluded = time_exclusion(recorded.stamps[known], mapdb.keyframes.stamps, exclude_seconds)
    k_pct = top1_percent_k(len(mapdb))
    top1 = np.array([r[0] for r in rankings], dtype=np.int64)
    top1_correct = correct[np.arange(len(top1)), top1] if len(top1) else np.zeros(0, bool)
    per_query = {
        "stamps": recorded.stamps[known].tolist(),
        "true_positions": query_poses[:, :3, 3].tolist(),
        "match_positions": positions[top1].tolist() if len(top1) else [],
        "correct": top1_correct.tolist(),
    }
    loop_closure = loop_closure_metrics(top1_scores(recorded)[known], top1_correct, correct.any(1),
                                        chance_correct=correct.mean(1) if len(positions) else None)
    return {
        "paper": recall_from_rankings(rankings, correct, None, k_pct),
        "revisit": recall_from_rankings(rankings, correct, excluded, k_pct),
    }, loop_closure, per_query


# ---------------------------------------------------------------- verified matches (--verify)
VERIFY_CHOICES = ("none", "registration", "sequence")


def verify_node_params(verify: str, use_scan: bool, exclude_seconds: float) -> dict:
    """Node parameters of `--verify`. Registration runs in the node (it needs the live scan); sequence is
    applied afterwards to every match the node published, so the node itself runs `verify: none` then
    (as with `--verify none`: the raw answers are what is measured). With registration or sequence, the
    node hides keyframes within `exclude_seconds` of the query (its own recent drive) so that what it
    publishes are loop closures, and its candidates and scores are those after the exclusion."""
    if verify not in VERIFY_CHOICES:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_CHOICES)}, got {verify!r}")
    if verify == "registration" and not use_scan:
        raise ValueError("bag eval --verify registration registers each query's live scan: add --use-scan")
    node_verify = {"verify": "registration" if verify == "registration" else "none"}
    if verify == "none":
        return node_verify
    return {"exclude_seconds": float(exclude_seconds), **node_verify}


def map_truth(bag: BagSequence) -> np.ndarray:
    """(F,4,4) the bag's ground-truth poses in the map frame (its frame convention)."""
    return bag.frame_convention.to_map(bag.poses)


def _revisits(bag: BagSequence, mapdb, radius: float, exclude_seconds: float) -> np.ndarray:
    """(F,) whether each bag frame's place is in the map outside its exclusion window."""
    from cmirl_ros.geometry import place_distances, time_exclusion

    near = place_distances(map_truth(bag), mapdb.keyframes.poses(), bag.frame_convention.ground_axes) < radius
    return (near & ~time_exclusion(bag.stamps, mapdb.keyframes.stamps, exclude_seconds)).any(1)


def registration_figures(recorded: Recorded, bag: BagSequence, mapdb, radius: float,
                         exclude_seconds: float) -> dict:
    """Verified figures of a node that ran `verify: registration`: every published match is verified;
    one is correct when its refined pose is within 1 m and 5 degrees of the ground truth (as `cmirl eval`).
    The node publishes base poses, the bag's ground truth is the camera's: compared as camera poses."""
    from cmirl_ros.evaluation.metrics import pose_errors, poses_within, verified_match_figures
    from cmirl_ros.ros.bag_writer import BASE_FRAME

    published, truth = recorded.match_poses, map_truth(bag)
    T_base_cam = bag.camera_on_base(BASE_FRAME)
    frames = nearest_stamps(np.array(list(published)), bag.stamps)
    errors = np.full((len(bag.stamps), 2), np.nan)
    verified = np.zeros(len(bag.stamps), bool)
    for frame, pose in zip(frames, published.values()):
        if frame >= 0:
            verified[frame] = True
            errors[frame] = pose_errors(pose @ T_base_cam, truth[frame], bag.frame_convention.ground_axes)[0]
    figures = verified_match_figures(verified, poses_within(errors), _revisits(bag, mapdb, radius, exclude_seconds),
                                     errors)
    last = recorded.diagnostics[-1] if recorded.diagnostics else {}
    return {**figures, "unverified_queries": int(last["unverified"]) if "unverified" in last else None}


def sequence_figures(recorded: Recorded, bag: BagSequence, mapdb, radius: float, exclude_seconds: float,
                     config, odometry: bool) -> dict:
    """`--verify sequence` applied to the published matches in stamp order (`sequence.verify_ranked`;
    odometry = the bag's ground-truth poses, their relative motion only) over each query's published
    candidates and scores (`~/candidates`), the top `config.candidates` of them."""
    from cmirl_ros.evaluation.metrics import loop_closure_metrics, pose_errors
    from cmirl_ros.localization.sequence import verify_ranked

    frames = nearest_stamps(recorded.stamps, bag.stamps)
    known = np.flatnonzero(frames >= 0)
    frames = frames[known]
    keyframe_poses, truth = mapdb.keyframes.poses(), map_truth(bag)[frames]
    depth = config.candidates
    ranked = np.zeros((len(known), depth), np.int64)
    ranked_scores = np.full((len(known), depth), -np.inf)
    for row, i in enumerate(known):
        ids = recorded.candidates[i][:depth]
        ranked[row, :len(ids)], ranked_scores[row, :len(ids)] = ids, recorded.scores[i][:depth]
    picked, accepted, scores = verify_ranked(recorded.stamps[known], ranked, ranked_scores,
                                             keyframe_poses, truth if odometry else None, config,
                                             bag.frame_convention.ground_axes)
    errors = pose_errors(keyframe_poses[picked], truth, bag.frame_convention.ground_axes)
    has_revisit = _revisits(bag, mapdb, radius, exclude_seconds)
    # Every bag frame counts; those the node did not answer have no match (recall's denominator only).
    unanswered = np.setdiff1d(np.arange(len(bag.stamps)), frames)
    order = np.r_[frames, unanswered]
    lc = loop_closure_metrics(np.r_[scores, np.full(len(unanswered), np.nan)],
                              np.r_[errors[:, 0] < radius, np.zeros(len(unanswered), bool)], has_revisit[order],
                              np.r_[accepted, np.zeros(len(unanswered), bool)], "sequence",
                              pose_error=np.r_[errors, np.full((len(unanswered), 2), np.nan)]).to_dict()
    return {"verified_precision": lc["verified_precision"], "verified_recall": lc["verified_recall"],
            "verified_matches": lc["verified_accepted"], "unverified_queries": len(frames) - lc["verified_accepted"],
            "revisit_queries": lc["lc_positives"], "pose_error_m_p50": lc["pose_error_m_p50"],
            "pose_error_deg_p50": lc["pose_error_deg_p50"], "verified_recall_at_99p": lc["verified_recall_at_99p"],
            "sequence": config.to_dict(), "sequence_odometry": odometry}


def verification_result(verify: str, recorded: Recorded, bag: BagSequence, mapdb, radius: float,
                        exclude_seconds: float, sequence=None, sequence_odometry: bool = False) -> dict:
    """The `--verify` keys of the result (none: nothing to add)."""
    if verify == "registration":
        return {"verify": verify, **registration_figures(recorded, bag, mapdb, radius, exclude_seconds)}
    if verify == "sequence":
        from cmirl_ros.localization.sequence import SequenceConfig

        return {"verify": verify, **sequence_figures(recorded, bag, mapdb, radius, exclude_seconds,
                                                     sequence or SequenceConfig(), sequence_odometry)}
    return {}


def latency_summary(recorded: Recorded) -> dict:
    """Node-side latency (image received -> match published), from the node's last diagnostics."""
    for entry in reversed(recorded.diagnostics):
        if entry.get("latency_ms_p50", "nan") != "nan":
            return {"latency_ms_p50": float(entry["latency_ms_p50"]), "latency_ms_p95": float(entry["latency_ms_p95"]),
                    "dropped": int(entry["dropped"]), "rejected": int(entry["rejected"])}
    return {"latency_ms_p50": None, "latency_ms_p95": None, "dropped": None, "rejected": None}


def node_counts(recorded: Recorded) -> dict:
    """How the node took its inputs, from its last diagnostics: fused queries, sets without calibration."""
    last = recorded.diagnostics[-1] if recorded.diagnostics else {}
    return {key: int(last[key]) if key in last else None for key in ("fused", "no_calibration", "unpaired_images")}


def evaluate_bag(bag_path: Path, map_dir: Path, model: str, rate: float = 1.0, radius: float = 10.0,
                 exclude_seconds: float = 30.0, use_scan: bool = False, device: str = "auto",
                 workdir: Path | None = None, node_params: dict | None = None, details: bool = False,
                 wait_outputs: tuple[str, ...] = (), log=print, verify: str = "none", sequence=None,
                 sequence_odometry: bool = False) -> dict:
    """Replay `bag_path` into a fresh localizer node and score its outputs (see module doc).
    `details`: also return per-query positions and correctness, the trajectory, the keyframes and
    the SLAM outputs (`SlamOutputs`). `wait_outputs`: further output topics the recorder must
    have subscribed before the replay starts (e.g. SLAM_OUTPUTS' that the node is set to publish).
    `verify` (none | registration | sequence, `verify_node_params`): also the verified figures;
    `sequence`: its SequenceConfig, `sequence_odometry`: the bag's ground-truth poses as odometry."""
    import rclpy

    from cmirl_ros.mapdb import MapDatabase
    from cmirl_ros.ros.bag_player import play
    from cmirl_ros.ros.localizer_node import READY_LOG

    verify_params = verify_node_params(verify, use_scan, exclude_seconds)  # refused before anything starts
    isolate_dds()
    bag = BagSequence(bag_path)
    mapdb = MapDatabase.load(map_dir)
    owned = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="cmirl_bag_eval_")) if owned else Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    recording = workdir / "outputs"
    shutil.rmtree(recording, ignore_errors=True)
    params = {"model": str(model), "map": str(map_dir), "device": device, "use_scan": use_scan, "exclude_seconds": 0.0,
              "top_k": min(len(mapdb), MAX_CANDIDATES), "publish_markers": False, "diagnostics_period": 0.5,
              "stats_window": 1e6,  # latency figures over the whole replay
              "image_transport": "compressed" if (bag.image_topic or "").endswith(COMPRESSED_SUFFIX) else "raw",
              **verify_params, **(node_params or {})}
    recorder = start_recorder(recording, list(OUTPUTS.values()) + list(SLAM_OUTPUTS.values()), workdir)
    node = start_localizer(params, workdir)
    try:
        recorder.wait_for("recorder ready", 60)
        node.wait_for(READY_LOG, 300)
        for topic in (OUTPUTS["match"], OUTPUTS["candidates"], *wait_outputs):
            recorder.wait_for(f"recording {topic}", 30)
        rclpy.init()
        player = rclpy.create_node("cmirl_bag_player")
        try:
            watcher = MatchWatcher(player)
            waits = [bag.image_topic] + ([BAG_TOPICS["points"]] if use_scan else [])
            log(f"bag eval: playing {bag_path} at x{rate} into the localizer")
            stats = play(player, bag_path, rate=rate, wait_for=waits, log=log)
            watcher.wait_until_quiet(quiet_seconds=3.0, timeout=120.0)
        finally:
            player.destroy_node()
            rclpy.try_shutdown()
    finally:
        node_code = node.stop(signal.SIGINT)
        recorder.stop(signal.SIGINT)
    recorded = read_recording(recording)
    images_sent = stats.published.get(bag.image_topic, 0)
    result = {
        "bag": str(bag_path),
        "map": str(map_dir),
        "model": str(model),
        "rate": rate,
        "images_played": images_sent,
        "queries_answered": int(len(recorded.stamps)),
        "answered_fraction": len(recorded.stamps) / images_sent if images_sent else 0.0,
        "loop_closures": int(len(recorded.loop_closures)),
        "frame_ids": sorted(set(recorded.frame_ids)),
        "node_exit_code": node_code,
        "radius_m": radius,
        "exclude_seconds": exclude_seconds,
        **latency_summary(recorded),
        **node_counts(recorded),
    }
    result["protocols"], loop_closure, per_query = score(recorded, bag, mapdb, radius, exclude_seconds)
    result["loop_closure"] = loop_closure.to_dict()
    result.update({key: result["loop_closure"][key] for key in LOOP_CLOSURE_KEYS})
    result.update(verification_result(verify, recorded, bag, mapdb, radius, exclude_seconds, sequence,
                                      sequence_odometry))
    if details:
        result["per_query"] = per_query
        result["trajectory"] = map_truth(bag)[:, :3, 3].tolist()
        result["keyframes"] = mapdb.keyframes.positions.tolist()
        result["slam_outputs"] = recorded.slam_outputs
    if owned:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


class MatchWatcher:
    """Follows the node's ~/match in the player's process, to know when it has answered all in flight."""

    def __init__(self, node):
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self.node = node
        self.last_seen = time.monotonic()
        node.create_subscription(PoseWithCovarianceStamped, OUTPUTS["match"], self._seen,
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))

    def _seen(self, msg) -> None:
        self.last_seen = time.monotonic()

    def wait_until_quiet(self, quiet_seconds: float, timeout: float) -> None:
        import rclpy

        self.last_seen = time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and time.monotonic() - self.last_seen < quiet_seconds:
            rclpy.spin_once(self.node, timeout_sec=0.1)
