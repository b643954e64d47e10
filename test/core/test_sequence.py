"""Sequence verification (SeqSLAM-like) on hand-made match runs."""
import numpy as np
import pytest

from cmirl_ros.localization.sequence import QueryStreamVerifier, SequenceConfig, SequenceVerifier, verify_ranked


def _xz(x, z=0.0, y=0.0):
    return np.array([x, y, z])


def test_confirms_after_n_consistent_steps_and_resets_on_a_jump():
    v = SequenceVerifier(SequenceConfig(length=3, tolerance_m=1.0, max_speed=3.0), axes=(0, 2))
    # The matches move 2 m per 1 s step along x; y is KITTI's vertical and is ignored.
    assert not v.update(0.0, _xz(0, y=50))
    assert not v.update(1.0, _xz(2.5))
    assert v.update(2.0, _xz(4))
    assert v.update(3.0, _xz(6))
    assert not v.update(4.0, _xz(90))  # a look-alike 84 m away: rejected, new run starts
    assert not v.update(5.0, _xz(10))  # back on track, but the run is 2 long again...
    assert not v.update(6.0, _xz(12))  # 10 -> 12 agrees; 90 -> 10 did not
    assert v.update(7.0, _xz(14))


def test_stamps_only_bound_by_speed():
    cfg = SequenceConfig(length=2, tolerance_m=1.0, max_speed=10.0)
    v = SequenceVerifier(cfg)
    assert not v.update(0.0, _xz(0))
    assert v.update(1.0, _xz(10.5))  # 10.5 <= 10 m/s * 1 s + 1 m
    assert not v.update(2.0, _xz(22))  # 11.5 m in 1 s: too fast
    assert v.update(2.5, _xz(22))  # standing still is plausible without odometry


def test_no_match_and_long_gap_start_a_new_sequence():
    v = SequenceVerifier(SequenceConfig(length=2, max_gap_s=2.0))
    assert not v.update(0.0, _xz(0))
    assert not v.update(1.0, None)
    assert not v.update(2.0, _xz(1))
    assert not v.update(10.0, _xz(1))  # 8 s gap
    assert v.update(11.0, _xz(1))


def _at(*positions):
    """(N,4,4) keyframe poses at these (x, z) positions."""
    poses = np.tile(np.eye(4), (len(positions), 1, 1))
    poses[:, :3, 3] = [_xz(x, z) for x, z in positions]
    return poses


def test_stream_stamps_only_confirms_the_top1_and_restarts_on_an_older_stamp():
    stream = QueryStreamVerifier(SequenceConfig(length=2, tolerance_m=1.0, max_speed=3.0))
    assert stream.update(0.0, _at((0, 0), (50, 0)), [0.8, 0.7]) == (None, pytest.approx(0.8))
    assert stream.update(1.0, _at((2, 0), (50, 0)), [0.6, 0.5]) == (0, pytest.approx(0.6))
    assert stream.update(2.0, np.zeros((0, 4, 4)), []) == (None, -np.inf)  # nothing retrieved: a new run
    assert stream.update(3.0, _at((4, 0)), [0.5])[0] is None
    assert stream.update(4.0, _at((6, 0)), [0.5])[0] == 0
    assert stream.update(0.5, _at((6, 0)), [0.5])[0] is None  # a replay started again: a new run


def test_verify_ranked_stamps_only_batch_and_bad_config():
    stamps = np.arange(5.0)
    keyframes = _at(*[(2 * i, 0) for i in range(5)])
    ranked = np.arange(5)[:, None]
    scores = np.array([[0.5], [0.5], [0.5], [-np.inf], [0.5]])
    picked, accepted, picked_scores = verify_ranked(stamps, ranked, scores, keyframes, None, SequenceConfig(length=2))
    assert list(picked) == list(range(5)) and list(accepted) == [False, True, True, False, False]
    assert list(picked_scores) == [0.5, 0.5, 0.5, -np.inf, 0.5]
    with pytest.raises(ValueError, match="stamp order"):
        verify_ranked(stamps[::-1], ranked, scores, keyframes, None)
    with pytest.raises(ValueError, match="length"):
        SequenceConfig(length=0)


# ------------------------------------------------------------------ PathVerifier (odometry poses, top-K)

