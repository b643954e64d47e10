"""Retrieval metrics over descriptors and poses: Recall@N, Recall@1%, and the two protocols.

Everything here is a pure function of arrays, so the numbers in reports can be checked
by hand on tiny inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cmirl_ros.geometry.poses import place_matches, time_exclusion

PROTOCOLS = ("paper", "revisit")


def top1_percent_k(num_map_entries: int) -> int:
    """Recall@1% looks at the top max(1, round(N/100)) of N map entries."""
    return max(1, int(round(num_map_entries / 100.0)))


@dataclass
class RetrievalResult:
    """Recall figures of one evaluation; `recall_curve[n-1]` is Recall@n over the counted queries."""

    protocol: str
    num_queries: int
    num_map_entries: int
    recall_curve: np.ndarray
    recall_at_1: float | None  # None when no query is counted
    recall_at_1_percent: float | None
    k_1_percent: int
    chance_at_1: float | None
    chance_at_1_percent: float | None
    top1: np.ndarray = field(repr=False)  # (Q,) map index ranked first, -1 for uncounted queries

    def to_dict(self) -> dict:
        return {
            "protocol": self.protocol,
            "num_queries": self.num_queries,
            "num_map_entries": self.num_map_entries,
            "recall@1": self.recall_at_1,
            "recall@1%": self.recall_at_1_percent,
            "k@1%": self.k_1_percent,
            "chance@1": self.chance_at_1,
            "chance@1%": self.chance_at_1_percent,
            "recall_curve": [float(r) for r in self.recall_curve],
        }


def _chance(correct: np.ndarray, allowed: np.ndarray, k: int) -> float:
    """Expected recall@k of a random ranking: 1 - C(M-c, k)/C(M, k) per query, averaged."""
    num_allowed = allowed.sum(1).astype(np.float64)
    num_correct = (correct & allowed).sum(1).astype(np.float64)
    miss = np.ones(correct.shape[0])
    for j in range(k):
        miss *= np.clip((num_allowed - num_correct - j) / np.maximum(num_allowed - j, 1.0), 0.0, 1.0)
    return float(np.mean(1.0 - miss))


def evaluate_retrieval(
    query_descriptors: np.ndarray,
    map_descriptors: np.ndarray,
    correct: np.ndarray,
    excluded: np.ndarray | None = None,
    protocol: str = "paper",
    max_n: int = 25,
) -> RetrievalResult:
    """Rank map entries by inner product (descriptors are L2-normalised) and score the ranking.

    `correct` (Q,M) says which map entries are true matches of each query. `excluded` (Q,M)
    hides entries from the ranking (the `revisit` protocol); then only queries that keep at
    least one true match are counted, as loop closure needs.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}'; choose one of: {', '.join(PROTOCOLS)}")
    q = np.asarray(query_descriptors, dtype=np.float32)
    m = np.asarray(map_descriptors, dtype=np.float32)
    correct = np.asarray(correct, dtype=bool)
    if q.ndim != 2 or m.ndim != 2 or q.shape[1] != m.shape[1]:
        raise ValueError(f"descriptor shapes do not match: queries {q.shape}, map {m.shape}")
    if correct.shape != (q.shape[0], m.shape[0]):
        raise ValueError(f"correct mask has shape {correct.shape}, expected {(q.shape[0], m.shape[0])}")
    if m.shape[0] == 0:
        raise ValueError("the map has no entries")
    allowed = np.ones_like(correct) if excluded is None else ~np.asarray(excluded, dtype=bool)
    counted = ((correct & allowed).any(1)) if protocol == "revisit" else allowed.any(1)

    k_pct = top1_percent_k(m.shape[0])
    depth = min(max(max_n, k_pct), m.shape[0])
    scores = q @ m.T
    scores = np.where(allowed, scores, -np.inf)
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    hits = np.take_along_axis(correct & allowed, ranked, axis=1)
    hit_rank = np.where(hits.any(1), hits.argmax(1), depth)  # first correct position
    hit_rank = hit_rank[counted]

    n_counted = int(counted.sum())
    curve = np.array([(hit_rank < n).mean() if n_counted else 0.0 for n in range(1, depth + 1)])
    top1 = np.where(counted, ranked[:, 0], -1)
    return RetrievalResult(
        protocol=protocol,
        num_queries=n_counted,
        num_map_entries=int(m.shape[0]),
        recall_curve=curve,
        recall_at_1=float(curve[0]) if n_counted else None,
        recall_at_1_percent=float(curve[k_pct - 1]) if n_counted else None,
        k_1_percent=k_pct,
        chance_at_1=_chance(correct[counted], allowed[counted], 1) if n_counted else None,
        chance_at_1_percent=_chance(correct[counted], allowed[counted], k_pct) if n_counted else None,
        top1=top1,
    )


