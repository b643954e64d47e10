"""verify:registration: register the query's live scan to each shortlisted keyframe's cloud; keep
only the candidates whose registration is accepted (fitness and rmse thresholds).

Frames: the keyframe cloud is in the keyframe's range-sensor frame ks, the query scan in the
query's sensor frame qs. Registration starts from the candidate's `registration_guess` of T_ks_qs
when retrieval gave one (Scan Context: the viewpoint that matched and its yaw, so a revisit in
the other lane or direction starts metres nearer and at the right yaw; docs/verification.md),
else from identity (retrieval says the sensors stood at the same place), and returns T_ks_qs. Then, with c = camera:
    T_kc_qc      = T_cam_sensor(keyframe) @ T_ks_qs @ inv(T_cam_sensor(query))   (T_keyframe_query)
    T_world_qc   = T_world_kc @ T_kc_qc                                           (refined query pose)
and the information of a right perturbation of T_ks_qs is re-expressed for T_kc_qc (query camera).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from cmirl_ros.geometry.registration import Target, information_in, prepare_query, register
from cmirl_ros.localization.stages import Candidates, QueryInput, register_stage

CACHED_TARGETS = 256  # prepared keyframe clouds kept between queries (about 1 MB each)


@register_stage("verify", "registration")
def registration_verifier(config, mapdb):
    if mapdb.clouds is None:
        raise ValueError("verify 'registration' needs a map with keyframe clouds; this map has none "
                         "(built before them or with --cloud-voxel 0): rebuild it with `cmirl map build --cloud-voxel V`")
    return RegistrationVerifier(config.registration_config(mapdb.clouds.voxel_m), mapdb, config.verify_candidates)


class RegistrationVerifier:
    def __init__(self, registration, mapdb, shortlist: int):
        self.registration = registration
        self.mapdb = mapdb
        self.shortlist = shortlist
        self._targets: OrderedDict[int, Target] = OrderedDict()

    def __call__(self, candidates: Candidates, query: QueryInput) -> Candidates:
        if query.points is None or query.calib is None:
            raise ValueError("verify 'registration' needs the query's live scan and its calibration")
        shortlist = candidates.take(np.arange(min(self.shortlist, len(candidates))))
        source = prepare_query(query.points, self.registration)
        T_cam_sensor_query = np.asarray(query.calib.T_cam_sensor, np.float64)
        guesses = shortlist.extras.get("registration_guess", np.broadcast_to(np.eye(4), (len(shortlist), 4, 4)))
        figures = [self._verify(source, int(i), T_world_kc, T_cam_sensor_query, guess)
                   for i, T_world_kc, guess in zip(shortlist.ids, shortlist.T_world_cam, guesses)]
        if not figures:
            return shortlist
        stacked = {key: np.stack([f[key] for f in figures]) for key in figures[0]}
        checked = shortlist.with_extras(**stacked)
        return checked.take(checked.extras["verified"])

    def _verify(self, source, keyframe: int, T_world_kc: np.ndarray, T_cam_sensor_query: np.ndarray,
                T_init: np.ndarray) -> dict:
        result = register(source, self._target(keyframe), T_init, self.registration)
        T_kc_qc = self.mapdb.clouds.T_cam_sensor[keyframe] @ result.T_target_source @ np.linalg.inv(T_cam_sensor_query)
        return {"verified": result.accepted, "fitness": result.fitness, "rmse_m": result.rmse_m,
                "iterations": result.iterations, "T_keyframe_query": T_kc_qc, "T_world_query": T_world_kc @ T_kc_qc,
                "information": information_in(T_cam_sensor_query, result.information)}

    def _target(self, keyframe: int) -> Target:
        target = self._targets.pop(keyframe, None)
        if target is None:
            target = Target(self.mapdb.clouds.cloud(keyframe), self.registration)
        self._targets[keyframe] = target
        while len(self._targets) > CACHED_TARGETS:
            self._targets.popitem(last=False)
        return target
