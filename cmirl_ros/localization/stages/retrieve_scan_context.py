"""retrieve:faiss_scan_context: the FAISS candidates of the descriptor, interleaved with the
keyframes whose clouds best match the live scan by Scan Context (`geometry.scan_context`).

The descriptor sees what the camera sees; a street revisited in the other direction or entered
from a junction looks different to it but not to a 360-degree LiDAR. With a live scan, the first
`scan_context_candidates` keyframes by Scan Context distance join the FAISS list (alternating,
best first, no repeats), under the same self-match guard. A keyframe is described from several
virtual viewpoints around it; every candidate gets, as `registration_guess` (the initial guess of
registration verification, T_keyframe_sensor_query_sensor), its best viewpoint's offset and the
Scan Context yaw there. Without a scan it is `retrieve:faiss`. Map-side contexts are computed once
from the map's keyframe clouds.
"""
from __future__ import annotations

import numpy as np

from cmirl_ros.geometry.registration import yaw_about_z
from cmirl_ros.geometry.scan_context import VIEWPOINT_OFFSETS_M, ContextSpectra, scan_context, viewpoint_contexts
from cmirl_ros.localization.stages import Candidates, QueryInput, register_stage
from cmirl_ros.localization.stages.retrieve import faiss_retrieval


@register_stage("retrieve", "faiss_scan_context")
def faiss_and_scan_context(config, mapdb):
    if mapdb.clouds is None:
        raise ValueError("retrieve 'faiss_scan_context' needs a map with keyframe clouds; "
                         "rebuild it with `cmirl map build --cloud-voxel V`")
    by_descriptor = faiss_retrieval(config, mapdb)
    offsets = np.array(VIEWPOINT_OFFSETS_M)
    spectra = ContextSpectra(np.concatenate([viewpoint_contexts(mapdb.clouds.cloud(i)) for i in range(len(mapdb))]))
    keyframes = mapdb.keyframes

    def retrieve(_: Candidates | None, query: QueryInput) -> Candidates:
        found = by_descriptor(None, query)
        if query.points is None:
            return found
        allowed = np.flatnonzero(_outside_window(keyframes, query.stamp, config))
        distance, yaw = (a.reshape(len(mapdb), len(offsets)) for a in spectra.distances(scan_context(query.points)))
        viewpoint = np.argmin(distance, axis=1)
        distance = distance[np.arange(len(mapdb)), viewpoint]
        by_scan = allowed[np.argsort(distance[allowed], kind="stable")[: config.scan_context_candidates]]
        ids = _interleave(found.ids, by_scan)
        scores = np.asarray(mapdb.descriptors[np.sort(ids)], np.float32)[np.argsort(np.argsort(ids))] @ query.descriptor
        guesses = np.stack([_guess(offsets[viewpoint[i]], yaw[i, viewpoint[i]]) for i in ids])
        return Candidates(ids, scores.astype(np.float32), keyframes.poses(ids), {"registration_guess": guesses})

    return retrieve


def _guess(offset_m: np.ndarray, yaw: float) -> np.ndarray:
    """T_keyframe_sensor_query_sensor: the query sensor at the viewpoint, turned by the yaw."""
    T = yaw_about_z(yaw)
    T[:2, 3] = offset_m
    return T


def _outside_window(keyframes, stamp: float, config) -> np.ndarray:
    if config.exclude_seconds <= 0:
        return np.ones(len(keyframes), bool)
    near = np.abs(keyframes.stamps - stamp) <= config.exclude_seconds
    if config.exclude_session is not None:
        near &= keyframes.sessions == config.exclude_session
    return ~near


def _interleave(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    merged = [int(i) for pair in zip(first, second) for i in pair]
    longer = first if len(first) > len(second) else second
    merged += [int(i) for i in longer[min(len(first), len(second)):]]
    return np.array(list(dict.fromkeys(merged)), dtype=np.int64)
