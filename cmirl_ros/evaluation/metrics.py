"""Every recall / precision figure: Recall@N, Recall@1%, the two protocols, and loop-closure
precision / recall (PR curve, max F1, recall at 100 % precision, AP, verified figures, pose errors).

Everything here is a pure function of arrays, so the numbers in reports can be checked
by hand on tiny inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cmirl_ros.geometry.frames import pose_2d
from cmirl_ros.geometry.poses import nearest_stamps, place_matches, revisit_mask, time_exclusion

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
    # Loop-closure view: every query's top-1 (counted or not), its score and correctness.
    best: np.ndarray = field(repr=False, default=None)  # (Q,) map index ranked first, -1 without allowed entries
    best_score: np.ndarray = field(repr=False, default=None)  # (Q,) its score, -inf without allowed entries
    best_correct: np.ndarray = field(repr=False, default=None)  # (Q,) bool
    has_revisit: np.ndarray = field(repr=False, default=None)  # (Q,) bool: an allowed correct entry exists
    chance_correct: np.ndarray = field(repr=False, default=None)  # (Q,) P(random allowed entry is correct)
    loop_closure: "LoopClosureResult | None" = field(repr=False, default=None)

    def verify(self, accepted: np.ndarray | None, verify: str, pose_error: np.ndarray | None = None,
               verified_correct: np.ndarray | None = None, verified_scores: np.ndarray | None = None) -> None:
        """Loop-closure figures with a verifier's decisions (`accepted` (Q,), None: no verification);
        `verified_correct` / `verified_scores`: those of the verifier's own match where it may pick
        another candidate than the top-1 (default: the top-1's)."""
        self.loop_closure = loop_closure_metrics(self.best_score, self.best_correct, self.has_revisit, accepted,
                                                 verify, self.chance_correct, pose_error, verified_correct,
                                                 verified_scores)

    def to_dict(self) -> dict:
        loop_closure = self.loop_closure.to_dict() if self.loop_closure is not None else {}
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
            **loop_closure,
        }


def recall(hits, counted=None) -> float | None:
    """Fraction of the counted queries (all when `counted` is None) that have a hit; None when none counts."""
    hits = np.asarray(hits, bool)
    if counted is not None:
        hits = hits[np.asarray(counted, bool)]
    return float(hits.mean()) if len(hits) else None


def recall_from_rankings(rankings: list[np.ndarray], correct: np.ndarray, excluded: np.ndarray | None,
                         k_percent: int) -> dict:
    """Recall@1 and Recall@1% of ranked map ids (one ranking per query, e.g. what a node published).
    With `excluded` (Q, M), hidden entries are removed from each ranking and only queries with a
    visible correct entry count (revisit)."""
    hits1, hits_pct = [], []
    for q, ranking in enumerate(rankings):
        if excluded is not None:
            if not (correct[q] & ~excluded[q]).any():
                continue
            ranking = ranking[~excluded[q][ranking]]
        hits1.append(bool(len(ranking) and correct[q, ranking[0]]))
        hits_pct.append(bool(correct[q, ranking[:k_percent]].any()))
    return {"queries": len(hits1), "recall@1": recall(hits1), "recall@1%": recall(hits_pct), "k_1_percent": k_percent}


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

    reachable = correct & allowed
    best = np.where(allowed.any(1), ranked[:, 0], -1)
    rows = np.arange(len(best))
    best_score = np.where(best >= 0, scores[rows, np.maximum(best, 0)], -np.inf)
    best_correct = (best >= 0) & reachable[rows, np.maximum(best, 0)]
    chance_correct = reachable.sum(1) / np.maximum(allowed.sum(1), 1)

    n_counted = int(counted.sum())
    curve = np.array([(hit_rank < n).mean() if n_counted else 0.0 for n in range(1, depth + 1)])
    top1 = np.where(counted, ranked[:, 0], -1)
    result = RetrievalResult(
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
        best=best,
        best_score=best_score,
        best_correct=best_correct,
        has_revisit=reachable.any(1),
        chance_correct=chance_correct,
    )
    result.verify(None, "none")
    return result


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


