"""Evaluation pipeline: query descriptors from a dataset, map entries from a map database,
both protocols, and the tables of the CMIRL paper (main, ablations, conditions)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmirl_ros.evaluation.metrics import PROTOCOLS, RetrievalResult, evaluate_protocols


@dataclass
class MapSide:
    descriptors: np.ndarray  # (M,D)
    poses: np.ndarray  # (M,4,4) T_map_cam (the map frame)
    stamps: np.ndarray  # (M,)

    @classmethod
    def from_database(cls, mapdb) -> "MapSide":
        keyframes = mapdb.keyframes
        poses = np.stack([keyframes.pose(i) for i in range(len(keyframes))]) if len(keyframes) else np.zeros((0, 4, 4))
        return cls(np.asarray(mapdb.descriptors, np.float32), poses, np.asarray(keyframes.stamps, np.float64))


@dataclass
class QuerySide:
    descriptors: np.ndarray
    poses: np.ndarray  # (Q,4,4) ground truth T_map_cam: the dataset's poses in the map frame
    stamps: np.ndarray


def encode_queries(model, dataset, with_scan: bool = False, chunk: int = 32, progress: bool = True) -> QuerySide:
    """Images (and, with `with_scan`, their scans) of every selected frame -> descriptors; the ground
    truth converted into the map frame by the dataset's frame convention."""
    from tqdm import tqdm

    from cmirl_ros.models import Describer

    describer = Describer(model)
    purpose = "a query (--with-scan: image + scan)" if with_scan else "a query"
    out = []
    for start in tqdm(range(0, len(dataset), chunk), desc="queries", disable=not progress, leave=False):
        frames = [dataset[i] for i in range(start, min(start + chunk, len(dataset)))]
        out.append(describer.frames(frames, use_image=True, use_scan=with_scan, purpose=purpose,
                                    dataset=dataset.name).descriptors)
    dim = getattr(model, "descriptor_dim", 0)
    descriptors = np.concatenate(out) if out else np.zeros((0, dim), np.float32)
    return QuerySide(descriptors, dataset.frame_convention.to_map(dataset.poses), np.asarray(dataset.stamps))


def score(queries: QuerySide, map_side: MapSide, radius: float, axes=None, angle_deg: float | None = None,
          exclude_seconds: float = 30.0, protocols=PROTOCOLS, max_n: int = 25) -> dict[str, RetrievalResult]:
    if len(queries.descriptors) == 0:
        raise ValueError("no queries: the frame selection is empty")
    return evaluate_protocols(
        queries.descriptors, map_side.descriptors, queries.poses, map_side.poses, queries.stamps, map_side.stamps,
        radius=radius, axes=axes, max_angle_deg=angle_deg, exclude_seconds=exclude_seconds,
        protocols=protocols, max_n=max_n,
    )


def verify_by_sequence(result: RetrievalResult, queries: QuerySide, map_side: MapSide, config, radius: float,
                       axes=None, angle_deg: float | None = None, exclude_seconds: float = 0.0,
                       odometry: bool = False) -> None:
    """`--verify sequence` on one protocol's result (revisit: `exclude_seconds` hides the same entries),
    by `sequence.verify_ranked`: stamps only, or with `odometry` (the queries' ground-truth poses stand
    in for it: only their relative motion is used) the path check over the top `config.candidates`,
    whose pick and path score replace the top-1's. The output pose of an image-only match is its
    keyframe's camera pose (nothing refines it): the pose error measures that."""
    from cmirl_ros.evaluation.metrics import pose_errors
    from cmirl_ros.geometry.poses import place_matches, time_exclusion
    from cmirl_ros.localization.sequence import verify_ranked

    scores = queries.descriptors @ map_side.descriptors.T
    if result.protocol == "revisit":
        scores = np.where(time_exclusion(queries.stamps, map_side.stamps, exclude_seconds), -np.inf, scores)
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :max(config.candidates, 1)]
    picked, accepted, picked_scores = verify_ranked(queries.stamps, ranked, np.take_along_axis(scores, ranked, axis=1),
                                                    map_side.poses, queries.poses if odometry else None, config, axes)
    correct = place_matches(queries.poses, map_side.poses, radius, axes, angle_deg)[np.arange(len(picked)), picked]
    result.verify(accepted, "sequence", pose_errors(map_side.poses[picked], queries.poses, axes),
                  verified_correct=correct, verified_scores=picked_scores)
