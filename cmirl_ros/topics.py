"""Default topic names, in one place: the node's inputs (and the launch file's remappings), what
`cmirl bag from-kitti` writes and what the bag dataset reads. config/localize.yaml repeats the
node's defaults for users (test/ros/test_launch.py checks that they agree)."""
from __future__ import annotations

IMAGE = "/camera/image"
CAMERA_INFO = "/camera/camera_info"
POINTS = "/lidar/points"

# The node's input-topic parameters and their defaults.
NODE_INPUTS = {"image_topic": IMAGE, "camera_info_topic": CAMERA_INFO, "points_topic": POINTS}

# Roles of a bag's topics -> names.
BAG_TOPICS = {
    "image": IMAGE,
    "camera_info": CAMERA_INFO,
    "points": POINTS,
    "odometry": "/ground_truth/odometry",
    "tf_static": "/tf_static",
}
