"""The localizer node's one-shot relocalization: `~/relocalize`, `initialpose` and the optional map -> odom tf.

`initialpose` (relative: `/initialpose` at the root, Nav2 AMCL's topic) gets one message per armed
request (the `~/relocalize` service, or `relocalize_on_start` at activation), from a verified
prior-map match, never at frame rate (`cmirl_ros.localization.relocalization`). The message is the
node's `~/match` message of that query, as it is: frame_id map_frame (AMCL ignores an initial pose
in any other frame than its global frame), the query's stamp (AMCL carries the pose from that stamp
to now with its odometry tf), the base pose and the verification's covariance (AMCL reads x, y, yaw
and the x/y and yaw variances). Volatile on purpose: a latched pose would re-initialise a consumer
that starts later with a stale pose.

`publish_map_odom_tf`: after a verified relocalization, map_frame -> odom_frame on /tf, the
correction T_map_base @ inv(T_odom_base) with T_odom_base from tf at the query's stamp. tf consumers
look transforms up at their data's stamps, so it is re-sent every MAP_ODOM_PERIOD_S with a fresh
stamp dated MAP_ODOM_FUTURE_S ahead (as AMCL dates its own map -> odom by its transform tolerance)
until the next relocalization replaces it.
"""
from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_srvs.srv import Trigger

from cmirl_ros.datasets.bag import pose_to_matrix
from cmirl_ros.geometry.tf_tree import TfError, TfTree
from cmirl_ros.localization.relocalization import OneShotRelocalization
from cmirl_ros.sensor_decoding import stamp_to_seconds

INITIALPOSE_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
TF_BROADCAST_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)  # tf2_ros's broadcaster
MAP_ODOM_PERIOD_S = 0.1
MAP_ODOM_FUTURE_S = 0.5


REFUSED = ("needs verify: registration (use_scan; verify auto picks it): an initial pose comes only from a "
           "registered match, never from an unverified one nor from a sequence-confirmed keyframe's pose")


def check_parameters(params: dict) -> None:
    """Refuse what would let anything but a registered pose become an initial pose (`verify` resolved)."""
    if params["relocalize_on_start"] and params["verify"] != "registration":
        raise ValueError(f"parameter 'relocalize_on_start' {REFUSED}")


class Relocalizer:
    """What the node owns for relocalization: the service (from construction), and from configure the
    state, the `initialpose` publisher and the map -> odom broadcaster."""

    def __init__(self, node):
        self._node = node
        self._params: dict = {}
        self._state: OneShotRelocalization | None = None
        self._publisher = None
        self._tf_publisher = None
        self._timer = None
        self._map_odom = None  # the TransformStamped being re-sent
        self._error = ""
        node.create_service(Trigger, "~/relocalize", self._on_relocalize)

    def configure(self, params: dict) -> None:
        self.release()
        self._params = params
        self._state = OneShotRelocalization(matches_needed=int(params["relocalize_matches"]))
        self._error = ""
        self._publisher = self._node.create_publisher(PoseWithCovarianceStamped, "initialpose", INITIALPOSE_QOS)
        if params["publish_map_odom_tf"]:
            from cmirl_ros.ros.interfaces import tf_message_type

            self._tf_publisher = self._node.create_publisher(tf_message_type(), "/tf", TF_BROADCAST_QOS)
            self._timer = self._node.create_timer(MAP_ODOM_PERIOD_S, self._send_map_odom)

    def activate(self) -> None:
        if self._params.get("relocalize_on_start"):
            self._state.arm()
            self._node.get_logger().info("relocalization armed at start: the next verified match becomes the initial pose")

    def release(self) -> None:
        for publisher in (self._publisher, self._tf_publisher):
            if publisher is not None:
                self._node.destroy_publisher(publisher)
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
        self._publisher = self._tf_publisher = self._timer = self._map_odom = self._state = None

    def offer(self, match: PoseWithCovarianceStamped, verified: bool, tf: TfTree) -> None:
        """A `~/match` message just published (verified or not): published on `initialpose` when it
        completes an armed request."""
        state = self._state
        if state is None or not state.armed:
            return
        stamp = stamp_to_seconds(match.header.stamp)
        T_odom_base = self._odom_pose(tf, stamp)
        released = state.offer(stamp, pose_to_matrix(match.pose.pose), np.reshape(match.pose.covariance, (6, 6)),
                               verified, T_odom_base)
        if released is None:
            return
        self._publisher.publish(match)
        p = released.T_map_base[:3, 3]
        self._node.get_logger().info(f"relocalized: initial pose at {stamp:.3f} ({p[0]:.2f}, {p[1]:.2f}, {p[2]:.2f}) "
                                     f"published on {self._publisher.topic_name}")
        if self._tf_publisher is not None:
            self._set_map_odom(released.T_map_odom)

    def _odom_pose(self, tf: TfTree, stamp: float) -> np.ndarray | None:
        try:
            return tf.lookup(self._params["odom_frame"], self._params["base_frame"], stamp)
        except TfError as e:
            self._error = f"no {self._params['odom_frame']} -> {self._params['base_frame']} at {stamp:.3f}: {e}"
            return None

    def _set_map_odom(self, T_map_odom: np.ndarray | None) -> None:
        from builtin_interfaces.msg import Time

        from cmirl_ros.ros.bag_writer import transform_stamped

        if T_map_odom is None:
            self._node.get_logger().error(f"map -> odom not broadcast: {self._error}")
            return
        self._error = ""
        self._map_odom = transform_stamped(Time(), self._params["map_frame"], self._params["odom_frame"], T_map_odom)
        self._send_map_odom()

    def _send_map_odom(self) -> None:
        if self._map_odom is None:
            return
        from rclpy.duration import Duration

        self._map_odom.header.stamp = (self._node.get_clock().now() + Duration(seconds=MAP_ODOM_FUTURE_S)).to_msg()
        self._tf_publisher.publish(self._tf_publisher.msg_type(transforms=[self._map_odom]))

    def diagnostics(self) -> dict:
        if self._state is None:
            return {}
        values = {"relocalization": self._state.status()}
        if self._tf_publisher is not None:
            values["map_odom_tf"] = "broadcasting" if self._map_odom is not None else (self._error or "none yet")
        return values

    def _on_relocalize(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self._state is None:
            response.success, response.message = False, "not configured: nothing to relocalize against"
        elif self._params["verify"] != "registration":
            response.success = False
            response.message = f"refused: verify is '{self._params['verify']}'; relocalization {REFUSED}"
        else:
            self._state.arm()
            response.success, response.message = True, "armed: the next verified match is published once on initialpose"
        self._node.get_logger().info(f"~/relocalize: {response.message}")
        return response