# ---------------------------------------------------------------- loop closure (precision first)
# As loop-closure papers define it (Scan Context, OverlapTransformer): every query proposes its top-1
# match with a score; a threshold (or a verifier) accepts it or not. True positive = accepted and
# correct (within the radius); precision = TP / accepted; recall = TP / queries that have a true
# revisit in the (exclusion-filtered) map. A query without a revisit can only add false positives.


@dataclass
class PRCurve:
    """Precision and recall when accepting top-1 matches with score >= thresholds[i] (descending).
    Tied scores form one threshold: they are accepted together."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    num_positives: int  # recall's denominator; 0 leaves recall undefined (NaN)

    @classmethod
    def from_dict(cls, data: dict, num_positives: int) -> "PRCurve":
        return cls(*(np.array(data[k], np.float64) for k in ("thresholds", "precision", "recall")), num_positives)

    def to_dict(self) -> dict:
        return {"thresholds": _floats(self.thresholds), "precision": _floats(self.precision),
                "recall": _floats(self.recall)}


def precision_recall_curve(scores: np.ndarray, correct: np.ndarray, num_positives: int) -> PRCurve:
    """PR curve over a score threshold. `scores` (Q,) of the top-1 matches (NaN / -inf = never accepted:
    no match, or rejected by a verifier), `correct` (Q,) whether each is within the radius."""
    scores = np.asarray(scores, np.float64)
    correct = np.asarray(correct, bool)
    valid = np.isfinite(scores)
    scores, correct = scores[valid], correct[valid]
    order = np.argsort(-scores, kind="stable")
    scores, correct = scores[order], correct[order]
    last_of_level = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True]) if len(scores) else np.zeros(0, int)
    tp = np.cumsum(correct)[last_of_level].astype(np.float64)
    accepted = last_of_level + 1.0
    recall = tp / num_positives if num_positives else np.full(len(tp), np.nan)
    return PRCurve(scores[last_of_level], tp / accepted, recall, num_positives)


def max_f1(curve: PRCurve) -> float | None:
    """Best F1 over the thresholds (0 when nothing correct is ever accepted; None without positives)."""
    if not curve.num_positives:
        return None
    p, r = curve.precision, curve.recall
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    return float(f1.max()) if len(f1) else 0.0


def recall_at_100p(curve: PRCurve) -> float | None:
    """Highest recall at a threshold that accepts no false positive (0 when the best match is wrong)."""
    return recall_at_precision(curve, 1.0)


def recall_at_precision(curve: PRCurve, precision: float) -> float | None:
    """Highest recall at a threshold whose precision is at least `precision` (0 when none is)."""
    if not curve.num_positives:
        return None
    good = curve.precision >= precision
    return float(curve.recall[good].max()) if good.any() else 0.0


def average_precision(curve: PRCurve) -> float | None:
    """Area under the PR curve as a step function: sum over thresholds of (R_k - R_{k-1}) * P_k."""
    if not curve.num_positives:
        return None
    gains = np.diff(np.r_[0.0, curve.recall])
    return float((gains * curve.precision).sum())


def pose_errors(estimated: np.ndarray, truth: np.ndarray, axes=None) -> np.ndarray:
    """(Q, 2) position error (m, on the ground `axes`; all three when None) and rotation error (deg) of
    paired (Q,4,4) poses (or one (4,4) pair)."""
    estimated = np.asarray(estimated, np.float64).reshape(-1, 4, 4)
    truth = np.asarray(truth, np.float64).reshape(-1, 4, 4)
    axes = list(axes) if axes is not None else [0, 1, 2]
    position = np.linalg.norm(estimated[:, axes, 3] - truth[:, axes, 3], axis=1)
    relative = np.einsum("qji,qjk->qik", estimated[:, :3, :3], truth[:, :3, :3])
    cos = np.clip((np.trace(relative, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    return np.column_stack([position, np.degrees(np.arccos(cos))])


# The headline keys every loop-closure report (eval, localize, bag eval) carries at its top level.
LOOP_CLOSURE_KEYS = ("max_f1", "recall_at_100p", "average_precision", "chance_max_f1", "chance_average_precision",
                     "verify", "verified_precision", "verified_recall", "unverified_precision", "unverified_recall",
                     "pose_error_m_p50", "pose_error_deg_p50")


@dataclass
class LoopClosureResult:
    """Loop-closure figures of one evaluation, each beside its baseline: `unverified_*` (every top-1
    accepted) for the verified figures, `chance_*` (a random map entry with a random score) for the
    score-threshold figures."""

    num_queries: int
    num_positives: int  # queries with a true revisit in the exclusion-filtered map
    curve: PRCurve  # retrieval score threshold, no verification
    verify: str  # verifier that produced `accepted` ("none": nothing verified)
    verified_curve: PRCurve | None  # score threshold over the verified matches
    verified_accepted: int | None
    verified_precision: float | None
    verified_recall: float | None
    unverified_precision: float | None
    unverified_recall: float | None
    chance_precision: float | None
    chance_recall: float | None
    pose_error_m_p50: float | None
    pose_error_deg_p50: float | None

    def to_dict(self) -> dict:
        p, r = self.chance_precision, self.chance_recall
        known = p is not None and r is not None
        return {
            "max_f1": max_f1(self.curve),
            "recall_at_100p": recall_at_100p(self.curve),
            "average_precision": average_precision(self.curve),
            # A random pick at constant expected precision p up to recall r: F1 = 2pr/(p+r), AP = p*r.
            "chance_max_f1": (2 * p * r / (p + r) if p + r > 0 else 0.0) if known else None,
            "chance_average_precision": p * r if known else None,
            "chance_precision": self.chance_precision,
            "verify": self.verify,
            "verified_precision": self.verified_precision,
            "verified_recall": self.verified_recall,
            "verified_accepted": self.verified_accepted,
            # The verified matches thresholded by score as well: the recall kept at >= 99 % precision.
            "verified_recall_at_99p": None if self.verified_curve is None else recall_at_precision(self.verified_curve, 0.99),
            "unverified_precision": self.unverified_precision,
            "unverified_recall": self.unverified_recall,
            "pose_error_m_p50": self.pose_error_m_p50,
            "pose_error_deg_p50": self.pose_error_deg_p50,
            "lc_queries": self.num_queries,
            "lc_positives": self.num_positives,
            "pr_curve": self.curve.to_dict(),
            "verified_pr_curve": None if self.verified_curve is None else self.verified_curve.to_dict(),
        }


def loop_closure_metrics(scores: np.ndarray, correct: np.ndarray, has_revisit: np.ndarray,
                         accepted: np.ndarray | None = None, verify: str = "none",
                         chance_correct: np.ndarray | None = None,
                         pose_error: np.ndarray | None = None, verified_correct: np.ndarray | None = None,
                         verified_scores: np.ndarray | None = None) -> LoopClosureResult:
    """Loop-closure figures of Q queries' top-1 matches (see the section comment).

    `scores` (Q,): top-1 score (NaN or -inf: the query got no match); `correct` (Q,): the top-1 is
    within the radius; `has_revisit` (Q,): the map holds the place outside the exclusion window.
    `accepted` (Q,): a verifier's decision (None: no verification). `chance_correct` (Q,): the
    probability that a random allowed map entry is correct, for the chance baseline. `pose_error`
    (Q, 2): metres and degrees of the output pose against ground truth; medians over verified matches.
    `verified_correct` / `verified_scores` (Q,): correctness and score of the verifier's match where it
    is not the top-1 (a path verifier's pick and path score); default `correct` / `scores`.
    """
    scores = np.asarray(scores, np.float64)
    correct, has_revisit = np.asarray(correct, bool), np.asarray(has_revisit, bool)
    answered = np.isfinite(scores)
    positives = int(has_revisit.sum())
    unverified_p, unverified_r = _precision_recall(answered, correct, positives)
    verified = dict(verified_curve=None, verified_accepted=None, verified_precision=None, verified_recall=None,
                    pose_error_m_p50=None, pose_error_deg_p50=None)
    if accepted is not None:
        accepted = np.asarray(accepted, bool) & answered
        matched_correct = correct if verified_correct is None else np.asarray(verified_correct, bool)
        matched_scores = scores if verified_scores is None else np.asarray(verified_scores, np.float64)
        precision, recall = _precision_recall(accepted, matched_correct, positives)
        verified = dict(verified_curve=precision_recall_curve(np.where(accepted, matched_scores, np.nan),
                                                              matched_correct, positives),
                        verified_accepted=int(accepted.sum()), verified_precision=precision, verified_recall=recall,
                        **pose_error_medians(pose_error, accepted))
    chance_p = chance_r = None
    if chance_correct is not None and answered.any():
        expected_tp = float(np.asarray(chance_correct, np.float64)[answered].sum())
        chance_p = expected_tp / int(answered.sum())
        chance_r = expected_tp / positives if positives else None
    return LoopClosureResult(len(scores), positives, precision_recall_curve(scores, correct, positives), verify,
                             chance_precision=chance_p, chance_recall=chance_r, unverified_precision=unverified_p,
                             unverified_recall=unverified_r, **verified)


def _precision_recall(accepted: np.ndarray, correct: np.ndarray, positives: int) -> tuple[float | None, float | None]:
    tp = int((accepted & correct).sum())
    count = int(accepted.sum())
    return (tp / count if count else None), (tp / positives if positives else None)


def _floats(values: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, np.float64)]


def verified_match_figures(verified: np.ndarray, correct: np.ndarray, has_revisit: np.ndarray,
                           pose_error: np.ndarray | None = None) -> dict:
    """Figures of verified top-1 matches over Q queries.

    `verified` (Q,): the query got a verified match; `correct` (Q,): that match is a true place
    match; `has_revisit` (Q,): the map holds the query's place (outside the exclusion window).
    verified_precision = correct / verified; verified_recall = verified and correct among the
    queries with a true revisit; pose errors (Q, 2) (m, deg): medians over the verified matches.
    """
    verified, correct, has_revisit = (np.asarray(a, bool) for a in (verified, correct, has_revisit))
    positives = int(has_revisit.sum())
    precision = _precision_recall(verified, correct, positives)[0]
    recall = _precision_recall(verified, correct & has_revisit, positives)[1]
    return {"verified_matches": int(verified.sum()), "verified_precision": precision, "verified_recall": recall,
            "revisit_queries": positives, **pose_error_medians(pose_error, verified)}


def poses_within(pose_error: np.ndarray, tolerance_m: float = 1.0, tolerance_deg: float = 5.0) -> np.ndarray:
    """(Q,) whether each (metres, degrees) pose error is within the tolerances (NaN: not)."""
    errors = np.asarray(pose_error, np.float64).reshape(-1, 2)
    return (errors[:, 0] <= tolerance_m) & (errors[:, 1] <= tolerance_deg)


def pose_error_medians(pose_error: np.ndarray | None, selected: np.ndarray) -> dict:
    """Median position (m) and rotation (deg) errors over the `selected` queries; None without any."""
    errors = np.zeros((0, 2)) if pose_error is None else np.asarray(pose_error, np.float64).reshape(-1, 2)[selected]
    return {"pose_error_m_p50": float(np.median(errors[:, 0])) if len(errors) else None,
            "pose_error_deg_p50": float(np.median(errors[:, 1])) if len(errors) else None}


# A SLAM front end's view of a live run (`cmirl demo`): the loop closures a node published within its
# own session as [query_stamp, matched_stamp] pairs (LIO-SAM's form), and the poses it published on
# /initialpose, scored against the drive's ground truth (base poses in the map frame, one per frame).
# A pair is a true closure when the constraint it gives a back end is right: its published relative
# pose T_matched_query (the LoopClosure edge of the same pair) within 1 m / 5 deg of ground truth
# (`poses_within`). Registration aligns scans tens of metres apart, so a pair can be farther apart
# than a place-recognition radius and still exactly right; the radius view is reported beside it
# (`loop_closure_place_precision`: the two places within `radius`), and a pair without a relative
# pose is judged by it. A stamp that names no frame of the drive makes a pair false. The true
# revisits are the frames with an earlier frame, older by more than `min_gap` s (the detector's own
# gap), within `revisit_radius` (default `radius`); recall is the share of them that got at least one
# true pair as query, precision the share of published pairs that are true (each message counts).

def session_loop_closure_figures(pairs: np.ndarray, stamps: np.ndarray, poses: np.ndarray, radius: float,
                                 min_gap: float, revisit_radius: float | None = None,
                                 relative_poses: np.ndarray | None = None) -> dict:
    """Figures of published (L, 2) [query_stamp, matched_stamp] pairs over a drive of N frames
    (`stamps` (N,), ground-truth `poses` (N,4,4)); `relative_poses` (L,4,4): each pair's published
    T_matched_query, NaN where it has none. See the section comment."""
    revisit_radius = radius if revisit_radius is None else revisit_radius
    pairs = np.asarray(pairs, np.float64).reshape(-1, 2)
    query, matched = (nearest_stamps(pairs[:, k], stamps, tolerance=1e-3) for k in (0, 1))
    known = (query >= 0) & (matched >= 0)
    poses = np.asarray(poses, np.float64)
    distance = np.full(len(pairs), np.inf)
    distance[known] = np.linalg.norm(poses[query[known], :3, 3] - poses[matched[known], :3, 3], axis=1)
    within = distance < radius
    relative = np.full((len(pairs), 4, 4), np.nan) if relative_poses is None else \
        np.asarray(relative_poses, np.float64).reshape(-1, 4, 4)
    has_pose = known & np.isfinite(relative).all(axis=(1, 2))
    error = np.full((len(pairs), 2), np.nan)
    truth = np.linalg.inv(poses[matched[has_pose]]) @ poses[query[has_pose]]
    error[has_pose] = pose_errors(relative[has_pose], truth)
    true_pair = np.where(has_pose, poses_within(error), within)
    revisits = revisit_mask(poses, stamps, revisit_radius, min_gap)
    recalled = np.zeros(len(stamps), bool)
    recalled[query[true_pair]] = True
    return {"loop_closures_published": int(len(pairs)), "loop_closures_true": int(true_pair.sum()),
            "loop_closure_precision": float(true_pair.mean()) if len(pairs) else None,
            "loop_closure_recall": recall(recalled, revisits),
            "loop_closure_place_precision": float(within.mean()) if len(pairs) else None,
            "loop_closure_pose_error_m_max": float(error[has_pose, 0].max()) if has_pose.any() else None,
            "loop_closure_pose_error_deg_max": float(error[has_pose, 1].max()) if has_pose.any() else None,
            "loop_closures_without_pose": int((~has_pose).sum()),
            "loop_closure_revisit_frames": int(revisits.sum()), "loop_closure_unknown_stamps": int((~known).sum()),
            "loop_closure_radius_m": float(radius), "loop_closure_revisit_radius_m": float(revisit_radius),
            "loop_closure_min_gap_s": float(min_gap)}


def relocalization_figures(published: np.ndarray, published_stamps: np.ndarray, stamps: np.ndarray,
                           poses: np.ndarray) -> dict:
    """Errors of published relocalization poses (R,4,4) (base in the map frame, stamped with the query
    they come from) against ground truth (`stamps` (N,), `poses` (N,4,4)): position (m, 3D) and yaw
    (deg, about the map's z). `relocalization_error_m` is the worst one; None without a relocalization
    or when a stamp names no frame of the drive (counted in `relocalization_unknown_stamps`)."""
    published = np.asarray(published, np.float64).reshape(-1, 4, 4)
    frames = nearest_stamps(np.asarray(published_stamps, np.float64), stamps, tolerance=1e-3)
    known = frames >= 0
    truth = np.asarray(poses, np.float64)[frames[known]]
    position = np.linalg.norm(published[known, :3, 3] - truth[:, :3, 3], axis=1)
    yaw_error = np.array([pose_2d(a)[2] - pose_2d(b)[2] for a, b in zip(published[known], truth)])
    yaw = np.degrees(np.abs((yaw_error + np.pi) % (2 * np.pi) - np.pi))
    complete = bool(len(published)) and bool(known.all())
    return {"relocalizations": int(len(published)), "relocalization_unknown_stamps": int((~known).sum()),
            "relocalization_error_m": float(position.max()) if complete else None,
            "relocalization_yaw_error_deg": float(yaw.max()) if complete else None,
            "relocalization_errors_m": _floats(position)}

