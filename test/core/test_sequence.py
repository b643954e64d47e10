"""Sequence verification (SeqSLAM-like) on hand-made match runs."""
import numpy as np
import pytest

from cmirl_ros.localization.sequence import SequenceConfig, SequenceVerifier, verify_sequence


def _xz(x, z=0.0, y=0.0):
    return np.array([x, y, z])


def test_confirms_after_n_consistent_steps_and_resets_on_a_jump():
    v = SequenceVerifier(SequenceConfig(length=3, tolerance_m=1.0), axes=(0, 2))
    # The query drives 2 m per step along z; its matches follow 2 m apart along x (another frame:
    # only distances count). y is KITTI's vertical and is ignored.
    assert not v.update(0.0, _xz(0, y=50), _xz(0))
    assert not v.update(1.0, _xz(2.5), _xz(0, 2))
    assert v.update(2.0, _xz(4), _xz(0, 4))
    assert v.update(3.0, _xz(6), _xz(0, 6))
    assert not v.update(4.0, _xz(90), _xz(0, 8))  # a look-alike 84 m away: rejected, new run starts
    assert not v.update(5.0, _xz(10), _xz(0, 10))  # back on track, but the run is 2 long again...
    assert not v.update(6.0, _xz(12), _xz(0, 12))  # 10 -> 12 agrees; 90 -> 10 did not
    assert v.update(7.0, _xz(14), _xz(0, 14))


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


def test_min_travel_refuses_a_standing_vehicle():
    v = SequenceVerifier(SequenceConfig(length=3, tolerance_m=1.0, min_travel_m=3.0))
    assert [v.update(t, _xz(5), _xz(0)) for t in range(4)] == [False] * 4
    assert SequenceVerifier(SequenceConfig(length=3)).update(0.0, _xz(5), _xz(0)) is False


def test_verify_sequence_batch_and_bad_config():
    stamps = np.arange(5.0)
    matches = np.stack([_xz(2 * i) for i in range(5)])
    accepted = verify_sequence(stamps, matches, np.array([True, True, True, False, True]),
                               odometry_positions=matches, config=SequenceConfig(length=2))
    assert list(accepted) == [False, True, True, False, False]
    with pytest.raises(ValueError, match="stamp order"):
        verify_sequence(stamps[::-1], matches, np.ones(5, bool))
    with pytest.raises(ValueError, match="length"):
        SequenceConfig(length=0)
