"""tf2_msgs/TFMessage (from rclpy or from rosbags: duck-typed) into the core's TfTree."""
from __future__ import annotations

from cmirl_ros.geometry.tf_tree import TfTree
from cmirl_ros.sensor_decoding import stamp_to_seconds


def add_tf_message(tree: TfTree, msg, static: bool) -> list[str]:
    """Add every transform of a /tf (static=False) or /tf_static (static=True) message.
    A malformed transform is skipped; returns one line per skipped transform, for the caller to count."""
    problems = []
    for transform in msg.transforms:
        t, r = transform.transform.translation, transform.transform.rotation
        try:
            tree.set_transform(transform.header.frame_id, transform.child_frame_id, (t.x, t.y, t.z), (r.x, r.y, r.z, r.w),
                               None if static else stamp_to_seconds(transform.header.stamp))
        except ValueError as e:
            problems.append(f"'{transform.header.frame_id}' -> '{transform.child_frame_id}': {e}")
    return problems
