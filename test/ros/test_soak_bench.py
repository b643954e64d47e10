"""`cmirl bench soak` figures: RSS sampling and growth, and the latest-only verdict (no node started)."""
from __future__ import annotations

import os

import pytest

from cmirl_ros.ros.soak_bench import RssSampler, latest_only_holds, rss_kib


def test_rss_growth_is_measured_from_the_first_sample_after_warmup():
    sampler = RssSampler(os.getpid(), every=5.0)
    sampler.samples = [(0.0, 1000), (5.0, 2000), (10.0, 2000), (15.0, 2010), (20.0, 2020)]
    growth = sampler.growth(warmup=5.0)
    assert growth["baseline_at_s"] == 5.0 and growth["last_at_s"] == 20.0
    assert growth["growth_percent"] == pytest.approx(1.0)
    assert growth["peak_mib"] == round(2020 / 1024, 1)


def test_sampler_samples_this_process_at_its_period(monkeypatch):
    import cmirl_ros.ros.soak_bench as soak

    clock = [100.0]
    monkeypatch.setattr(soak.time, "monotonic", lambda: clock[0])
    sampler = RssSampler(os.getpid(), every=5.0)
    for t in (100.0, 101.0, 104.9, 105.0, 109.0, 110.2):
        clock[0] = t
        sampler()
    assert [s[0] for s in sampler.samples] == [0.0, 5.0, 10.2]
    assert all(s[1] == pytest.approx(rss_kib(os.getpid()), rel=0.5) for s in sampler.samples)


def test_latest_only_verdict():
    soak = {"latency_ms_p95": 200.0}
    assert latest_only_holds(soak, {"dropped": 500, "latency_ms_p95": 350.0})
    assert not latest_only_holds(soak, {"dropped": 0, "latency_ms_p95": 150.0})  # nothing dropped: not overloaded
    assert not latest_only_holds(soak, {"dropped": 500, "latency_ms_p95": 4000.0})  # a queue built up
