"""`cmirl map export`: the map's keyframe clouds merged in the map frame, as a binary PLY for viewers."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cmirl_ros.atomic import atomic_write
from cmirl_ros.geometry.clouds import voxel_downsample


def merged_cloud(mapdb, voxel_m: float | None = None) -> np.ndarray:
    """(P, 3) float32 points of every keyframe cloud in the map frame; `voxel_m` merges overlaps."""
    if mapdb.clouds is None:
        raise ValueError("the map has no keyframe clouds; rebuild it with `cmirl map build --cloud-voxel V`")
    poses = mapdb.keyframes.poses()
    parts = [mapdb.clouds.in_map_frame(i, poses[i]) for i in range(len(mapdb))]
    points = np.concatenate(parts) if parts else np.zeros((0, 3), np.float32)
    return voxel_downsample(points, voxel_m) if voxel_m else points


def write_ply(path: str | Path, points: np.ndarray) -> None:
    """Binary little-endian PLY with float x, y, z vertices, written atomically."""
    points = np.ascontiguousarray(points, dtype="<f4").reshape(-1, 3)
    header = ("ply\nformat binary_little_endian 1.0\ncomment cmirl_ros map export (map frame, see the manifest's frame_convention)\n"
              f"element vertex {len(points)}\nproperty float x\nproperty float y\nproperty float z\nend_header\n")
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(header.encode("ascii") + points.tobytes()))


def read_ply(path: str | Path) -> np.ndarray:
    """(N, 3) float32 vertices of a PLY written by `write_ply` (binary little-endian, float x y z)."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path}: not a PLY file")
    header = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in header:
        raise ValueError(f"{path}: only binary little-endian PLY is read")
    count = int(next(line.split()[2] for line in header if line.startswith("element vertex")))
    body = data[end + len(b"end_header\n"):]
    if len(body) != count * 12:
        raise ValueError(f"{path}: {len(body)} bytes of vertex data, expected {count * 12}")
    return np.frombuffer(body, dtype="<f4").reshape(count, 3).copy()
