"""rosbag2 (mcap or sqlite3) recordings as a dataset, read with the pure-Python `rosbags` (no ROS).

A frame is one image (or, in a bag without images, one scan) with the scan nearest in stamp
(within `SCAN_SLOP`) and the camera pose interpolated from the odometry at the image stamp.
Expected content (what `cmirl bag from-kitti` writes; other bags can be remapped with the topic
arguments of `BagSequence`):
- `sensor_msgs/Image` on /camera/image, or `sensor_msgs/CompressedImage` on /camera/image/compressed
  (image_transport's name) when the bag has no raw images; `sensor_msgs/CameraInfo` on /camera/camera_info
- `sensor_msgs/PointCloud2` on /lidar/points
- `nav_msgs/Odometry` on /ground_truth/odometry: the pose of the camera (child frame) in the map
  (header frame; REP 105's z-up `map` in the bags `from-kitti` writes): maps store it as given
- `tf2_msgs/TFMessage` on /tf_static: the extrinsics, as any tf tree connecting the camera_info's
  frame and the scans' frame (a robot's base_link -> velodyne, base_link -> camera_optical, or
  one camera -> LiDAR edge); the calibration comes from it and camera_info, no calib file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cmirl_ros.datasets.base import DATASETS, Dataset, Frame, select_frames
from cmirl_ros.geometry import Calibration, make_transform, quaternion_to_matrix
from cmirl_ros.geometry.frames import as_given, calibration_from_tf
from cmirl_ros.geometry.tf_tree import TfError, TfTree
from cmirl_ros.sensor_decoding import (
    MalformedMessage,
    camera_rectification,
    image_to_rgb,
    pointcloud2_to_xyzi,
    stamp_to_seconds,
)
from cmirl_ros.topics import BAG_TOPICS, COMPRESSED_SUFFIX

SCAN_SLOP = 0.05  # s


def resolve_bag_path(path: str | Path) -> Path:
    """A rosbag2 directory from the directory itself, its .mcap/.db3 file, or `DIR.mcap` naming `DIR`."""
    path = Path(path)
    if (path / "metadata.yaml").is_file():
        return path
    if path.is_file() and (path.parent / "metadata.yaml").is_file():
        return path.parent
    stripped = path.with_suffix("") if path.suffix in (".mcap", ".db3") else None
    if stripped is not None and (stripped / "metadata.yaml").is_file():
        return stripped
    raise FileNotFoundError(f"{path}: not a rosbag2 bag (no metadata.yaml in the directory)")


def typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)


def pose_to_matrix(pose) -> np.ndarray:
    q = pose.orientation
    R = quaternion_to_matrix(np.array([q.x, q.y, q.z, q.w], dtype=np.float64))
    return make_transform(R, np.array([pose.position.x, pose.position.y, pose.position.z], dtype=np.float64))


def interpolate_poses(stamps: np.ndarray, pose_stamps: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Poses at `stamps`: linear in position, slerp in rotation; clamped at the ends."""
    from scipy.spatial.transform import Rotation, Slerp

    if len(poses) == 1:
        return np.repeat(poses, len(stamps), axis=0)
    t = np.clip(stamps, pose_stamps[0], pose_stamps[-1])
    out = np.repeat(np.eye(4)[None], len(stamps), axis=0)
    out[:, :3, :3] = Slerp(pose_stamps, Rotation.from_matrix(poses[:, :3, :3]))(t).as_matrix()
    for axis in range(3):
        out[:, axis, 3] = np.interp(t, pose_stamps, poses[:, axis, 3])
    return out


