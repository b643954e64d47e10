"""A live session map grown from the localizer's own queries, and loop closures searched in it.

A SLAM back end (LIO-SAM's `lio_loop/loop_closure_detection`) looks both stamps of a loop closure
up in its own keyframe times, so the pairs must come from this run, not from the session that
built the prior map. `SessionMap.add` takes every image + scan query with its odometry pose
(T_odom_base, from tf) and keeps a keyframe whenever the base has moved `keyframe_distance` m
since the last one: stamp, odometry pose, map-side descriptor of the scan (the `Describer`'s depth
path, exactly as `cmirl map build` describes a keyframe) and the scan voxel-downsampled as a map
keyframe cloud. Each new keyframe is a loop-closure query: descriptor retrieval (FAISS, exact inner
product) over the keyframes older than `loop_closure_min_gap` s (LIO-SAM's
historyKeyframeSearchTimeDiff), then registration of the scan against each candidate's cloud in
rank order (`geometry.registration`, the verify stage's settings), starting from the odometry
guess. The first accepted candidate is the loop closure; the ones tried before it are rejected.

Frames: b = base, s = range sensor, c = camera. Registration returns T_ks_qs (query sensor in the
matched keyframe's sensor frame); the published relative pose is in base frames,
T_kb_qb = T_base_sensor(k) @ T_ks_qs @ inv(T_base_sensor(q)), and its information is re-expressed
for a right perturbation of the query base (`registration.information_in`).

`save(directory)` writes a regular map directory (descriptors, keyframes at their camera poses
T_odom_cam, FAISS index, keyframe clouds; atomic), loadable as the next run's prior map.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmirl_ros.geometry.clouds import voxel_downsample
from cmirl_ros.geometry.registration import RegistrationConfig, Target, information_in, prepare_query, register
from cmirl_ros.localization.stages.verify_registration import CACHED_TARGETS


@dataclass
class SessionConfig:
    keyframe_distance: float = 2.0  # m of base motion between session keyframes
    loop_closure_min_gap: float = 30.0  # s; younger keyframes are no loop-closure candidates
    candidates: int = 5  # retrieved keyframes that registration tries, in rank order
    session: str = "live"  # session name recorded in the saved map's keyframes
    frame_id: str = "odom"  # frame of the keyframe poses

    def __post_init__(self):
        if self.keyframe_distance <= 0:
            raise ValueError(f"keyframe_distance must be > 0, got {self.keyframe_distance}")
        if self.loop_closure_min_gap < 0:
            raise ValueError(f"loop_closure_min_gap must be >= 0, got {self.loop_closure_min_gap}")
        if self.candidates < 1:
            raise ValueError(f"loop-closure candidates must be >= 1, got {self.candidates}")


@dataclass
class LoopClosure:
    """A loop-closure candidate pair after registration (accepted or rejected)."""

    query_stamp: float
    matched_stamp: float
    query_keyframe_id: int
    matched_keyframe_id: int
    T_matched_query: np.ndarray  # (4,4) query base in the matched keyframe's base frame
    information: np.ndarray  # (6,6) of T_matched_query, (tx, ty, tz, rx, ry, rz), query base frame
    score: float  # descriptor similarity
    fitness: float
    rmse_m: float
    accepted: bool


@dataclass
class SessionUpdate:
    """What one query did to the session map: the keyframe it became (None: too close to the last
    one), the accepted loop closure (None when none) and the candidates registration rejected."""

    keyframe_id: int | None = None
    closure: LoopClosure | None = None
    rejected: list[LoopClosure] = field(default_factory=list)


class SessionMap:
    def __init__(self, model, registration: RegistrationConfig, config: SessionConfig | None = None):
        """`registration.voxel_m` is also the voxel of the keyframe clouds (as a map's clouds)."""
        import faiss

        from cmirl_ros.models import Describer

        self.model = model
        self.registration = registration
        self.config = config or SessionConfig()
        self._describer = Describer(model)
        self._index = faiss.IndexFlatIP(model.descriptor_dim)
        self.queries = 0
        self.stamps: list[float] = []
        self.T_odom_base: list[np.ndarray] = []
        self.T_base_sensor: list[np.ndarray] = []
        self.T_cam_sensor: list[np.ndarray] = []
        self.descriptors: list[np.ndarray] = []
        self.clouds: list[np.ndarray] = []  # (n,3) float32, voxel-downsampled, sensor frame
        self._targets: OrderedDict[int, Target] = OrderedDict()  # prepared for registration, most recent last

    def __len__(self) -> int:
        return len(self.stamps)

    def add(self, stamp: float, T_odom_base: np.ndarray, T_base_sensor: np.ndarray, points: np.ndarray,
            calib) -> SessionUpdate:
        """One query: its scan (N, >=3, sensor frame) with the calibration projecting it into the
        camera, the odometry pose of the base and the base -> sensor transform at `stamp`."""
        self.queries += 1
        T_odom_base = np.asarray(T_odom_base, np.float64)
        if self.stamps and np.linalg.norm(T_odom_base[:3, 3] - self.T_odom_base[-1][:3, 3]) < self.config.keyframe_distance:
            return SessionUpdate()
        if self.stamps and stamp <= self.stamps[-1]:
            raise ValueError(f"session keyframe stamps must increase: {stamp:.6f} after {self.stamps[-1]:.6f}")
        image, depth = self._describer.inputs(None, points, calib)
        descriptor = self._describer.describe(image, depth, batch_size=1, progress=False).descriptors[0]
        keyframe = len(self)
        update = SessionUpdate(keyframe_id=keyframe)
        self.stamps.append(float(stamp))
        self.T_odom_base.append(T_odom_base)
        self.T_base_sensor.append(np.asarray(T_base_sensor, np.float64))
        self.T_cam_sensor.append(np.asarray(calib.T_cam_sensor, np.float64))
        self.descriptors.append(descriptor)
        self.clouds.append(voxel_downsample(points, self.registration.voxel_m))
        self._search(keyframe, points, update)
        self._index.add(descriptor[None])  # after the search: a keyframe never closes a loop with itself
        return update

    def _search(self, query: int, points: np.ndarray, update: SessionUpdate) -> None:
        """Retrieval over the keyframes older than the gap, then registration in rank order."""
        eligible = int(np.searchsorted(self.stamps[:query], self.stamps[query] - self.config.loop_closure_min_gap,
                                       side="right"))
        if eligible == 0:
            return
        scores, ids = self._retrieve(self.descriptors[query], eligible)
        source = prepare_query(points, self.registration)
        for score, candidate in zip(scores, ids):
            pair = self._verify(source, query, int(candidate), float(score))
            if pair.accepted:
                update.closure = pair
                return
            update.rejected.append(pair)

    def _retrieve(self, descriptor: np.ndarray, eligible: int) -> tuple[np.ndarray, np.ndarray]:
        """Top candidates among keyframes 0..eligible-1 (keyframes are added in time order)."""
        import faiss

        k = min(self.config.candidates, eligible)
        params = faiss.SearchParameters(sel=faiss.IDSelectorRange(0, eligible))
        scores, ids = self._index.search(descriptor[None].astype(np.float32), k, params=params)
        valid = ids[0] >= 0
        return scores[0][valid], ids[0][valid]

    def _verify(self, source: Target, query: int, matched: int, score: float) -> LoopClosure:
        T_odom_qs = self.T_odom_base[query] @ self.T_base_sensor[query]
        T_odom_ks = self.T_odom_base[matched] @ self.T_base_sensor[matched]
        result = register(source, self._target(matched), np.linalg.inv(T_odom_ks) @ T_odom_qs, self.registration)
        T_kb_qb = self.T_base_sensor[matched] @ result.T_target_source @ np.linalg.inv(self.T_base_sensor[query])
        return LoopClosure(self.stamps[query], self.stamps[matched], query, matched, T_kb_qb,
                           information_in(self.T_base_sensor[query], result.information), score, result.fitness,
                           result.rmse_m, result.accepted)

    def _target(self, keyframe: int) -> Target:
        """The keyframe's cloud prepared for registration; the CACHED_TARGETS last used are kept."""
        target = self._targets.pop(keyframe, None) or Target(self.clouds[keyframe], self.registration)
        self._targets[keyframe] = target
        while len(self._targets) > CACHED_TARGETS:
            self._targets.popitem(last=False)
        return target

    def database(self):
        """The session as a `MapDatabase` (keyframe poses = camera poses T_odom_cam, clouds included)."""
        from cmirl_ros.mapdb import MapDatabase
        from cmirl_ros.mapdb.build import model_record
        from cmirl_ros.mapdb.clouds import KeyframeClouds
        from cmirl_ros.mapdb.keyframes import Keyframes

        if not len(self):
            raise ValueError("the session map has no keyframe yet: nothing to save")
        T_odom_cam = [T_ob @ T_bs @ np.linalg.inv(T_cs)
                      for T_ob, T_bs, T_cs in zip(self.T_odom_base, self.T_base_sensor, self.T_cam_sensor)]
        cfg = self.config
        keyframes = Keyframes.from_poses(np.stack(T_odom_cam), np.asarray(self.stamps), cfg.session,
                                         [str(i) for i in range(len(self))], cfg.frame_id)
        manifest = {
            "model": model_record(self.model),
            "preprocessing": self.model.preprocessing.to_dict(),
            "source": {"dataset": f"session {cfg.session} (live localizer queries)", "frames": self.queries},
            "keyframe_selection": {"distance_m": cfg.keyframe_distance, "angle_deg": 0.0, "ground_axes": None},
            "pose_convention": f"T_{cfg.frame_id}_cam of the query camera from odometry; position xyz + quaternion xyzw",
            "counts": {"source_frames": self.queries},
        }
        clouds = KeyframeClouds.from_scans(self.clouds, np.stack(self.T_cam_sensor), self.registration.voxel_m)
        return MapDatabase(np.stack(self.descriptors).astype(np.float32), keyframes, manifest, clouds=clouds)

    def save(self, directory: str | Path) -> Path:
        """Write the session map atomically as a map directory (an existing one is replaced)."""
        return self.database().save(directory, overwrite=True)