def evaluate_protocols(
    query_descriptors: np.ndarray,
    map_descriptors: np.ndarray,
    query_poses: np.ndarray,
    map_poses: np.ndarray,
    query_stamps: np.ndarray,
    map_stamps: np.ndarray,
    radius: float,
    axes=None,
    max_angle_deg: float | None = None,
    exclude_seconds: float = 30.0,
    protocols=PROTOCOLS,
    max_n: int = 25,
) -> dict[str, RetrievalResult]:
    """Both protocols on one set of descriptors: `paper` sees every map entry, `revisit`
    hides entries within `exclude_seconds` of the query and counts true revisits only."""
    correct = place_matches(query_poses, map_poses, radius, axes, max_angle_deg)
    results = {}
    for protocol in protocols:
        excluded = time_exclusion(query_stamps, map_stamps, exclude_seconds) if protocol == "revisit" else None
        results[protocol] = evaluate_retrieval(
            query_descriptors, map_descriptors, correct, excluded, protocol=protocol, max_n=max_n
        )
    return results


def refined_pose_errors(estimated: np.ndarray, truth: np.ndarray, axes=None) -> np.ndarray:
    """(Q, 2): position error (m, on the ground `axes`; all three when None) and rotation error (deg)
    of paired (Q,4,4) poses."""
    estimated = np.asarray(estimated, np.float64).reshape(-1, 4, 4)
    truth = np.asarray(truth, np.float64).reshape(-1, 4, 4)
    axes = list(axes) if axes is not None else [0, 1, 2]
    position = np.linalg.norm(estimated[:, axes, 3] - truth[:, axes, 3], axis=1)
    cos = (np.einsum("qji,qji->q", estimated[:, :3, :3], truth[:, :3, :3]) - 1.0) / 2.0
    return np.column_stack([position, np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))])


def verified_match_figures(verified: np.ndarray, correct: np.ndarray, has_revisit: np.ndarray,
                           pose_error: np.ndarray | None = None) -> dict:
    """Figures of verified top-1 matches over Q queries.

    `verified` (Q,): the query got a verified match; `correct` (Q,): that match is a true place
    match; `has_revisit` (Q,): the map holds the query's place (outside the exclusion window).
    verified_precision = correct / verified; verified_recall = verified and correct among the
    queries with a true revisit; pose errors (Q, 2) (m, deg): medians over the verified matches.
    """
    verified, correct, has_revisit = (np.asarray(a, bool) for a in (verified, correct, has_revisit))
    hits = verified & correct
    errors = np.zeros((0, 2)) if pose_error is None else np.asarray(pose_error, np.float64).reshape(-1, 2)[verified]
    return {
        "verified_matches": int(verified.sum()),
        "verified_precision": float(hits.sum() / verified.sum()) if verified.any() else None,
        "verified_recall": float((hits & has_revisit).sum() / has_revisit.sum()) if has_revisit.any() else None,
        "revisit_queries": int(has_revisit.sum()),
        "pose_error_m_p50": float(np.median(errors[:, 0])) if len(errors) else None,
        "pose_error_deg_p50": float(np.median(errors[:, 1])) if len(errors) else None,
    }