@DATASETS.register("bag")
class BagSequence(Dataset):
    ground_axes = None  # full 3D distances: a bag carries no convention for its map frame

    def __init__(self, root: Path, seq: str | None = None, frames: slice = slice(None), topics: dict | None = None):
        from rosbags.rosbag2 import Reader

        self.path = resolve_bag_path(root)
        self.topics = {**BAG_TOPICS, **(topics or {})}
        self.name = f"bag-{self.path.name}" + (f"-{seq}" if seq else "")
        self._store = typestore()
        self._reader = Reader(self.path)
        self._reader.open()
        by_topic = {c.topic: c for c in self._reader.connections}
        self._connections = {role: by_topic.get(topic) for role, topic in self.topics.items()}
        if self._connections["image"] is None:  # a camera recorded through image_transport's compressed plugin
            self._connections["image"] = by_topic.get(self.topics["image"] + COMPRESSED_SUFFIX)
        if self._connections["odometry"] is None:
            raise ValueError(f"{self.path}: no odometry topic {self.topics['odometry']} (topics: {', '.join(sorted(by_topic))})")
        if self._connections["image"] is None and self._connections["points"] is None:
            raise ValueError(f"{self.path}: neither {self.topics['image']} nor {self.topics['points']} is in the bag")
        index = self._scan_bag()
        self.calib = self._calibration()
        frame_role = "image" if self._connections["image"] is not None else "points"
        all_stamps, self._frame_times = index[frame_role]
        self.frame_ids = select_frames(list(range(len(all_stamps))), frames)
        self.stamps = all_stamps[self.frame_ids]
        pose_stamps, poses = index["odometry"]
        self.poses = interpolate_poses(self.stamps, pose_stamps, poses)
        self.frame_convention = as_given(f"bag: the ground-truth odometry's frame '{self._odometry_frame}'")
        self._scan_stamps, self._scan_times = index.get("points", (np.zeros(0), np.zeros(0, np.int64)))

    @property
    def image_topic(self) -> str | None:
        """The camera topic recorded: the raw image's, or its `/compressed` one; None without a camera."""
        connection = self._connections["image"]
        return None if connection is None else connection.topic

    def _deserialize(self, connection, raw: bytes):
        return self._store.deserialize_cdr(raw, connection.msgtype)

    def _scan_bag(self) -> dict:
        """One pass: header stamps and bag times of images and scans; odometry, intrinsics, extrinsics."""
        header_only = {"image", "points"}
        records: dict[str, list] = {"image": [], "points": [], "odometry": []}
        self._camera_info, first_scan = None, None
        self._tf_static = TfTree()
        roles = {c.id: role for role, c in self._connections.items() if c is not None}
        wanted = [c for c in self._connections.values() if c is not None]
        for connection, bag_time, raw in self._reader.messages(connections=wanted):
            role = roles[connection.id]
            if role in header_only:
                records[role].append((_cdr_header_stamp(raw), bag_time))
                if role == "points" and first_scan is None:
                    first_scan = self._deserialize(connection, raw)  # for its frame id
                continue
            msg = self._deserialize(connection, raw)
            if role == "odometry":
                self._odometry_frame = msg.header.frame_id
                records["odometry"].append((stamp_to_seconds(msg.header.stamp), pose_to_matrix(msg.pose.pose)))
            elif role == "camera_info" and self._camera_info is None:
                self._camera_info = msg
            elif role == "tf_static":
                for transform in msg.transforms:
                    t, q = transform.transform.translation, transform.transform.rotation
                    try:
                        self._tf_static.set_transform(transform.header.frame_id, transform.child_frame_id,
                                                      (t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
                    except ValueError as e:
                        raise ValueError(f"{self.path}: {self.topics['tf_static']}: {e}") from None
        self._scan_frame = first_scan.header.frame_id if first_scan is not None else None
        if not records["odometry"]:
            raise ValueError(f"{self.path}: the odometry topic {self.topics['odometry']} has no messages")
        index = {}
        for role in header_only:
            rows = sorted(records[role], key=lambda r: r[0])
            index[role] = (np.array([r[0] for r in rows], np.float64), np.array([r[1] for r in rows], np.int64))
        odometry = sorted(records["odometry"], key=lambda r: r[0])
        index["odometry"] = (np.array([r[0] for r in odometry]), np.stack([r[1] for r in odometry]))
        return index

    def camera_on_base(self, base_frame: str) -> np.ndarray:
        """T_base_cam: the camera's (camera_info's) frame on `base_frame`, from /tf_static."""
        try:
            return self._tf_static.lookup(base_frame, self._camera_info.header.frame_id)
        except (TfError, AttributeError) as e:
            raise ValueError(f"{self.path}: no transform {base_frame} -> camera in {self.topics['tf_static']}: {e}") from None

    def _calibration(self) -> Calibration:
        """Intrinsics from camera_info, extrinsics from /tf_static: camera_info's frame <- the scans' frame."""
        if self._camera_info is None:
            raise ValueError(f"{self.path}: no camera intrinsics (topic {self.topics['camera_info']} is empty or missing)")
        try:  # no scans (_scan_frame None): no extrinsics needed
            return calibration_from_tf(self._tf_static, self._camera_info, self._scan_frame)
        except MalformedMessage as e:
            raise ValueError(f"{self.path}: {self.topics['camera_info']}: {e}") from None
        except TfError as e:
            raise ValueError(f"{self.path}: no extrinsics for the scans from {self.topics['tf_static']}: {e}") from None

    def _read_at(self, role: str, bag_time: int):
        connection = self._connections[role]
        for _, _, raw in self._reader.messages(connections=[connection], start=int(bag_time), stop=int(bag_time) + 1):
            msg = self._deserialize(connection, raw)
            if role == "image":  # undistorted, to the intrinsics of self.calib
                return camera_rectification(self._camera_info).apply(image_to_rgb(msg))
            return pointcloud2_to_xyzi(msg)
        raise ValueError(f"{self.path}: no {role} message at bag time {bag_time}")

    def __getitem__(self, i: int) -> Frame:
        fid = self.frame_ids[i]
        stamp = float(self.stamps[i])
        image = None
        if self._connections["image"] is not None:
            image = np.ascontiguousarray(self._read_at("image", self._frame_times[fid]))
        points = None
        if len(self._scan_stamps):
            nearest = int(np.argmin(np.abs(self._scan_stamps - stamp)))
            if abs(self._scan_stamps[nearest] - stamp) <= SCAN_SLOP:
                points = self._read_at("points", self._scan_times[nearest])
        return Frame(fid, stamp, image, points, self.poses[i], self.calib, f"{fid:06d}")


def _cdr_header_stamp(raw: bytes) -> float:
    """std_msgs/Header.stamp of a serialised message whose first field is the header: after the
    4-byte encapsulation, int32 sec and uint32 nanosec (byte order from the encapsulation id)."""
    order = "<" if raw[1] == 1 else ">"
    sec, nanosec = np.frombuffer(raw, dtype=np.dtype(f"{order}i4"), count=2, offset=4)
    return int(sec) + (int(nanosec) & 0xFFFFFFFF) * 1e-9
