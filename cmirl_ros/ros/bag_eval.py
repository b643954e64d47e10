"""`cmirl bag eval`: the node, live, against a bag's ground truth.

Starts a recorder process and the localizer node process, replays the bag into the graph, then
scores what the node published: answered fraction, latency, loop-closure precision / recall of its
top-1 matches over their published score (`loop_closure`), and Recall@1 / Recall@1% under both
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

from cmirl_ros.datasets.bag import BagSequence, typestore
from cmirl_ros.evaluation.metrics import LOOP_CLOSURE_KEYS
from cmirl_ros.ros.processes import start_localizer, start_recorder
from cmirl_ros.topics import BAG_TOPICS, COMPRESSED_SUFFIX

NODE = "/localizer"
OUTPUTS = {
    "match": f"{NODE}/match",
    "candidates": f"{NODE}/candidates",
    "loop_closure": f"{NODE}/loop_closure",
    "diagnostics": "/diagnostics",
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
    candidates: list[np.ndarray]  # per query: (k, 3) candidate positions, best first
    loop_closures: np.ndarray  # (L, 3): query stamp, matched keyframe stamp, score
    receive_times: np.ndarray  # (Q,) wall time the match arrived at the recorder (s)
    diagnostics: list[dict]


def read_recording(path: Path) -> Recorded:
    from rosbags.rosbag2 import Reader

    store = typestore()
    matches, candidates, loops, diagnostics = {}, {}, [], []
    with Reader(path) as reader:
        for connection, bag_time, raw in reader.messages():
            msg = store.deserialize_cdr(raw, connection.msgtype)
            if connection.topic == OUTPUTS["match"]:
                key = (msg.header.stamp.sec, msg.header.stamp.nanosec)  # exact: the query's stamp
                matches[key] = (key[0] + key[1] * 1e-9, msg.header.frame_id, bag_time * 1e-9)
            elif connection.topic == OUTPUTS["candidates"]:
                key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
                candidates[key] = np.array([[p.position.x, p.position.y, p.position.z] for p in msg.poses])
            elif connection.topic == OUTPUTS["loop_closure"]:
                loops.append(np.asarray(msg.data, dtype=np.float64))
            elif connection.topic == OUTPUTS["diagnostics"]:
                for status in msg.status:
                    diagnostics.append({kv.key: kv.value for kv in status.values})
    keys = sorted(k for k in matches if k in candidates)
    loop_closures = np.array(loops).reshape(len(loops), -1) if loops else np.zeros((0, 3))
    return Recorded(
        stamps=np.array([matches[k][0] for k in keys]),
        frame_ids=[matches[k][1] for k in keys],
        candidates=[candidates[k] for k in keys],
        loop_closures=loop_closures,
        receive_times=np.array([matches[k][2] for k in keys]),
        diagnostics=diagnostics,
    )


def nearest_stamps(stamps: np.ndarray, reference: np.ndarray, tolerance: float = 1e-5) -> np.ndarray:
    """Index of the reference stamp equal to each stamp (within float error of epoch seconds), or -1."""
    reference = np.asarray(reference, dtype=np.float64)
    if len(reference) == 0:
        return np.full(len(stamps), -1, dtype=np.int64)
    order = np.argsort(reference)
    sorted_ref = reference[order]
    pos = np.clip(np.searchsorted(sorted_ref, stamps), 1, max(len(sorted_ref) - 1, 1))
    left = np.clip(pos - 1, 0, len(sorted_ref) - 1)
    right = np.clip(pos, 0, len(sorted_ref) - 1)
    best = np.where(np.abs(sorted_ref[left] - stamps) <= np.abs(sorted_ref[right] - stamps), left, right)
    found = np.abs(sorted_ref[best] - stamps) <= tolerance
    return np.where(found, order[best], -1)


def candidate_ids(candidates: np.ndarray, keyframe_positions: np.ndarray) -> np.ndarray:
    """Map published candidate positions back to keyframe ids (they are copies of keyframe positions)."""
    d = np.linalg.norm(candidates[:, None, :] - keyframe_positions[None, :, :], axis=2)
    return d.argmin(axis=1)


def top1_scores(recorded: Recorded) -> np.ndarray:
    """(Q,) the score the node published with each answered query's loop closure (NaN where none)."""
    scores = np.full(len(recorded.stamps), np.nan)
    if recorded.loop_closures.shape[1] >= 3:
        found = nearest_stamps(recorded.stamps, recorded.loop_closures[:, 0])
        scores[found >= 0] = recorded.loop_closures[found[found >= 0], 2]
    return scores


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
    rankings = [candidate_ids(recorded.candidates[i], positions) for i in known]
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
                 log=print) -> dict:
    """Replay `bag_path` into a fresh localizer node and score its outputs (see module doc).
    `details`: also return per-query positions and correctness, the trajectory and the keyframes."""
    import rclpy

    from cmirl_ros.mapdb import MapDatabase
    from cmirl_ros.ros.bag_player import play
    from cmirl_ros.ros.localizer_node import READY_LOG

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
              **(node_params or {})}
    recorder = start_recorder(recording, list(OUTPUTS.values()), workdir)
    node = start_localizer(params, workdir)
    try:
        recorder.wait_for("recorder ready", 60)
        node.wait_for(READY_LOG, 300)
        for topic in (OUTPUTS["match"], OUTPUTS["candidates"]):
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
    if details:
        result["per_query"] = per_query
        result["trajectory"] = bag.frame_convention.to_map(bag.poses)[:, :3, 3].tolist()  # map frame
        result["keyframes"] = mapdb.keyframes.positions.tolist()
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
