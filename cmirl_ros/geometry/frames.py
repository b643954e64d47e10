"""Frames per REP 103 / REP 105, without ROS: KITTI's y-down camera world -> a z-up `map`, camera
poses -> the base frame's pose, the 2D pose (x, y, yaw) that AMCL's /initialpose takes, and the
camera + range-sensor calibration from tf and CameraInfo (no calib file).

REP 103: a body frame (base_link) has x forward, y left, z up; a camera's optical frame has x
right, y down, z forward. KITTI's ground truth is T_world_cam0 in the first camera-0 frame (an
optical frame: y down, z forward), so its world is rotated into a z-up map by the same fixed
rotation that takes an optical frame into a body frame. The map's origin stays at the first
camera-0 pose, and it is level as far as that camera was level (KITTI's is, to about a degree).

KITTI's base: the odometry benchmark's calib.txt knows the cameras and the Velodyne (Tr), not the
IMU. Our base_link is the Velodyne frame (x forward, y left, z up already) moved down to the road
below it (KITTI's Velodyne is mounted 1.73 m above the ground): REP 105's base frame on the
vehicle, heights in the map then being those of the road under the car.

Maps store keyframe poses in the map frame: each dataset says which world its poses are in and the
transform into the map (`FrameConvention`, recorded in a map's manifest as `frame_convention`);
every comparison of a query's ground truth with keyframe poses converts the ground truth with its
dataset's convention (`FrameConvention.to_map`) and measures ground distances on its `ground_axes`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmirl_ros.geometry.camera import Calibration, PinholeCamera, invert_transform, make_transform
from cmirl_ros.geometry.tf_tree import TfTree
from cmirl_ros.sensor_decoding import camera_rectification

# Columns: the optical frame's axes (x right, y down, z forward) in a body frame (x forward, y left, z up).
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0],
                           [-1.0, 0.0, 0.0],
                           [0.0, -1.0, 0.0]])
# KITTI's world is the first camera-0 optical frame: the z-up map sees it as a body sees its camera.
T_MAP_KITTI_WORLD = make_transform(R_BODY_OPTICAL, np.zeros(3))
KITTI_VELODYNE_HEIGHT = 1.73  # m above the road (KITTI setup, Geiger et al. 2013)
Z_UP_MAP = "z-up (REP 103)"
AS_GIVEN = "the source world as given"


@dataclass(frozen=True, eq=False)
class FrameConvention:
    """The world a dataset's poses are in and the rigid transform into the map frame a map stores.

    `ground_axes`: the axes of the ground plane in the map frame, for ground distances (None: 3D)."""

    source_world: str
    T_map_world: np.ndarray
    map_frame: str = Z_UP_MAP
    ground_axes: tuple[int, ...] | None = (0, 1)

    def to_map(self, T_world_x: np.ndarray) -> np.ndarray:
        """Pose(s) (4x4 or (N,4,4)) in the source world -> the same pose(s) in the map frame."""
        return self.T_map_world @ np.asarray(T_world_x, dtype=np.float64)

    def to_manifest(self) -> dict:
        return {"map_frame": self.map_frame, "source_world": self.source_world,
                "T_map_world": [float(v) for v in np.asarray(self.T_map_world, dtype=np.float64).reshape(16)],
                "ground_axes": None if self.ground_axes is None else list(self.ground_axes)}

    @classmethod
    def from_manifest(cls, entry: dict) -> "FrameConvention":
        axes = entry.get("ground_axes")
        return cls(entry["source_world"], np.asarray(entry["T_map_world"], dtype=np.float64).reshape(4, 4),
                   entry["map_frame"], None if axes is None else tuple(int(a) for a in axes))


def as_given(source_world: str, ground_axes: tuple[int, ...] | None = None) -> FrameConvention:
    """A world stored unchanged (identity): 7-Scenes' own world, a bag's ground-truth frame."""
    return FrameConvention(source_world, np.eye(4), AS_GIVEN, ground_axes)


KITTI_CAMERA0 = FrameConvention("kitti_camera0: the first camera-0 optical frame (x right, y down, z forward)",
                                T_MAP_KITTI_WORLD)


def kitti_world_to_map(T_world_x: np.ndarray) -> np.ndarray:
    """Pose(s) (4x4 or (N,4,4)) in KITTI's y-down world -> the same pose(s) in the z-up map frame."""
    return T_MAP_KITTI_WORLD @ np.asarray(T_world_x, dtype=np.float64)


