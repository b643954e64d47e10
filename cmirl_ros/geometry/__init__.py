"""Sensor geometry: cameras, transforms, KITTI calibration, FoV projection, densification, poses."""
from cmirl_ros.geometry.alignment import EdgeAlignmentConfig, edge_alignment_score
from cmirl_ros.geometry.camera import (
    Calibration,
    PinholeCamera,
    invert_transform,
    make_transform,
    matrix_to_quaternion,
    quaternion_to_matrix,
    transform_points,
)
from cmirl_ros.geometry.densify import DensifyConfig, densify
from cmirl_ros.geometry.kitti_calib import KittiCalib, read_kitti_calib, write_kitti_calib
from cmirl_ros.geometry.poses import (
    KITTI_GROUND_AXES,
    place_distances,
    place_matches,
    read_kitti_poses,
    read_times,
    revisit_mask,
    time_exclusion,
    travelled_distance,
    view_angles_deg,
    write_kitti_poses,
)
from cmirl_ros.geometry.projection import ProjectionStats, project_to_depth, validate_points

__all__ = [
    "Calibration",
    "DensifyConfig",
    "EdgeAlignmentConfig",
    "KITTI_GROUND_AXES",
    "KittiCalib",
    "PinholeCamera",
    "ProjectionStats",
    "densify",
    "edge_alignment_score",
    "invert_transform",
    "make_transform",
    "matrix_to_quaternion",
    "place_distances",
    "place_matches",
    "project_to_depth",
    "quaternion_to_matrix",
    "read_kitti_calib",
    "read_kitti_poses",
    "read_times",
    "revisit_mask",
    "time_exclusion",
    "transform_points",
    "travelled_distance",
    "validate_points",
    "view_angles_deg",
    "write_kitti_calib",
    "write_kitti_poses",
]
