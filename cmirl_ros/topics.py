"""Default topic names, in one place: the node's inputs (and the launch file's remappings), what
`cmirl bag from-kitti` writes and what the bag dataset reads. The node's topic parameters take
their defaults from here (cmirl_ros/options.py), and config/localize.yaml is generated from those.

The node's inputs are relative names, so that a namespace applies to them (`robot1/localizer`
reads `/robot1/camera/image`). A bag records fully qualified names: the bag's are the node's
resolved in the root namespace; a namespaced node is fed by remapping (launch arguments) or by
playing the bag under the namespace's names.
"""
from __future__ import annotations

IMAGE = "camera/image"
CAMERA_INFO = "camera/camera_info"
POINTS = "lidar/points"
COMPRESSED_SUFFIX = "/compressed"  # image_transport's compressed topic: `<image topic>/compressed`

# The node's input-topic parameters and their defaults (the launch file remaps the same names).
NODE_INPUTS = {"image_topic": IMAGE, "camera_info_topic": CAMERA_INFO, "points_topic": POINTS}

# Roles of a bag's topics -> names (absolute: the root namespace's names of the node's inputs).
BAG_TOPICS = {
    "image": "/" + IMAGE,
    "camera_info": "/" + CAMERA_INFO,
    "points": "/" + POINTS,
    "odometry": "/ground_truth/odometry",
    "tf_static": "/tf_static",
}