def base_pose_in_map(T_world_cam: np.ndarray, T_base_cam: np.ndarray) -> np.ndarray:
    """The base frame's pose(s) in the z-up map, from the camera's pose(s) in KITTI's world and the
    camera's pose on the base (tf's base_link -> camera_optical, or `kitti_T_base_cam`)."""
    return kitti_world_to_map(T_world_cam) @ invert_transform(np.asarray(T_base_cam, dtype=np.float64))


def base_covariance(covariance: np.ndarray, T_map_cam: np.ndarray, T_map_base: np.ndarray) -> np.ndarray:
    """The (6,6) covariance of (x, y, z, rx, ry, rz) about the map's fixed axes of a camera pose, moved
    to the base it is mounted on: the rotation error is shared, and turns the lever from the camera to
    the base, so the base position picks up -[lever]x times it (J Sigma J^T)."""
    lever = np.asarray(T_map_base, np.float64)[:3, 3] - np.asarray(T_map_cam, np.float64)[:3, 3]
    jacobian = np.eye(6)
    jacobian[:3, 3:] = -np.array([[0.0, -lever[2], lever[1]], [lever[2], 0.0, -lever[0]], [-lever[1], lever[0], 0.0]])
    moved = jacobian @ np.asarray(covariance, np.float64).reshape(6, 6) @ jacobian.T
    return 0.5 * (moved + moved.T)


def pose_2d(T_map_base: np.ndarray) -> tuple[float, float, float]:
    """(x, y, yaw) of a base pose in a z-up map, what /initialpose and AMCL use: yaw is the heading
    of the base's x axis (forward) in the ground plane, counter-clockwise from map x, in (-pi, pi]."""
    T = np.asarray(T_map_base, dtype=np.float64)
    forward = T[:3, 0]
    return float(T[0, 3]), float(T[1, 3]), float(np.arctan2(forward[1], forward[0]))


def kitti_T_base_velo(height: float = KITTI_VELODYNE_HEIGHT) -> np.ndarray:
    """The Velodyne's pose on KITTI's base_link: same axes, `height` m above it."""
    return make_transform(np.eye(3), np.array([0.0, 0.0, height]))


def kitti_T_base_cam(T_cam_velo: np.ndarray, height: float = KITTI_VELODYNE_HEIGHT) -> np.ndarray:
    """A camera's optical frame on KITTI's base_link: base -> Velodyne, then Velodyne -> camera
    (T_cam_velo: `KittiCalib.T_cam2_velo` from Tr and P2 for the query camera, = `calibration().T_cam_sensor`)."""
    return kitti_T_base_velo(height) @ invert_transform(np.asarray(T_cam_velo, dtype=np.float64))


def calibration_from_tf(tree: TfTree, camera_info, sensor_frame: str | None, camera_frame: str | None = None,
                        stamp: float | None = None) -> Calibration:
    """The query camera and the range sensor's extrinsics from tf + CameraInfo, instead of a calib file.

    camera_frame: the camera's optical frame (default: the CameraInfo's header.frame_id); the
    intrinsics are those of the rectified image (`camera_rectification`), whose frame is rotated by
    the CameraInfo's R from the optical frame. sensor_frame None: no range sensor (identity
    extrinsics). Raises MalformedMessage (unusable CameraInfo) or a TfError (frames unknown or not
    connected)."""
    rectification = camera_rectification(camera_info)
    camera = PinholeCamera(rectification.K, rectification.width, rectification.height)
    if sensor_frame is None:
        return Calibration(camera, np.eye(4))
    T_cam_sensor = tree.lookup(camera_frame or camera_info.header.frame_id, sensor_frame, stamp)
    return Calibration(camera, make_transform(rectification.R, np.zeros(3)) @ T_cam_sensor)
