"""Image/scan synchroniser, latest-only slot and rolling stats (pure Python, no ROS graph)."""
from __future__ import annotations

import threading
import time

import pytest

from cmirl_ros.ros.stats import RecentEvents, RollingStats
from cmirl_ros.ros.sync import ImageScanSynchronizer, LatestSlot


def collect(slop=0.05, **kw):
    pairs = []
    sync = ImageScanSynchronizer(slop, lambda image, scan: pairs.append((image.value, scan.value)), **kw)
    return sync, pairs


def test_pairs_each_image_with_nearest_scan_within_slop():
    sync, pairs = collect()
    for k in range(5):  # scans lag images by 20 ms and arrive after them
        sync.add_image(k * 0.1, f"img{k}")
        sync.add_scan(k * 0.1 + 0.02, f"scan{k}")
    # The last set waits for the next image: a later image could still be closer to scan4.
    assert pairs == [(f"img{k}", f"scan{k}") for k in range(4)]
    sync.add_image(0.5, "img5")
    assert pairs == [(f"img{k}", f"scan{k}") for k in range(5)]
    assert (sync.paired, sync.unpaired, sync.dropped_scans) == (5, 0, 0)


def test_image_waits_for_a_later_scan_before_deciding():
    sync, pairs = collect()
    sync.add_scan(0.00, "early")  # 40 ms before the image: within slop, but a closer one may come
    sync.add_image(0.04, "img")
    assert pairs == []
    sync.add_scan(0.04, "same")
    assert pairs == [("img", "same")] and sync.dropped_scans == 1  # the earlier scan is not used later


def test_image_without_scan_in_slop_is_dropped_not_sent_alone():
    sync, pairs = collect(slop=0.01)
    sync.add_image(1.0, "img")
    sync.add_scan(1.5, "far")
    assert pairs == [] and sync.dropped_images == 1 and sync.unpaired == 1


def test_dead_scan_stream_emits_nothing_and_bounds_the_queue():
    sync, pairs = collect(queue_size=2)
    for k in range(5):
        sync.add_image(float(k), k)
    assert pairs == [] and sync.dropped_images == 3
    sync.add_scan(4.0, "scan")  # the stream comes back: the newest image pairs
    assert pairs == [(4, "scan")]


def test_each_scan_is_used_once():
    sync, pairs = collect(slop=0.5)
    sync.add_scan(1.0, "scan")
    sync.add_image(1.0, "img1")
    sync.add_image(1.1, "img2")  # within slop of the same scan: not paired again
    sync.add_scan(2.0, "next")
    assert pairs == [("img1", "scan")] and sync.dropped_images == 1


def test_a_later_image_closer_to_the_scan_takes_it():
    sync, pairs = collect(slop=0.05)
    sync.add_image(0.00, "early")
    sync.add_scan(0.04, "scan")  # 40 ms after the first image: it waits for the next one
    assert pairs == []
    sync.add_image(0.05, "close")
    assert sync.dropped_images == 1  # "early" can have no partner left
    sync.add_scan(0.10, "next")  # now no scan closer to "close" can come
    assert pairs == [("close", "scan")]


def test_out_of_order_arrivals_pair_by_stamp():
    sync, pairs = collect(slop=0.02)
    sync.add_image(0.2, "img2")
    sync.add_image(0.1, "img1")  # arrives after a newer image
    sync.add_scan(0.1, "scan1")
    sync.add_scan(0.2, "scan2")
    assert pairs == [("img1", "scan1"), ("img2", "scan2")]
    sync.add_image(0.15, "stale")  # older than a set already emitted
    assert sync.late == 1 and len(pairs) == 2


def test_unusable_scan_drops_its_image_at_once():
    sync, pairs = collect()
    sync.add_image(1.0, "img")
    sync.add_scan(1.0, None)  # the node rejected this scan (e.g. all NaN)
    assert pairs == [] and sync.unusable_sets == 1 and sync.unpaired == 1
    sync.add_image(2.0, "img2")
    sync.add_scan(2.0, "usable")
    assert pairs == [("img2", "usable")]


def test_negative_slop_is_an_error():
    with pytest.raises(ValueError):
        ImageScanSynchronizer(-1, lambda *a: None)
    with pytest.raises(ValueError):
        ImageScanSynchronizer(0.1, lambda *a: None, queue_size=0)


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
