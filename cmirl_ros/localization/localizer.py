"""The localizer core shared by the ROS node and the offline tools: image (+ scan) -> map matches.

Query side of the shared descriptor space: the image, and a live scan when given with its
calibration, become model inputs and a descriptor through the `Describer` (the same path as map
building), and the model fuses them. The descriptor then runs
through the stages of `localization.stages`, chosen by the config: retrieve (FAISS; keyframes
within `exclude_seconds` of the query stamp are dropped, the self-match guard) -> rerank (optional;
then candidates under `score_threshold` are dropped) -> verify (optional; e.g. registration of the
live scan against the keyframe clouds: unverified candidates are dropped, so without a verified
candidate there is no match) -> pose (pose and covariance of the best).

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
from cmirl_ros.localization.rerank import NEEDS_TOKENS, RERANKERS, EncodedQuery
from cmirl_ros.localization.stages import KINDS, QueryInput, make_stage, stage_names


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
    retrieve: str = "faiss"  # stage names (`localization.stages`)
    verify: str = "none"  # none | registration (needs the live scan and a map with clouds) | ...
    pose: str = "standard"
    verify_candidates: int = 5  # how many of the best candidates verification tries, in rank order
    scan_context_candidates: int = 5  # retrieve faiss_scan_context: keyframes added by the live scan's Scan Context
    # registration verification (`geometry.registration.RegistrationConfig`)
    registration_min_fitness: float = 0.4
    registration_max_rmse_m: float = 0.45
    registration_min_inliers: int = 200
    registration_inlier_m: float = 0.5
    registration_correspondence_m: float = 2.0
    registration_coarse_correspondence_m: float = 4.0
    registration_coarse_voxel_m: float = 2.0
    registration_yaw_hypotheses: int = 1
    registration_threads: int = 1

    def __post_init__(self):
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.exclude_seconds < 0:
            raise ValueError(f"exclude_seconds must be >= 0, got {self.exclude_seconds}")
        if not 0.0 <= self.min_scan_coverage <= 1.0:
            raise ValueError(f"min_scan_coverage must be in [0, 1], got {self.min_scan_coverage}")
        if self.verify_candidates < 1:
            raise ValueError(f"verify_candidates must be >= 1, got {self.verify_candidates}")
        RERANKERS.get(self.rerank)  # unknown names fail here, listing the known ones
        if self.retrieve == "none":
            raise ValueError("retrieve stage 'none': the query path needs a retrieve stage")
        for kind in ("retrieve", "verify", "pose"):
            if getattr(self, kind) not in stage_names(kind):
                raise ValueError(f"unknown {kind} stage '{getattr(self, kind)}'; choose one of: {', '.join(stage_names(kind))}")
        self.registration_config(1.0)  # checks the registration figures

    def candidates_to_fetch(self) -> int:
        """How many candidates retrieval returns: enough for the reranker and the verifier."""
        fetch = self.top_k
        if self.rerank != "none":
            fetch = max(fetch, self.rerank_candidates)
        if self.verify != "none":
            fetch = max(fetch, self.verify_candidates)
        return fetch

    def registration_config(self, voxel_m: float):
        """Registration settings; the query scan is downsampled with the map clouds' `voxel_m`."""
        from cmirl_ros.geometry.registration import RegistrationConfig

        prefix = "registration_"
        return RegistrationConfig(voxel_m=voxel_m, **{k[len(prefix):]: v for k, v in asdict(self).items()
                                                      if k.startswith(prefix)})

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
    verified: bool = False  # a verify stage accepted it (False when verification is off)
    T_keyframe_query: np.ndarray | None = None  # (4,4) query camera in the keyframe camera (verified only)
    information: np.ndarray | None = None  # (6,6) of T_keyframe_query, (tx, ty, tz, rx, ry, rz), query camera frame
    T_world_query: np.ndarray | None = None  # (4,4) refined query camera pose, map frame
    verification: dict = field(default_factory=dict)  # the verifier's figures (fitness, rmse_m, ...)

    def to_dict(self) -> dict:
        record = {"keyframe_id": self.keyframe_id, "stamp": self.stamp, "score": self.score, "session": self.session,
                  "source_frame": self.source_frame, "frame_id": self.frame_id,
                  "position": self.T_world_cam[:3, 3].tolist(), "verified": self.verified}
        if self.T_world_query is not None:
            record.update(query_position=self.T_world_query[:3, 3].tolist(),
                          T_keyframe_query=self.T_keyframe_query.tolist(), verification=self.verification)
        return record


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
        self._stages = self._build_stages(mapdb)
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
        stages = self._build_stages(mapdb)
        with self._lock:
            self.mapdb, self._stages = mapdb, stages

    def _build_stages(self, mapdb) -> list:
        cfg = self.config
        names = {"retrieve": cfg.retrieve, "rerank": cfg.rerank, "verify": cfg.verify, "pose": cfg.pose}
        return [(kind, make_stage(kind, names[kind], cfg, mapdb)) for kind in KINDS]

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
            result = self._search(query, stamp, points, calib)
        result.timings_ms = {"preprocess": (preprocessed - start) * 1e3, "encode": (encoded - preprocessed) * 1e3,
                             **result.timings_ms}
        result.modalities = "+".join(name for name, t in (("image", image_t), ("depth", depth_t)) if t is not None)
        result.scan_coverage = coverage
        return result

    def localize_descriptor(self, descriptor: np.ndarray, stamp: float = 0.0, points: np.ndarray | None = None,
                            calib=None) -> LocalizationResult:
        """The stages without the model, for a descriptor computed elsewhere (offline tools, batch
        evaluation); `points` + `calib`: the query's live scan, for registration verification."""
        with self._lock:
            return self._search(EncodedQuery(np.asarray(descriptor, dtype=np.float32).reshape(-1)), stamp, points, calib)

    def _encode(self, image, depth) -> EncodedQuery:
        """The query's descriptor, and its local tokens when the reranker compares tokens."""
        grid = None
        if self.config.rerank in NEEDS_TOKENS:
            grid = tuple(self.mapdb.manifest.get("tokens", {}).get("grid", [4, 16]))
        described = self._describer.describe(image, depth, batch_size=1, progress=False, tokens_grid=grid)
        return EncodedQuery(described.descriptors[0], None if described.tokens is None else described.tokens[0])

    def _search(self, query: EncodedQuery, stamp: float, points=None, calib=None) -> LocalizationResult:
        """Run the stages; timings: `verify` for a verify stage, `search` for all the others."""
        cfg = self.config
        inputs = QueryInput(query.descriptor, float(stamp), query.tokens, points, calib)
        candidates, timings = None, {}
        for kind, stage in self._stages:
            start = time.perf_counter()
            if stage is not None:
                candidates = stage(candidates, inputs)
            if kind == "rerank":
                candidates = candidates.take(candidates.scores >= cfg.score_threshold)
            if stage is not None or kind == "rerank":
                name = "verify" if kind == "verify" else "search"
                timings[name] = timings.get(name, 0.0) + (time.perf_counter() - start) * 1e3
        candidates = _first(candidates, cfg.top_k)
        return LocalizationResult(float(stamp), _matches(candidates, self.mapdb.keyframes), candidates.covariance,
                                  timings, query.descriptor)


def _first(candidates, k: int):
    covariance = candidates.covariance
    candidates = candidates.take(np.arange(min(k, len(candidates))))
    candidates.covariance = covariance
    return candidates


def _matches(candidates, kf) -> list[Match]:
    extras = candidates.extras
    figures = [key for key in ("fitness", "rmse_m", "iterations") if key in extras]
    matches = []
    for row, (i, score, T) in enumerate(zip(candidates.ids, candidates.scores, candidates.T_world_cam)):
        match = Match(int(i), float(kf.stamps[i]), T, float(score), str(kf.sessions[i]), str(kf.source_frames[i]),
                      str(kf.frame_ids[i]))
        if "verified" in extras:
            match.verified = bool(extras["verified"][row])
            match.T_keyframe_query = extras["T_keyframe_query"][row]
            match.information = extras["information"][row]
            match.T_world_query = extras["T_world_query"][row]
            match.verification = {key: float(extras[key][row]) for key in figures}
        matches.append(match)
    return matches


def _describer(model):
    from cmirl_ros.models import Describer

    return Describer(model)


def _fingerprint(model) -> str:
    from cmirl_ros.models import model_fingerprint

    return model_fingerprint(model)
