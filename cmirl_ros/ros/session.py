"""The node's live session map (`session_map: true`): its queries in, session loop closures out.

Every image + scan query the node localizes also goes to a `SessionMap` with its odometry pose
(tf `odom_frame` -> `base_frame` at the query stamp) and the base -> scan transform; a query
without them (odometry not in tf, not at that stamp) is counted as `no_odometry` and skipped. A
verified pair is published on `~/loop_closure` (std_msgs/Float64MultiArray [query stamp, matched
stamp], LIO-SAM's lio_loop/loop_closure_detection) and `~/loop_closure_edge`
(cmirl_ros_interfaces/LoopClosure); candidates that failed registration on
`~/loop_closure_rejected`. `~/save_map` writes the session map as a map directory to the
`session_map_out` parameter's directory (read when called), atomically.
"""
from __future__ import annotations

import threading

from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64MultiArray, Header

from cmirl_ros.geometry.tf_tree import TfError
from cmirl_ros.localization.session_map import SessionConfig, SessionMap
from cmirl_ros.ros import messages
from cmirl_ros.ros.interfaces import loop_closure_type


class SessionLoopClosures:
    def __init__(self, node, localizer, params: dict):
        self.node = node
        self.params = params
        registration = localizer.config.registration_config(localizer.mapdb.clouds.voxel_m)
        config = SessionConfig(keyframe_distance=float(params["keyframe_distance"]),
                               loop_closure_min_gap=float(params["loop_closure_min_gap"]),
                               candidates=int(params["verify_candidates"]), frame_id=params["odom_frame"])
        self.session = SessionMap(localizer.model, registration, config)
        self._lock = threading.Lock()  # the worker adds, the save_map service reads
        self.counts = {"session_queries": 0, "session_keyframes": 0, "loop_closures_published": 0, "loop_closures_rejected": 0,
                       "no_odometry": 0}
        self.last_odometry_error = ""
        self._publishers = {}
        if params["publish_loop_closure"]:
            reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            edge = loop_closure_type()
            self._publishers = {"loop_closure": node.create_publisher(Float64MultiArray, "~/loop_closure", reliable),
                                "loop_closure_edge": node.create_publisher(edge, "~/loop_closure_edge", reliable),
                                "loop_closure_rejected": node.create_publisher(edge, "~/loop_closure_rejected", reliable)}

    def destroy(self) -> None:
        for publisher in self._publishers.values():
            self.node.destroy_publisher(publisher)
        self._publishers = {}

    def add(self, tf, stamp: float, points, calib, scan_frame: str) -> None:
        """One localized image + scan query (worker thread)."""
        try:
            self._add(tf, stamp, points, calib, scan_frame)
        finally:
            self.counts["session_queries"] += 1  # taken, whatever became of it

    def _add(self, tf, stamp: float, points, calib, scan_frame: str) -> None:
        p = self.params
        try:
            T_odom_base = tf.lookup(p["odom_frame"], p["base_frame"], stamp)
            T_base_sensor = tf.lookup(p["base_frame"], scan_frame, stamp)
        except TfError as e:
            self.counts["no_odometry"] += 1
            self.last_odometry_error = " ".join(str(e).split())
            self.node.get_logger().warning(
                f"no odometry for the query at {stamp:.3f}, not added to the session map: {self.last_odometry_error} "
                f"(so far: {self.counts['no_odometry']})", throttle_duration_sec=float(p["warn_throttle_s"]))
            return
        try:  # a failure here must not cost the query its prior-map answer
            with self._lock:
                update = self.session.add(stamp, T_odom_base, T_base_sensor, points, calib)
                self.counts["session_keyframes"] = len(self.session)
        except Exception as e:
            self.counts["session_errors"] += 1
            self.node.get_logger().error(f"session map: query at {stamp:.3f} not added: {' '.join(str(e).split())}",
                                         throttle_duration_sec=float(p["warn_throttle_s"]))
            return
        for pair in update.rejected:
            self._publish("loop_closure_rejected", pair)
        if update.closure is not None:
            self._publish("loop_closure_edge", update.closure)
            publisher = self._publishers.get("loop_closure")
            if publisher is not None:
                publisher.publish(messages.loop_closure_msg(update.closure.query_stamp, update.closure.matched_stamp))
        self.counts["loop_closures_published"] += update.closure is not None
        self.counts["loop_closures_rejected"] += len(update.rejected)

    def _publish(self, name: str, pair) -> None:
        publisher = self._publishers.get(name)
        if publisher is not None:
            header = Header(stamp=self.node.get_clock().now().to_msg(), frame_id=self.params["odom_frame"])
            publisher.publish(messages.loop_closure_edge_msg(header, pair))

    def save(self, directory: str) -> str:
        """Write the session map to `directory`; returns the answer for ~/save_map (raises on failure)."""
        if not directory:
            raise ValueError("parameter 'session_map_out' is empty: set it to the directory ~/save_map writes")
        with self._lock:  # a snapshot; the worker goes on adding while it is written
            database = self.session.database()
        database.save(directory, overwrite=True)
        return f"saved the session map ({len(database)} keyframes) to {directory}"

    def diagnostics(self) -> dict:
        values = dict(self.counts)
        if self.last_odometry_error:
            values["last_odometry_error"] = self.last_odometry_error
        return values
