"""Recall metrics and protocols on tiny hand-checked inputs."""
import json

import numpy as np
import pytest

from cmirl_ros.evaluation.metrics import (
    evaluate_protocols,
    evaluate_retrieval,
    top1_percent_k,
)
from cmirl_ros.evaluation.report import markdown_table, plot_recall_curves, write_json


def _poses(xs):
    poses = np.tile(np.eye(4), (len(xs), 1, 1))
    poses[:, 0, 3] = xs
    return poses


def test_top1_percent_k():
    assert top1_percent_k(10) == 1
    assert top1_percent_k(149) == 1
    assert top1_percent_k(151) == 2
    assert top1_percent_k(4541) == 45


def test_recall_curve_known_ranking():
    # 3 map entries on the unit axes; query 0 -> best = entry 0 (correct),
    # query 1 -> ranking 0, 1 (correct is 1, found at rank 2), query 2 -> correct entry 2 ranked last.
    m = np.eye(3, dtype=np.float32)
    q = np.array([[1, 0, 0], [0.9, 0.43589, 0], [0.8, 0.6, 0.0]], dtype=np.float32)
    correct = np.eye(3, dtype=bool)
    r = evaluate_retrieval(q, m, correct, max_n=3)
    assert r.num_queries == 3
    np.testing.assert_allclose(r.recall_curve, [1 / 3, 2 / 3, 1.0])
    assert r.recall_at_1 == pytest.approx(1 / 3)
    assert r.k_1_percent == 1 and r.recall_at_1_percent == pytest.approx(1 / 3)
    assert r.chance_at_1 == pytest.approx(1 / 3)  # one correct out of three
    assert list(r.top1) == [0, 0, 0]


def test_revisit_excludes_window_and_counts_true_revisits_only():
    # Map = the 4 query frames themselves; frames 0 and 3 are at the same place (a revisit).
    poses = _poses([0.0, 50.0, 100.0, 1.0])
    stamps = np.array([0.0, 10.0, 20.0, 100.0])
    desc = np.eye(4, dtype=np.float32)
    desc[3] = [0.6, 0, 0, 0.8]  # closest other entry to query 3 is entry 0
    results = evaluate_protocols(desc, desc, poses, poses, stamps, stamps, radius=5.0, exclude_seconds=15.0)
    paper, revisit = results["paper"], results["revisit"]
    assert paper.num_queries == 4 and paper.recall_at_1 == 1.0  # every query finds its own scan
    assert revisit.num_queries == 2  # only 0 and 3 keep a true match outside the window
    assert revisit.recall_at_1 == 1.0
    assert list(revisit.top1) == [3, -1, -1, 0]


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="descriptor shapes"):
        evaluate_retrieval(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="protocol"):
        evaluate_retrieval(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 2), bool), protocol="x")


