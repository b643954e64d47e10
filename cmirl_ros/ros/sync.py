"""Approximate time synchronisation of images with scans, and the latest-only hand-off to inference.

Pure Python (no rclpy), so both are unit-tested without a ROS graph; message_filters is not
available as a package here. The synchroniser follows its ApproximateTimeSynchronizer for two
topics (image, scan).
"""
from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(order=True)
class Stamped:
    stamp: float  # seconds, from the message header
    value: Any = field(compare=False)


class ImageScanSynchronizer:
    """Image + scan sets with message_filters' ApproximateTimeSynchronizer semantics.

    - Complete sets only: an image is emitted with a scan within `slop` seconds, never alone; an
      image that can have no partner is dropped (counted in `dropped_images`).
    - Each message used once: a scan emitted in a set leaves the queue with every older scan.
    - Out-of-order tolerant: each topic keeps a queue of its `queue_size` most recent messages,
      sorted by stamp; a message older than the last set emitted is dropped (counted in `late`).
    - A set is emitted once it is known to be the best one: the scan is the image's nearest and
      a scan stamped at or after the image has arrived (no closer one can come); when the scan is
      later than the image, an image stamped at or after the scan has arrived too (no later image
      can be closer to it). A later image that is closer to the scan takes it: the earlier image
      is dropped.
    A scan added with value None (unusable: rejected by the node) takes part in the matching but
    its set is not emitted: the image is dropped at once (counted in `unusable_sets`) instead of
    waiting for a partner.
    """

    def __init__(self, slop: float, emit: Callable[[Stamped, Stamped], None], queue_size: int = 10):
        if slop < 0:
            raise ValueError(f"sync slop must be >= 0, got {slop}")
        if queue_size < 1:
            raise ValueError(f"sync queue size must be >= 1, got {queue_size}")
        self.slop = slop
        self._emit = emit
        self._queue_size = queue_size
        self._images: list[Stamped] = []
        self._scans: list[Stamped] = []
        self._last_set = float("-inf")  # stamp of the last emitted set's image
        self._lock = threading.Lock()
        self.paired = 0
        self.dropped_images = 0
        self.dropped_scans = 0
        self.unusable_sets = 0
        self.late = 0

    @property
    def unpaired(self) -> int:
        """Images that were not answered with a scan."""
        return self.dropped_images + self.unusable_sets

    def add_image(self, stamp: float, image: Any) -> None:
        self._run(self._images, Stamped(stamp, image))

    def add_scan(self, stamp: float, scan: Any) -> None:
        self._run(self._scans, Stamped(stamp, scan))

    def _run(self, queue: list[Stamped], message: Stamped) -> None:
        with self._lock:
            self._insert(queue, message)
            ready = self._take_ready()
        for image, scan in ready:  # emit outside the lock: the callback may be slow
            self._emit(image, scan)

    def _insert(self, queue: list[Stamped], message: Stamped) -> None:
        if message.stamp <= self._last_set - self.slop or (queue is self._images and message.stamp <= self._last_set):
            self.late += 1
            if queue is self._images:
                self.dropped_images += 1
            return
        bisect.insort(queue, message)
        if len(queue) > self._queue_size:  # the oldest goes: it had its chance
            del queue[0]
            if queue is self._images:
                self.dropped_images += 1
            else:
                self.dropped_scans += 1

    def _take_ready(self) -> list[tuple[Stamped, Stamped]]:
        ready = []
        while self._images and self._scans:
            image = self._images[0]
            if self._scans[-1].stamp < image.stamp:
                break  # a closer scan may still come
            scan = min(self._scans, key=lambda s: abs(s.stamp - image.stamp))
            gap = abs(scan.stamp - image.stamp)
            later_images = self._images[1:]
            if gap > self.slop or any(abs(i.stamp - scan.stamp) < gap for i in later_images):
                self._images.pop(0)  # no partner, or a later image is the scan's better one
                self.dropped_images += 1
                continue
            if scan.stamp > image.stamp and (not later_images or later_images[-1].stamp < scan.stamp):
                break  # a later image could still be closer to this scan
            self._images.pop(0)
            used = self._scans.index(scan)
            self.dropped_scans += used
            del self._scans[:used + 1]
            self._last_set = image.stamp
            if scan.value is None:
                self.unusable_sets += 1
                continue
            self.paired += 1
            ready.append((image, scan))
        return ready


class LatestSlot:
    """A one-item hand-off between the executor thread and the inference thread.

    `put` replaces a waiting item (counted in `dropped`): inference always takes the newest
    input and the backlog can never grow. `get` blocks until an item arrives or `close` is called
    (then returns None).
    """

    def __init__(self):
        self._item = None
        self._has_item = False
        self._closed = False
        self._condition = threading.Condition()
        self.dropped = 0
        self.accepted = 0

    def put(self, item: Any) -> None:
        with self._condition:
            if self._has_item:
                self.dropped += 1
            self._item, self._has_item = item, True
            self.accepted += 1
            self._condition.notify()

    def get(self, timeout: float | None = None) -> Any:
        with self._condition:
            self._condition.wait_for(lambda: self._has_item or self._closed, timeout)
            if not self._has_item:
                return None
            item, self._item, self._has_item = self._item, None, False
            return item

    def count_dropped(self) -> None:
        """The consumer discarded an item it had taken (for a newer one): count it like a replacement."""
        with self._condition:
            self.dropped += 1

    def clear(self) -> None:
        with self._condition:
            if self._has_item:
                self.dropped += 1
            self._item, self._has_item = None, False

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
