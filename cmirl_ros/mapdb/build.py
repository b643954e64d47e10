"""Build a map database from a dataset: keyframe selection, then one depth descriptor per keyframe.

Map side of the shared descriptor space: the keyframe's scan is FoV-projected into the model's
virtual query camera (`Preprocessing.sparse_depth`) and encoded with `model(depth=...)`; no image
is used, so maps can be built from LiDAR-only runs. The stored pose is the camera pose
T_world_cam of that frame (the query camera the scan was projected into). With `cloud_voxel` the
keyframe's scan is also kept, voxel-downsampled, for registration verification (`mapdb.clouds`).
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
    """MapDatabase over the keyframes of `dataset` (distance in metres on its ground axes, angle in degrees).
    `tokens_grid`: also store pooled local depth tokens (for the `cross_attention` reranker).
    `cloud_voxel`: also store each keyframe's scan downsampled with this voxel edge (m)."""
    rows = select_keyframes(dataset.poses, keyframe_distance, keyframe_angle, dataset.ground_axes)
    if len(rows) == 0:
        raise ValueError(f"dataset {dataset.name}: no frames to build a map from")
    descriptors = np.empty((len(rows), model.descriptor_dim), np.float32)
    names, tokens, clouds = [], [], []
    for start in tqdm(range(0, len(rows), batch_size), desc=f"map {dataset.name}", unit="batch", disable=not progress):
        chunk = rows[start : start + batch_size]
        depths = []
        for row in chunk:
            frame = dataset[int(row)]
            if frame.points is None:
                raise ValueError(f"dataset {dataset.name}: frame {frame.name} has no scan; a map needs range data")
            depths.append(model.preprocessing.sparse_depth(frame.points, frame.calib))
            names.append(frame.name)
            if cloud_voxel:
                clouds.append(KeyframeClouds.from_scans([frame.points], frame.calib.T_cam_sensor[None], cloud_voxel))
        descriptors[start : start + len(chunk)], chunk_tokens = encode_depths(model, np.stack(depths), tokens_grid)
        tokens.append(chunk_tokens)
    keyframes = Keyframes.from_poses(dataset.poses[rows], dataset.stamps[rows], dataset.name, names, frame_id)
    manifest = map_manifest(model, dataset, keyframe_distance, keyframe_angle)
    if tokens_grid:
        manifest["tokens"] = {"grid": list(tokens_grid), "source": "fused local features of the depth path"}
    return MapDatabase(descriptors, keyframes, manifest, index_config=index_config,
                       tokens=np.concatenate(tokens) if tokens_grid else None,
                       clouds=KeyframeClouds.concatenate(clouds) if cloud_voxel else None)


def encode_depths(model, depths: np.ndarray, tokens_grid: tuple[int, int] | None = None):
    """(descriptors (B, D), pooled local tokens (B, T, C) or None) of a batch of sparse depth maps."""
    from cmirl_ros.mapdb.tokens import capture_local_features, pool_tokens
    from cmirl_ros.models import describe

    if not tokens_grid:
        return describe(model, depths=depths, batch_size=len(depths), progress=False), None
    with capture_local_features(model) as features:
        descriptors = describe(model, depths=depths, batch_size=len(depths), progress=False)
    return descriptors, pool_tokens(features[0], tokens_grid)


def model_record(model) -> dict:
    from cmirl_ros.models import model_fingerprint
    from cmirl_ros.models.checkpoint import weights_sha256

    return {"name": model.name, "fingerprint": model_fingerprint(model), "weights_sha256": weights_sha256(model),
            "config": model.config}


def map_manifest(model, dataset, keyframe_distance: float, keyframe_angle: float) -> dict:
    camera = model.preprocessing.virtual_camera(dataset.calib.camera)
    return {
        "model": model_record(model),
        "preprocessing": model.preprocessing.to_dict(),
        "virtual_camera": {"K": np.asarray(camera.K).tolist(), "width": camera.width, "height": camera.height},
        "source": {"dataset": dataset.name, "frames": len(dataset)},
        "keyframe_selection": {"distance_m": keyframe_distance, "angle_deg": keyframe_angle,
                               "ground_axes": list(dataset.ground_axes) if dataset.ground_axes else None},
        "pose_convention": "T_world_cam of the source frame's query camera; position xyz + quaternion xyzw",
        "counts": {"source_frames": len(dataset)},
    }