def _pose(x, z, yaw_deg=0.0):
    """KITTI-like camera pose on the ground (x, z; y down): view direction (sin yaw, 0, cos yaw)."""
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    pose = np.eye(4)
    pose[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    pose[:3, 3] = [x, 0.0, z]
    return pose


# The query drives 5 m north, then turns east for 5 m. Its odometry frame is the map's turned by
# 40 degrees and shifted (only relative motion may count). A look-alike straight road elsewhere
# has the same 5 m spacing and scores higher at every step: only the turn tells them apart.
TRUE_PATH = [_pose(0, 0), _pose(0, 5), _pose(5, 5, 90)]
LOOK_ALIKE = [_pose(200, 0), _pose(200, 5), _pose(200, 10)]
ODOMETRY = [_pose(7, -3, 40) @ p for p in TRUE_PATH]


def _run(verifier, candidates, scores):
    return [verifier.update(float(t), candidates[t], scores[t], ODOMETRY[t]) for t in range(3)]


def test_path_picks_the_candidate_that_follows_the_turn_not_the_better_scored_look_alike():
    from cmirl_ros.localization.sequence import PathVerifier

    cfg = SequenceConfig(length=3, tolerance_m=1.0, tolerance_deg=20.0, candidates=2)
    candidates = [np.stack([LOOK_ALIKE[t], TRUE_PATH[t]]) for t in range(3)]
    scores = [np.array([0.9, 0.6])] * 3
    results = _run(PathVerifier(cfg, axes=(0, 2)), candidates, scores)
    assert results[0] == (None, -np.inf) and results[1] == (None, -np.inf)  # window not full yet
    index, path_score = results[2]
    assert index == 1 and path_score == pytest.approx(0.6)  # the second-ranked true keyframe, mean score 0.6
    # The look-alike alone (top-1 only) is refused: its straight road does not turn with the query.
    alone = _run(PathVerifier(SequenceConfig(length=3, tolerance_m=1.0, tolerance_deg=20.0), axes=(0, 2)),
                 [c[:1] for c in candidates], scores)
    assert alone[2] == (None, -np.inf)


def test_path_heading_tolerance_and_min_score():
    from cmirl_ros.localization.sequence import PathVerifier

    # The right places, but keyframes seen facing the other way (the street driven in reverse).
    reversed_views = [p @ _pose(0, 0, 180) for p in TRUE_PATH]
    one = lambda poses: [poses[t][None] for t in range(3)]  # noqa: E731
    scores = [np.array([0.7])] * 3
    assert _run(PathVerifier(SequenceConfig(length=3, tolerance_m=1.0, tolerance_deg=30.0)), one(reversed_views),
                scores)[2] == (None, -np.inf)
    # The reversed newest keyframe predicts the others behind it: 180 degrees (position only) still refuses it...
    assert _run(PathVerifier(SequenceConfig(length=3, tolerance_m=1.0)), one(reversed_views), scores)[2][0] is None
    # ... and the true views pass unless the path's mean score is below min_score.
    assert _run(PathVerifier(SequenceConfig(length=3, tolerance_m=1.0, tolerance_deg=30.0)), one(TRUE_PATH),
                scores)[2] == (0, pytest.approx(0.7))
    assert _run(PathVerifier(SequenceConfig(length=3, tolerance_m=1.0, min_score=0.8)), one(TRUE_PATH),
                scores)[2] == (None, pytest.approx(0.7))


def test_verify_ranked_with_odometry_min_travel_gap_and_missing_candidates():
    keyframes = np.stack([pose for t in range(3) for pose in (LOOK_ALIKE[t], TRUE_PATH[t])])  # ids 2t, 2t + 1
    ranked = np.tile(np.arange(6).reshape(3, 2), (2, 1))  # two drives of the same 3 queries
    scores = np.tile([0.9, 0.6], (6, 1))
    odometry = np.stack(ODOMETRY + [_pose(0, 100) @ p for p in ODOMETRY])
    stamps = np.arange(6.0)
    cfg = SequenceConfig(length=3, tolerance_m=1.0, tolerance_deg=20.0, candidates=2)

    def confirmed(stamps, scores, config, queries=6):
        return list(verify_ranked(stamps, ranked[:queries], scores, keyframes, odometry[:queries], config, (0, 2))[1])

    picked, accepted, path_scores = verify_ranked(stamps, ranked, scores, keyframes, odometry, cfg, axes=(0, 2))
    # The odometry jumps between the two drives (100 m in 1 s): the second drive's window mixes them until full again.
    assert list(accepted) == [False, False, True, False, False, True] and path_scores[2] == pytest.approx(0.6)
    assert picked[2] == picked[5] == 5  # the true keyframe, ranked second; unconfirmed queries keep their top-1
    assert list(picked[:2]) == [0, 2]
    travel = SequenceConfig(length=3, tolerance_m=1.0, candidates=2, min_travel_m=11.0)  # the drive covers 10 m
    assert confirmed(stamps[:3], scores[:3], travel, 3) == [False] * 3
    assert confirmed(np.array([0.0, 1.0, 9.0]), scores[:3], cfg, 3) == [False] * 3  # an 8 s pause (max_gap_s 5)
    missing = scores[:3].copy()
    missing[1] = -np.inf  # no candidate for the middle query: no match, new window
    assert confirmed(stamps[:3], missing, cfg, 3) == [False] * 3
    with pytest.raises(ValueError, match="candidates"):
        SequenceConfig(candidates=0)


def test_stream_with_odometry_needs_every_query_s_odometry_pose():
    cfg = SequenceConfig(length=3, tolerance_m=1.0, tolerance_deg=20.0, candidates=2)
    candidates = [np.stack([LOOK_ALIKE[t], TRUE_PATH[t]]) for t in range(3)]
    stream = QueryStreamVerifier(cfg, odometry=True, axes=(0, 2))
    assert [stream.update(float(t), candidates[t], [0.9, 0.6], ODOMETRY[t])[0] for t in range(3)] == [None, None, 1]
    assert stream.update(3.0, candidates[2], [0.9, 0.6], None) == (None, -np.inf)  # odometry lost: a new run
    assert stream.update(4.0, candidates[2], [0.9, 0.6], ODOMETRY[2])[0] is None


def test_path_needs_a_turn_and_a_unique_place_when_asked():
    from cmirl_ros.localization.sequence import PathVerifier

    scores = [np.array([0.6, 0.5])] * 3
    # A copy of the turning path 100 m east (a look-alike block that turns the same way) explains the
    # motion as well: the better-scored one wins, unless uniqueness is asked for.
    copy = [_pose(100, 0) @ p for p in TRUE_PATH]
    both = [np.stack([TRUE_PATH[t], copy[t]]) for t in range(3)]
    cfg = dict(length=3, tolerance_m=1.0, tolerance_deg=20.0, candidates=2)
    assert _run(PathVerifier(SequenceConfig(**cfg)), both, scores)[2][0] == 0
    assert _run(PathVerifier(SequenceConfig(**cfg, unique_m=30.0)), both, scores)[2][0] is None
    assert _run(PathVerifier(SequenceConfig(**cfg, unique_m=150.0)), both, scores)[2][0] == 0
    # The path turns 90 degrees: a 45-degree turn requirement passes it; a straight drive never does.
    assert _run(PathVerifier(SequenceConfig(**cfg, min_turn_deg=45.0)), both, scores)[2][0] == 0
    for min_turn, expected in ((0.0, [None, None, 0]), (45.0, [None] * 3)):
        straight = PathVerifier(SequenceConfig(length=3, tolerance_m=1.0, min_turn_deg=min_turn))
        assert [straight.update(float(t), LOOK_ALIKE[t][None], [0.9], LOOK_ALIKE[t])[0] for t in range(3)] == expected


def test_path_zscore_scores_each_query_against_its_own_candidates():
    from cmirl_ros.localization.sequence import PathVerifier

    far = [_pose(500, 500) for _ in range(3)]
    candidates = [np.stack([TRUE_PATH[t], far[t]]) for t in range(3)]
    scores = [np.array([0.6, 0.4]), np.array([0.9, 0.8]), np.array([0.3, 0.1])]
    cfg = dict(length=3, tolerance_m=1.0, candidates=2)
    assert _run(PathVerifier(SequenceConfig(**cfg)), candidates, scores)[2] == (0, pytest.approx(0.6))
    # z-scores over each query's two candidates: the true one is +1 everywhere, whatever the raw level.
    assert _run(PathVerifier(SequenceConfig(**cfg, zscore=True)), candidates, scores)[2] == (0, pytest.approx(1.0))
