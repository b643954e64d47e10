"""Build a map database from a dataset: keyframe selection, then one depth descriptor per keyframe.

Map side of the shared descriptor space: the keyframe's scan is FoV-projected into the model's
virtual query camera and encoded by the `Describer` (depth only); no image is used, so maps can be
built from LiDAR-only runs. The stored pose is the camera pose T_map_cam of that frame (the query
camera the scan was projected into) in the map frame: the dataset's pose converted by its
`frame_convention` (KITTI: y-down camera-0 world -> z-up map), recorded in the manifest. With
`cloud_voxel` the keyframe's scan is also kept, voxel-downsampled, for registration verification
(`mapdb.clouds`).
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from cmirl_ros.mapdb.clouds import KeyframeClouds
from cmirl_ros.mapdb.database import MapDatabase
from cmirl_ros.mapdb.keyframes import Keyframes, select_keyframes


def build_map(dataset, model, keyframe_distance: float = 0.0, keyframe_angle: float = 0.0,
              index_config=None, batch_size: int = 8, frame_id: str = "map", progress: bool = True,
              tokens_grid: tuple[int, int] | None = None, cloud_voxel: float | None = None) -> MapDatabase:
    """MapDatabase over the keyframes of `dataset` (distance in metres on the map's ground axes, angle in degrees).
    `tokens_grid`: also store pooled local depth tokens (for the `cross_attention` reranker).
    `cloud_voxel`: also store each keyframe's scan downsampled with this voxel edge (m)."""
    convention = dataset.frame_convention
    poses = convention.to_map(dataset.poses)
    rows = select_keyframes(poses, keyframe_distance, keyframe_angle, convention.ground_axes)
    if len(rows) == 0:
        raise ValueError(f"dataset {dataset.name}: no frames to build a map from")
    from cmirl_ros.models import Describer

    describer = Describer(model)
    descriptors, tokens, names, clouds = [], [], [], []
    for start in tqdm(range(0, len(rows), batch_size), desc=f"map {dataset.name}", unit="batch", disable=not progress):
        frames = [dataset[int(row)] for row in rows[start : start + batch_size]]
        described = describer.frames(frames, use_image=False, use_scan=True, purpose="a map (range data)",
                                     dataset=dataset.name, tokens_grid=tokens_grid)
        descriptors.append(described.descriptors)
        tokens.append(described.tokens)
        names += [frame.name for frame in frames]
        if cloud_voxel:
            clouds += [KeyframeClouds.from_scans([f.points], f.calib.T_cam_sensor[None], cloud_voxel) for f in frames]
    keyframes = Keyframes.from_poses(poses[rows], dataset.stamps[rows], dataset.name, names, frame_id)
    manifest = map_manifest(model, dataset, keyframe_distance, keyframe_angle)
    if tokens_grid:
        manifest["tokens"] = {"grid": list(tokens_grid), "source": "fused local features of the depth path"}
    return MapDatabase(np.concatenate(descriptors), keyframes, manifest, index_config=index_config,
                       tokens=np.concatenate(tokens) if tokens_grid else None,
                       clouds=KeyframeClouds.concatenate(clouds) if cloud_voxel else None)


def model_record(model) -> dict:
    from cmirl_ros.models import model_fingerprint
    from cmirl_ros.models.checkpoint import weights_sha256

    return {"name": model.name, "fingerprint": model_fingerprint(model), "weights_sha256": weights_sha256(model),
            "config": model.config}


def map_manifest(model, dataset, keyframe_distance: float, keyframe_angle: float) -> dict:
    convention = dataset.frame_convention
    return {
        "model": model_record(model),
        "preprocessing": model.preprocessing.to_dict(),
        "source": {"dataset": dataset.name, "frames": len(dataset)},
        "keyframe_selection": {"distance_m": keyframe_distance, "angle_deg": keyframe_angle,
                               "ground_axes": list(convention.ground_axes) if convention.ground_axes else None},
        "frame_convention": convention.to_manifest(),
        "pose_convention": "T_map_cam of the source frame's query camera in the map frame (frame_convention); "
                           "position xyz + quaternion xyzw",
        "counts": {"source_frames": len(dataset)},
    }
