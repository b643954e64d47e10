"""End-to-end per-query latency of the localizer on CPU: preprocess, encode, search.

Used by `cmirl bench mapdb --e2e`: a KITTI-sized frame (1241x376 image, 120k-point scan) is
localized against a synthetic map of the requested size, image only and image + scan.
"""
from __future__ import annotations

import numpy as np

# LiDAR (x forward, y left, z up) -> camera (x right, y down, z forward), 8 cm below and behind.
T_CAM_VELO = [[0, -1, 0, 0], [0, 0, -1, -0.08], [1, 0, 0, -0.27], [0, 0, 0, 1]]


def kitti_like_frame(seed: int = 0):
    """(image (376,1241,3) uint8, scan (120000,4) float32, Calibration) with KITTI's geometry."""
    from cmirl_ros.geometry import Calibration
    from cmirl_ros.geometry.kitti_calib import kitti_00_02_calib

    camera = kitti_00_02_calib().camera2
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (camera.height, camera.width, 3), dtype=np.uint8)
    azimuth = rng.uniform(-np.pi, np.pi, 120_000)
    elevation = rng.uniform(np.radians(-25), np.radians(3), 120_000)
    ranges = rng.uniform(2.0, 60.0, 120_000)
    points = np.stack([ranges * np.cos(elevation) * np.cos(azimuth), ranges * np.cos(elevation) * np.sin(azimuth),
                       ranges * np.sin(elevation), rng.uniform(0, 1, 120_000)], axis=1).astype(np.float32)
    return image, points, Calibration(camera, np.array(T_CAM_VELO, float))


def end_to_end(model_name: str, mapdb, threads: int, queries: int = 30, warmup: int = 3) -> dict:
    """Median milliseconds per stage for image-only and image+scan queries against `mapdb`
    (a synthetic map of the same size and index is built when its descriptor size differs)."""
    import faiss
    import torch

    from cmirl_ros.localization import Localizer, LocalizerConfig
    from cmirl_ros.mapdb import MapDatabase
    from cmirl_ros.benchmarks.synthetic import trajectory_descriptors
    from cmirl_ros.mapdb.build import model_record
    from cmirl_ros.models import load_model

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    model = load_model(model_name, device="cpu")
    if mapdb.descriptor_dim != model.descriptor_dim:
        descriptors = trajectory_descriptors(len(mapdb), model.descriptor_dim, 1000, 0.15, seed=0)
        mapdb = MapDatabase(descriptors, mapdb.keyframes, index_config=mapdb.index_config)
    mapdb.manifest["model"] = model_record(model)
    localizer = Localizer(model, mapdb, LocalizerConfig(top_k=5))
    image, points, calib = kitti_like_frame()
    figures = {"model": model.name, "entries": len(mapdb), "index": mapdb.index_type, "threads": threads,
               "input": f"{model.preprocessing.width}x{model.preprocessing.height}"}
    for mode, scan in (("image", None), ("image+scan", points)):
        runs = [localizer.localize(image, scan, stamp=0.0, calib=calib).timings_ms for _ in range(warmup + queries)][warmup:]
        stages = {stage: round(float(np.median([r[stage] for r in runs])), 3) for stage in ("preprocess", "encode", "search")}
        stages["total"] = round(float(np.median([sum(r.values()) for r in runs])), 3)
        figures[mode] = stages
    return figures
