"""Output messages of the localizer node, built from a core `LocalizationResult`."""
from __future__ import annotations

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, PoseWithCovarianceStamped
from std_msgs.msg import ColorRGBA, Float64MultiArray, Header, MultiArrayDimension
from visualization_msgs.msg import Marker, MarkerArray


def pose_from_matrix(T: np.ndarray) -> Pose:
    from scipy.spatial.transform import Rotation

    T = np.asarray(T, dtype=np.float64)
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in T[:3, 3])
    qx, qy, qz, qw = Rotation.from_matrix(T[:3, :3]).as_quat()
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = float(qx), float(qy), float(qz), float(qw)
    return pose


def match_msg(header: Header, T_map_base: np.ndarray, covariance: np.ndarray) -> PoseWithCovarianceStamped:
    """The query's pose in the header's map frame: the base frame's (`LocalizerNode._base_pose`), or
    the camera's where the node does not know where the camera sits on the base."""
    msg = PoseWithCovarianceStamped()
    msg.header = header
    msg.pose.pose = pose_from_matrix(T_map_base)
    msg.pose.covariance = np.asarray(covariance, dtype=np.float64).reshape(36).tolist()
    return msg


def candidates_msg(header: Header, matches):
    """cmirl_ros_interfaces/Candidates: the ranked prior-map keyframes (ids, stamps, scores, poses)."""
    from cmirl_ros.ros.interfaces import candidates_type

    msg = candidates_type()()
    msg.header = header
    msg.keyframe_ids = [int(m.keyframe_id) for m in matches]
    msg.keyframe_stamps = [float(m.stamp) for m in matches]
    msg.scores = [float(m.score) for m in matches]
    msg.poses = [pose_from_matrix(m.T_world_cam) for m in matches]
    return msg


def loop_closure_msg(query_stamp: float, matched_stamp: float) -> Float64MultiArray:
    """[query stamp, matched keyframe stamp] in seconds: LIO-SAM's lio_loop/loop_closure_detection
    (it drops any message whose data does not hold exactly these two values)."""
    msg = Float64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label="query_stamp,matched_stamp", size=2, stride=2)]
    msg.data = [float(query_stamp), float(matched_stamp)]
    return msg


def loop_closure_edge_msg(header: Header, closure):
    """cmirl_ros_interfaces/LoopClosure of a session-map pair (`localization.session_map.LoopClosure`)."""
    from cmirl_ros.ros.conversions import seconds_to_stamp
    from cmirl_ros.ros.interfaces import loop_closure_type

    msg = loop_closure_type()()
    msg.header = header
    msg.query_stamp = seconds_to_stamp(closure.query_stamp)
    msg.matched_stamp = seconds_to_stamp(closure.matched_stamp)
    msg.query_keyframe_id = int(closure.query_keyframe_id)
    msg.matched_keyframe_id = int(closure.matched_keyframe_id)
    msg.relative_pose = pose_from_matrix(closure.T_matched_query)
    msg.information = np.asarray(closure.information, dtype=np.float64).reshape(36).tolist()
    msg.score = float(closure.score)
    msg.fitness = float(closure.fitness)
    return msg


def _color(r: float, g: float, b: float, a: float = 1.0) -> ColorRGBA:
    return ColorRGBA(r=float(r), g=float(g), b=float(b), a=float(a))


def keyframe_markers(header: Header, positions: np.ndarray) -> Marker:
    """All map keyframes as one POINTS marker (published once per map load, latched)."""
    marker = Marker(header=header, ns="keyframes", id=0, type=Marker.POINTS, action=Marker.ADD)
    marker.pose.orientation.w = 1.0
    marker.scale.x = marker.scale.y = 1.0
    marker.color = _color(0.6, 0.6, 0.6, 0.8)
    marker.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in np.asarray(positions, dtype=np.float64)]
    return marker


def match_markers(header: Header, matches, lift=(0.0, 0.0, 5.0)) -> MarkerArray:
    """The query, drawn at its estimated position (the best match) offset by `lift` so that it
    floats above the map (default: 5 m up in the z-up map frame),
    with one line to each top-k match, greener for higher scores."""
    if not matches:
        return MarkerArray(markers=[Marker(header=header, ns="matches", id=0, action=Marker.DELETE)])
    anchor = np.asarray(matches[0].T_world_cam, dtype=np.float64)[:3, 3] + np.asarray(lift, dtype=np.float64)
    query = Point(x=float(anchor[0]), y=float(anchor[1]), z=float(anchor[2]))
    lines = Marker(header=header, ns="matches", id=0, type=Marker.LINE_LIST, action=Marker.ADD)
    lines.pose.orientation.w = 1.0
    lines.scale.x = 0.3
    scores = np.array([m.score for m in matches], dtype=np.float64)
    span = max(float(scores.max() - scores.min()), 1e-9)
    for match, score in zip(matches, scores):
        target = np.asarray(match.T_world_cam, dtype=np.float64)[:3, 3]
        strength = (score - scores.min()) / span
        color = _color(1.0 - strength, strength, 0.2)
        lines.points += [query, Point(x=float(target[0]), y=float(target[1]), z=float(target[2]))]
        lines.colors += [color, color]
    head = Marker(header=header, ns="matches", id=1, type=Marker.SPHERE, action=Marker.ADD)
    head.pose.position = query
    head.pose.orientation.w = 1.0
    head.scale.x = head.scale.y = head.scale.z = 2.0
    head.color = _color(0.1, 0.4, 1.0)
    return MarkerArray(markers=[lines, head])


def diagnostics_msg(stamp, name: str, values: dict[str, float | int | str], level: bytes, message: str) -> DiagnosticArray:
    """level: DiagnosticStatus.OK, WARN or ERROR."""
    status = DiagnosticStatus(
        level=level,
        name=name,
        message=message,
        hardware_id="cmirl_ros",
        values=[KeyValue(key=k, value=_format(v)) for k, v in values.items()],
    )
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
