"""A stand-in for LIO-SAM's external loop-closure subscriber, run as its own process.

LIO-SAM (mapOptmization, loopInfoHandler + detectLoopClosureExternal) takes
std_msgs/Float64MultiArray on lio_loop/loop_closure_detection, drops a message whose data is not
exactly 2 values, reads data[0] as the current and data[1] as the previous time, drops a pair closer
than historyKeyframeSearchTimeDiff, and looks both times up in its own keyframe times, which are
the stamps of the scans it received. This consumer does the same, but strictly: it keeps the
header stamps of every scan it receives as its keyframe times and records a FAILURE for any message
that LIO-SAM would drop or could only attach to some other keyframe (wrong size, a stamp that is
none of its scans', a pair closer than the gap or in the wrong order). It also keeps the
~/loop_closure_edge and ~/loop_closure_rejected messages and the localizer's last /diagnostics values.

    python lio_sam_consumer.py OUT.json --loop TOPIC --edge TOPIC --rejected TOPIC --scans TOPIC --min-gap S
SIGINT writes OUT.json ({"pairs", "failures", "edges", "rejected", "diagnostics", "scan_stamps"}) and exits.
"""
from __future__ import annotations

import argparse
import json
import struct
import sys

READY_LOG = "consumer ready"
STAMP_TOLERANCE_S = 1e-6  # float64 seconds of a builtin_interfaces/Time


def check_pair(data, scan_stamps, min_gap: float) -> str:
    """Why LIO-SAM would not close this loop on the keyframes it has ('' = it would)."""
    if len(data) != 2:
        return f"data has {len(data)} values, LIO-SAM takes exactly 2"
    current, previous = float(data[0]), float(data[1])
    for name, stamp in (("current", current), ("previous", previous)):
        if not any(abs(stamp - known) <= STAMP_TOLERANCE_S for known in scan_stamps):
            return f"{name} time {stamp:.6f} is not the stamp of any scan this consumer received"
    if current - previous < min_gap:
        return f"current {current:.6f} - previous {previous:.6f} < historyKeyframeSearchTimeDiff {min_gap}"
    return ""


def header_stamp(raw: bytes) -> float:
    """The header stamp of a serialised message that starts with std_msgs/Header (CDR: 4-byte
    encapsulation, then int32 sec, uint32 nanosec), without deserialising the whole scan."""
    sec, nanosec = struct.unpack_from("<iI", raw, 4)
    return sec + nanosec * 1e-9


def stamp_seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def main(argv=None) -> int:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import ExternalShutdownException
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import Float64MultiArray

    from cmirl_ros.ros.interfaces import loop_closure_type

    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--loop", required=True)
    parser.add_argument("--edge", required=True)
    parser.add_argument("--rejected", required=True)
    parser.add_argument("--scans", required=True)
    parser.add_argument("--min-gap", type=float, required=True)
    args = parser.parse_args(argv)
    rclpy.init()
    node = rclpy.create_node("lio_sam_consumer")
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    record = {"pairs": [], "failures": [], "edges": [], "rejected": [], "diagnostics": {}, "scan_stamps": []}

    def on_scan(raw):
        record["scan_stamps"].append(header_stamp(raw))

    def on_loop(msg):
        data = list(msg.data)
        problem = check_pair(data, record["scan_stamps"], args.min_gap)
        (record["failures"] if problem else record["pairs"]).append({"data": data, "problem": problem} if problem else data)

    def edge_fields(msg) -> dict:
        return {"query_stamp": stamp_seconds(msg.query_stamp), "matched_stamp": stamp_seconds(msg.matched_stamp),
                "query_keyframe_id": msg.query_keyframe_id, "matched_keyframe_id": msg.matched_keyframe_id,
                "information": list(msg.information), "fitness": msg.fitness, "score": msg.score,
                "position": [msg.relative_pose.position.x, msg.relative_pose.position.y, msg.relative_pose.position.z]}

    def on_diagnostics(msg):
        for status in msg.status:
            if "localization" in status.name:
                record["diagnostics"] = {kv.key: kv.value for kv in status.values}

    node.create_subscription(PointCloud2, args.scans, on_scan, reliable, raw=True)
    node.create_subscription(Float64MultiArray, args.loop, on_loop, reliable)
    node.create_subscription(loop_closure_type(), args.edge, lambda msg: record["edges"].append(edge_fields(msg)), reliable)
    node.create_subscription(loop_closure_type(), args.rejected, lambda msg: record["rejected"].append(edge_fields(msg)),
                             reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    print(READY_LOG, flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        with open(args.out, "w") as f:
            json.dump(record, f)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
