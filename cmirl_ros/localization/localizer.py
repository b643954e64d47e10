"""The localizer core shared by the ROS node and the offline tools: image (+ scan) -> map matches.

Query side of the shared descriptor space: the image, and a live scan when given with its
calibration, become model inputs and a descriptor through the `Describer` (the same path as map
building), and the model fuses them. The descriptor is searched
in the map, keyframes within `exclude_seconds` of the query stamp are dropped (self-match guard),
the top candidates are optionally re-ranked, and those under `score_threshold` are dropped.

Thread safety: `localize` and `reload` may be called from different threads; calls are
serialised by a lock, and `reload` loads the new map before swapping it in under the lock.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cmirl_ros.config import dataclass_from_mapping
from cmirl_ros.localization.covariance import match_covariance
from cmirl_ros.localization.rerank import NEEDS_TOKENS, RERANKERS, EncodedQuery


@dataclass
class LocalizerConfig:
    top_k: int = 5
    score_threshold: float = -1.0  # cosine similarity; -1 keeps every candidate
    exclude_seconds: float = 0.0  # self-match guard: skip keyframes this close in time to the query
    exclude_session: str | None = None  # apply the guard to this session's keyframes only (None = all)
    rerank: str = "none"  # none | exact | query_expansion | cross_attention (map built with --tokens)
    rerank_candidates: int = 20  # how many index results the reranker sees (>= top_k)
    covariance_temperature: float = 0.02
    position_floor_m: float = 1.0
    rotation_floor_deg: float = 5.0
    # A scan covering less than this fraction of the query image (bad intrinsics or extrinsics, a
    # scan behind the camera) adds nothing: the image is answered alone, and the result says so.
    min_scan_coverage: float = 0.001

    def __post_init__(self):
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.exclude_seconds < 0:
            raise ValueError(f"exclude_seconds must be >= 0, got {self.exclude_seconds}")
        if not 0.0 <= self.min_scan_coverage <= 1.0:
            raise ValueError(f"min_scan_coverage must be in [0, 1], got {self.min_scan_coverage}")
        RERANKERS.get(self.rerank)  # unknown names fail here, listing the known ones

    @classmethod
    def from_dict(cls, data: dict) -> "LocalizerConfig":
        return dataclass_from_mapping(cls, data, "localizer")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Match:
    keyframe_id: int
    stamp: float
    T_world_cam: np.ndarray  # (4,4) camera pose of the matched keyframe, map frame
    score: float
    session: str
    source_frame: str
    frame_id: str

    def to_dict(self) -> dict:
        return {"keyframe_id": self.keyframe_id, "stamp": self.stamp, "score": self.score, "session": self.session,
                "source_frame": self.source_frame, "frame_id": self.frame_id,
                "position": self.T_world_cam[:3, 3].tolist()}


@dataclass
class LocalizationResult:
    stamp: float
    matches: list[Match]  # best first; empty when nothing passes the threshold
    covariance: np.ndarray | None  # (6,6) for matches[0]; None without a match
    timings_ms: dict[str, float] = field(default_factory=dict)  # preprocess, encode, search
    descriptor: np.ndarray | None = None
    modalities: str = ""  # what the descriptor was computed from: image, depth or image+depth
    scan_coverage: float | None = None  # fraction of the query image the scan's points cover; None: no scan


class Localizer:
    def __init__(self, model, mapdb, config: LocalizerConfig | None = None, check_model: bool = True):
        """`check_model`: refuse a map built with another model (fingerprint mismatch)."""
        self.model = model
        self.config = config or LocalizerConfig()
        self._fingerprint = _fingerprint(model) if (check_model and model is not None) else None
        self._describer = _describer(model) if model is not None else None
        self._check_map(mapdb)
        self.mapdb = mapdb
        self._lock = threading.Lock()

    def _check_map(self, mapdb) -> None:
        if self._fingerprint is not None and mapdb.fingerprint != self._fingerprint:
            raise ValueError(
                f"model mismatch: the map was built with {mapdb.fingerprint}, the localizer uses {self._fingerprint}; "
                "rebuild the map with this model"
            )
        if self.model is not None and mapdb.descriptor_dim != self.model.descriptor_dim:
            raise ValueError(f"map descriptors have size {mapdb.descriptor_dim}, the model gives {self.model.descriptor_dim}")
        if self.config.rerank in NEEDS_TOKENS and mapdb.tokens is None:
            raise ValueError(f"rerank '{self.config.rerank}' needs a map built with `cmirl map build --tokens`")

    def reload(self, map_or_dir) -> None:
        """Swap in another map (a MapDatabase or a map directory); in-flight queries finish on the old one."""
        from cmirl_ros.mapdb import MapDatabase

        mapdb = map_or_dir if isinstance(map_or_dir, MapDatabase) else MapDatabase.load(Path(map_or_dir), self._fingerprint)
        self._check_map(mapdb)
        with self._lock:
            self.mapdb = mapdb

    def localize(self, image: np.ndarray | None = None, points: np.ndarray | None = None, stamp: float = 0.0,
                 calib=None) -> LocalizationResult:
        """Image (H,W,3) uint8 RGB and/or scan (N,4) in the range-sensor frame (needs `calib`) -> matches."""
        if points is not None and calib is None:
            raise ValueError("a scan needs the calibration that projects it into the camera")
        if image is None and points is None:
            raise ValueError("localize needs an image, a scan, or both")
        if self.model is None:
            raise ValueError("this Localizer has no model; use localize_descriptor")
        with self._lock:
            start = time.perf_counter()
            image_t, depth_t = self._describer.inputs(image, points, calib)
            coverage = None
            if depth_t is not None:
                coverage = float((depth_t != 0).float().mean())
                if image_t is not None and coverage < self.config.min_scan_coverage:
                    depth_t = None  # the scan misses the image: answer from the image alone
            preprocessed = time.perf_counter()
            query = self._encode(image_t, depth_t)
            encoded = time.perf_counter()
            result = self._search(query, stamp)
        result.timings_ms = {"preprocess": (preprocessed - start) * 1e3, "encode": (encoded - preprocessed) * 1e3,
                             **result.timings_ms}
        result.modalities = "+".join(name for name, t in (("image", image_t), ("depth", depth_t)) if t is not None)
        result.scan_coverage = coverage
        return result

    def localize_descriptor(self, descriptor: np.ndarray, stamp: float = 0.0) -> LocalizationResult:
        """Search only, for a descriptor computed elsewhere (offline tools, batch evaluation)."""
        with self._lock:
            return self._search(EncodedQuery(np.asarray(descriptor, dtype=np.float32).reshape(-1)), stamp)

    def _encode(self, image, depth) -> EncodedQuery:
        """The query's descriptor, and its local tokens when the reranker compares tokens."""
        grid = None
        if self.config.rerank in NEEDS_TOKENS:
            grid = tuple(self.mapdb.manifest.get("tokens", {}).get("grid", [4, 16]))
        described = self._describer.describe(image, depth, batch_size=1, progress=False, tokens_grid=grid)
        return EncodedQuery(described.descriptors[0], None if described.tokens is None else described.tokens[0])

    def _search(self, query: EncodedQuery, stamp: float) -> LocalizationResult:
        cfg, mapdb, descriptor = self.config, self.mapdb, query.descriptor
        start = time.perf_counter()
        fetch = cfg.top_k if cfg.rerank == "none" else max(cfg.top_k, cfg.rerank_candidates)
        scores, ids = mapdb.search(descriptor[None], fetch, exclude_stamp=stamp, exclude_seconds=cfg.exclude_seconds,
                                   exclude_session=cfg.exclude_session)
        valid = ids[0] >= 0
        scores, ids = scores[0][valid], ids[0][valid]
        if cfg.rerank != "none" and len(ids):
            scores = RERANKERS.get(cfg.rerank)(query, ids, scores, mapdb).astype(np.float32)
            order = np.argsort(-scores, kind="stable")
            scores, ids = scores[order], ids[order]
        keep = scores >= cfg.score_threshold
        scores, ids = scores[keep][: cfg.top_k], ids[keep][: cfg.top_k]
        kf, poses = mapdb.keyframes, mapdb.keyframes.poses(ids)
        matches = [Match(int(i), float(kf.stamps[i]), T, float(s), str(kf.sessions[i]), str(kf.source_frames[i]),
                         str(kf.frame_ids[i])) for i, s, T in zip(ids, scores, poses)]
        covariance = None
        if matches:
            covariance = match_covariance(scores, poses, cfg.covariance_temperature, cfg.position_floor_m,
                                          cfg.rotation_floor_deg)
        elapsed = (time.perf_counter() - start) * 1e3
        return LocalizationResult(float(stamp), matches, covariance, {"search": elapsed}, descriptor)


def _describer(model):
    from cmirl_ros.models import Describer

    return Describer(model)


def _fingerprint(model) -> str:
    from cmirl_ros.models import model_fingerprint

    return model_fingerprint(model)