def test_report_table_json_and_plot(tmp_path):
    desc = np.eye(3, dtype=np.float32)
    poses = _poses([0.0, 30.0, 60.0])
    res = evaluate_protocols(desc, desc, poses, poses, np.arange(3.0), np.arange(3.0), radius=5.0, exclude_seconds=0.5)
    rows = [("cmirl", {"00": {p: r.to_dict() for p, r in res.items()}})]
    md = markdown_table(rows, title="t")
    assert "| 00 paper R@1 | 00 paper R@1% | 00 revisit R@1 |" in md
    # revisit: no query truly revisits; chance of paper R@1 = one correct entry out of three
    assert "| cmirl | 100.0 | 100.0 | - | - | 33.3 / 33.3 | - / - | 3 / 0 |" in md
    write_json(tmp_path / "r.json", {"rows": rows})
    assert json.loads((tmp_path / "r.json").read_text())["rows"][0][1]["00"]["paper"]["recall@1"] == 1.0
    plot_recall_curves({"cmirl": res["paper"].recall_curve}, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------- loop closure (hand-computed)
def test_pr_curve_max_f1_recall_at_100p_and_ap_by_hand():
    from cmirl_ros.evaluation.metrics import (average_precision, max_f1, precision_recall_curve,
                                              recall_at_100p)

    # Query 3 has no revisit: its (wrong) top-1 can only be a false positive.
    curve = precision_recall_curve([0.9, 0.8, 0.7, 0.6], [True, False, True, False], num_positives=3)
    np.testing.assert_allclose(curve.thresholds, [0.9, 0.8, 0.7, 0.6])
    np.testing.assert_allclose(curve.precision, [1, 1 / 2, 2 / 3, 1 / 2])
    np.testing.assert_allclose(curve.recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert max_f1(curve) == pytest.approx(2 / 3)  # P = R = 2/3 at 0.7
    assert recall_at_100p(curve) == pytest.approx(1 / 3)
    assert average_precision(curve) == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3)


def test_pr_curve_ties_are_accepted_together():
    from cmirl_ros.evaluation.metrics import average_precision, precision_recall_curve, recall_at_100p

    curve = precision_recall_curve([0.9, 0.9, 0.5], [True, False, True], num_positives=3)
    np.testing.assert_allclose(curve.thresholds, [0.9, 0.5])
    np.testing.assert_allclose(curve.precision, [1 / 2, 2 / 3])
    assert recall_at_100p(curve) == 0.0  # the correct 0.9 cannot be accepted without the wrong 0.9
    assert average_precision(curve) == pytest.approx(1 / 3 * 1 / 2 + 1 / 3 * 2 / 3)


def test_loop_closure_without_positives_and_all_correct():
    from cmirl_ros.evaluation.metrics import loop_closure_metrics

    none = loop_closure_metrics([0.5, 0.4], [False, False], [False, False]).to_dict()
    assert none["max_f1"] is None and none["recall_at_100p"] is None and none["average_precision"] is None
    assert none["unverified_precision"] == 0.0 and none["unverified_recall"] is None
    assert none["verified_precision"] is None and none["verify"] == "none"
    perfect = loop_closure_metrics([0.3, 0.2, 0.1], [True] * 3, [True] * 3).to_dict()
    assert perfect["max_f1"] == 1.0 and perfect["recall_at_100p"] == 1.0 and perfect["average_precision"] == 1.0


def test_verified_figures_chance_and_pose_errors():
    from cmirl_ros.evaluation.metrics import loop_closure_metrics

    scores = [0.9, 0.8, 0.7, 0.6, -np.inf]  # the last query got no match at all
    correct = [True, False, True, False, False]
    errors = np.array([[0.1, 1.0], [9.0, 90.0], [0.3, 3.0], [9.0, 90.0], [0.0, 0.0]])
    lc = loop_closure_metrics(scores, correct, [True, True, True, False, True], accepted=[True, False, True, False, True],
                              verify="sequence", chance_correct=[0.5, 0.5, 0.0, 0.0, 1.0], pose_error=errors).to_dict()
    assert lc["verified_precision"] == 1.0 and lc["verified_recall"] == pytest.approx(2 / 4)
    assert lc["verified_accepted"] == 2  # a query without a match is never accepted
    assert lc["unverified_precision"] == pytest.approx(2 / 4) and lc["unverified_recall"] == pytest.approx(2 / 4)
    assert lc["pose_error_m_p50"] == pytest.approx(0.2) and lc["pose_error_deg_p50"] == pytest.approx(2.0)
    assert lc["chance_precision"] == pytest.approx(1 / 4)  # expected TP 1 over 4 answered queries
    assert lc["chance_max_f1"] == pytest.approx(1 / 4) and lc["chance_average_precision"] == pytest.approx(1 / 16)
    assert lc["verified_pr_curve"]["thresholds"] == [0.9, 0.7]


def test_pose_errors_use_ground_axes():
    from cmirl_ros.evaluation.metrics import pose_errors

    truth = np.eye(4)[None]
    estimate = np.eye(4)[None].copy()
    estimate[0, :3, 3] = [3.0, 100.0, 4.0]  # y is KITTI's vertical: ignored on axes (0, 2)
    estimate[0, :3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    np.testing.assert_allclose(pose_errors(estimate, truth, (0, 2)), [[5.0, 90.0]])


def test_revisit_protocol_counts_false_closures_of_queries_without_revisit():
    poses = _poses([0.0, 50.0, 100.0, 1.0])
    stamps = np.array([0.0, 10.0, 20.0, 100.0])
    desc = np.eye(4, dtype=np.float32)
    desc[3] = [0.6, 0, 0, 0.8]
    revisit = evaluate_protocols(desc, desc, poses, poses, stamps, stamps, radius=5.0, exclude_seconds=15.0)["revisit"]
    lc = revisit.to_dict()
    # Queries 1 and 2 have no revisit, but still propose a (wrong) top-1 with score 0 < 0.6.
    assert list(revisit.best) == [3, 3, 0, 0] and list(revisit.has_revisit) == [True, False, False, True]
    assert lc["max_f1"] == 1.0 and lc["recall_at_100p"] == 1.0 and lc["average_precision"] == 1.0
    assert lc["unverified_precision"] == 0.5 and lc["unverified_recall"] == 1.0
    assert lc["recall@1"] == 1.0  # the existing keys are unchanged


def test_recall_from_rankings_by_hand():
    from cmirl_ros.evaluation.metrics import recall_from_rankings

    correct = np.array([[True, False, False], [False, False, True], [False, True, False]])
    rankings = [np.array([0, 1, 2]), np.array([0, 2, 1]), np.array([2, 0, 1])]
    paper = recall_from_rankings(rankings, correct, None, k_percent=2)
    assert paper == {"queries": 3, "recall@1": pytest.approx(1 / 3), "recall@1%": pytest.approx(2 / 3), "k_1_percent": 2}
    # Hide keyframe 0 from query 0 (its only match: not counted) and from query 1 (now ranks 2 first).
    excluded = np.array([[True, False, False], [True, False, False], [False, False, False]])
    revisit = recall_from_rankings(rankings, correct, excluded, k_percent=1)
    assert revisit["queries"] == 2 and revisit["recall@1"] == pytest.approx(0.5)


def _out_and_back():
    """A drive along x: 0..9 m at t = 0..9 s, then back over 0..4 m at t = 100..104 s (5 true revisits)."""
    xs = np.r_[np.arange(10.0), np.arange(5.0)]
    return np.r_[np.arange(10.0), 100.0 + np.arange(5.0)], _poses(xs)


def test_session_loop_closures_by_hand():
    from cmirl_ros.evaluation.metrics import session_loop_closure_figures

    stamps, poses = _out_and_back()
    pairs = [[100, 0], [101, 1], [101, 1], [102, 8], [103, 55.5]]  # true, true (again), 6 m apart, no such frame
    figures = session_loop_closure_figures(np.array(pairs), stamps, poses, radius=1.5, min_gap=30.0)
    assert figures["loop_closures_published"] == 5 and figures["loop_closures_true"] == 3
    assert figures["loop_closure_precision"] == pytest.approx(3 / 5)
    assert figures["loop_closure_revisit_frames"] == 5 and figures["loop_closure_unknown_stamps"] == 1
    assert figures["loop_closure_recall"] == pytest.approx(2 / 5)  # frames 100 and 101 recalled, once each
    # 6 m counts as the same place, but only the revisits within 1.5 m must be closed.
    figures = session_loop_closure_figures(np.array(pairs), stamps, poses, radius=7.0, min_gap=30.0, revisit_radius=1.5)
    assert figures["loop_closures_true"] == 4 and figures["loop_closure_revisit_frames"] == 5
    assert figures["loop_closure_recall"] == pytest.approx(3 / 5)
    # With relative poses the constraint decides: the 6 m pair is exact (true at any radius), one of the
    # close pairs is 2 m off (false), a pair without a pose falls back to the radius.
    relative = np.full((5, 4, 4), np.nan)
    relative[0] = np.eye(4)
    relative[1] = _poses([2.0])[0]
    relative[3] = np.linalg.inv(poses[8]) @ poses[12]
    figures = session_loop_closure_figures(np.array(pairs), stamps, poses, radius=1.5, min_gap=30.0,
                                           relative_poses=relative)
    assert figures["loop_closures_true"] == 3 and figures["loop_closures_without_pose"] == 2  # pairs 0, 2 (radius), 3
    assert figures["loop_closure_place_precision"] == pytest.approx(3 / 5)
    assert figures["loop_closure_pose_error_m_max"] == pytest.approx(2.0)
    assert figures["loop_closure_recall"] == pytest.approx(3 / 5)  # frames 100, 101 (its second pair), 102
    # A gap longer than the drive leaves no revisit to recall; nothing published has no precision.
    figures = session_loop_closure_figures(np.zeros((0, 2)), stamps, poses, radius=1.5, min_gap=200.0)
    assert figures["loop_closure_recall"] is None and figures["loop_closure_precision"] is None


def test_relocalization_error_by_hand():
    from cmirl_ros.evaluation.metrics import relocalization_figures

    stamps, poses = _out_and_back()
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    published = poses[11].copy()
    published[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    published[:3, 3] += [0.3, 0.4, 0.0]
    figures = relocalization_figures(published[None], [101.0], stamps, poses)
    assert figures["relocalizations"] == 1
    assert figures["relocalization_error_m"] == pytest.approx(0.5)
    assert figures["relocalization_yaw_error_deg"] == pytest.approx(10.0)
    # Stamped with no frame of the drive (e.g. wall time): no error is claimed, the stamp is counted.
    figures = relocalization_figures(published[None], [1.7e9], stamps, poses)
    assert figures["relocalization_error_m"] is None and figures["relocalization_unknown_stamps"] == 1
    assert relocalization_figures(np.zeros((0, 4, 4)), [], stamps, poses)["relocalization_error_m"] is None
