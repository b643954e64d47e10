"""Verified matches: every query through the localizer's stages (retrieve -> rerank -> verify ->
pose) with its live scan, scored against ground truth (`cmirl eval --verify ...`).

A query counts for recall when the map holds its place (a keyframe within `radius`) outside the
exclusion window (the revisit protocol's true revisits). A verified match is a loop closure with a
relative pose, so it is correct when that pose is: the refined query pose (T_world_query) lies
within `tolerance_m` and `tolerance_deg` of the query's ground truth. `verified_place_precision`
is the looser place criterion (the matched keyframe within `radius`), as for unverified matches.
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from cmirl_ros.evaluation.metrics import pose_errors, poses_within, verified_match_figures
from cmirl_ros.geometry.poses import place_distances, time_exclusion


def evaluate_verified(queries, dataset, mapdb, config, radius: float, axes=None, with_scan: bool = True,
                      tolerance_m: float = 1.0, tolerance_deg: float = 5.0, progress: bool = True) -> dict:
    """`queries`: a QuerySide of `dataset`'s frames (descriptors, poses, stamps); `config`: a
    LocalizerConfig (its exclude_seconds is the protocol's window)."""
    from cmirl_ros.localization import Localizer

    localizer = Localizer(None, mapdb, config, check_model=False)
    map_poses, map_stamps = mapdb.keyframes.poses(), mapdb.keyframes.stamps
    near = place_distances(queries.poses, map_poses, axes) < radius
    allowed = ~time_exclusion(queries.stamps, map_stamps, config.exclude_seconds) if config.exclude_seconds > 0 else True
    has_revisit = (near & allowed).any(1)
    verified, near_place, errors, verify_ms = [], [], [], []
    for i in tqdm(range(len(queries.descriptors)), desc=f"verify ({config.verify})", disable=not progress, leave=False):
        frame = dataset[i]
        points = frame.points if with_scan else None
        result = localizer.localize_descriptor(queries.descriptors[i], queries.stamps[i], points, frame.calib)
        best = result.matches[0] if result.matches else None
        verified.append(best is not None and best.verified)
        near_place.append(best is not None and bool(near[i, best.keyframe_id]))
        refined = best.T_world_query if best is not None and best.T_world_query is not None else np.full((4, 4), np.nan)
        errors.append(pose_errors(refined, queries.poses[i], axes)[0])
        verify_ms.append(result.timings_ms.get("verify", 0.0))
    errors, verified = np.array(errors), np.array(verified)
    figures = verified_match_figures(verified, poses_within(errors, tolerance_m, tolerance_deg), has_revisit, errors)
    place = np.array(near_place)[verified]
    figures.update(verify=config.verify, verify_candidates=config.verify_candidates,
                   verified_place_precision=float(place.mean()) if len(place) else None,
                   pose_tolerance=[tolerance_m, tolerance_deg],
                   verify_ms_p50=round(float(np.median(verify_ms)), 2) if verify_ms else None)
    return figures
