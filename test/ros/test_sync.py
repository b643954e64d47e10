"""Image/scan synchroniser, latest-only slot and rolling stats (pure Python, no ROS graph)."""
from __future__ import annotations

import threading
import time

import pytest

from cmirl_ros.ros.stats import RecentEvents, RollingStats
from cmirl_ros.ros.sync import ImageScanSynchronizer, LatestSlot


def collect(slop=0.05, **kw):
    pairs = []
    sync = ImageScanSynchronizer(slop, lambda image, scan: pairs.append((image.value, scan.value if scan else None)), **kw)
    return sync, pairs


def test_pairs_each_image_with_nearest_scan_within_slop():
    sync, pairs = collect()
    for k in range(5):  # scans lag images by 20 ms and arrive after them
        sync.add_image(k * 0.1, f"img{k}")
        sync.add_scan(k * 0.1 + 0.02, f"scan{k}")
    assert pairs == [(f"img{k}", f"scan{k}") for k in range(5)]
    assert (sync.paired, sync.unpaired) == (5, 0)


def test_image_waits_for_a_later_scan_before_deciding():
    sync, pairs = collect()
    sync.add_scan(0.00, "early")  # 40 ms before the image: within slop, but a closer one may come
    sync.add_image(0.04, "img")
    assert pairs == []
    sync.add_scan(0.05, "close")
    assert pairs == [("img", "close")]


def test_image_without_scan_in_slop_goes_alone():
    sync, pairs = collect(slop=0.01)
    sync.add_image(1.0, "img")
    sync.add_scan(1.5, "far")
    assert pairs == [("img", None)] and sync.unpaired == 1


def test_dead_scan_stream_delays_images_by_at_most_max_pending():
    sync, pairs = collect(max_pending=2)
    for k in range(5):
        sync.add_image(float(k), k)
    assert [p[0] for p in pairs] == [0, 1, 2]
    assert all(p[1] is None for p in pairs)


def test_unusable_scan_decides_at_once_and_is_never_paired():
    sync, pairs = collect()
    sync.add_image(1.0, "img")
    sync.add_scan(1.0, None)  # the node rejected this scan (e.g. all NaN)
    assert pairs == [("img", None)] and sync.unpaired == 1
    sync.add_scan(1.98, "usable")
    sync.add_image(2.0, "img2")
    sync.add_scan(2.0, None)  # an unusable scan closer in time does not beat a usable one within slop
    assert pairs[-1] == ("img2", "usable")


def test_negative_slop_is_an_error():
    with pytest.raises(ValueError):
        ImageScanSynchronizer(-1, lambda *a: None)


def test_latest_slot_keeps_only_the_newest_and_counts_drops():
    slot = LatestSlot()
    for k in range(10):
        slot.put(k)
    assert slot.get(timeout=0) == 9
    assert slot.dropped == 9 and slot.accepted == 10
    assert slot.get(timeout=0) is None


def test_latest_slot_wakes_consumer_and_close_ends_it():
    slot = LatestSlot()
    got = []

    def consume():
        while (item := slot.get()) is not None:
            got.append(item)
            time.sleep(0.05)  # slow consumer: producer outruns it

    worker = threading.Thread(target=consume)
    worker.start()
    for k in range(20):
        slot.put(k)
        time.sleep(0.005)
    time.sleep(0.1)
    slot.close()
    worker.join(timeout=2)
    assert not worker.is_alive()
    assert got[-1] == 19 and len(got) < 20
    assert slot.dropped + len(got) == 20


def test_rolling_stats_rate_and_percentiles():
    now = [0.0]
    stats = RollingStats(window=10.0, clock=lambda: now[0])
    for k in range(21):
        now[0] = k * 0.1
        stats.add(latency_ms=float(k), stamp_age_ms=2.0 * k, encode_ms=0.5 * k)
    summary = stats.summary()
    assert summary["rate_hz"] == pytest.approx(10.0)
    assert summary["latency_ms_p50"] == pytest.approx(10.0)
    assert summary["stamp_age_ms_p95"] == pytest.approx(38.0)
    assert summary["encode_ms_p50"] == pytest.approx(5.0)
    now[0] = 100.0
    assert stats.summary()["rate_hz"] == 0.0 and stats.total == 21


def test_recent_events_forget_what_is_older_than_the_window():
    now = [0.0]
    errors = RecentEvents(window=5.0, clock=lambda: now[0])
    errors.add()
    now[0] = 4.0
    errors.add()
    assert errors.count() == 2
    now[0] = 6.0
    assert errors.count() == 1
    now[0] = 9.5
    assert errors.count() == 0
