"""Approximate time synchronisation of images with scans, and the latest-only hand-off to inference.

Pure Python (no rclpy), so both are unit-tested without a ROS graph; message_filters is not
available as a package here, and its ApproximateTime policy is more than one image stream plus
one scan stream need.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Stamped:
    stamp: float  # seconds, from the message header
    value: Any


class ImageScanSynchronizer:
    """Pairs each image with the scan nearest in stamp, if one lies within `slop` seconds.

    Streams are assumed to arrive in stamp order each. An image waits until a scan stamped at
    or after it has arrived (so no closer scan can still come), then is emitted with its nearest
    scan within slop, or alone (points None) when there is none: the localizer then answers from
    the image. A scan added with value None (unusable: rejected by the node) decides the timing
    like any scan but is never paired, so its image goes alone at once. Waiting images are
    bounded by `max_pending`; the oldest is emitted alone on overflow, so a dead scan stream
    delays images by at most `max_pending` frames.
    """

    def __init__(self, slop: float, emit: Callable[[Stamped, Stamped | None], None],
                 max_pending: int = 3, max_scans: int = 10):
        if slop < 0:
            raise ValueError(f"sync slop must be >= 0, got {slop}")
        self.slop = slop
        self._emit = emit
        self._images: deque[Stamped] = deque()
        self._scans: deque[Stamped] = deque(maxlen=max_scans)
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self.paired = 0
        self.unpaired = 0

    def add_image(self, stamp: float, image: Any) -> None:
        self._run(lambda: self._images.append(Stamped(stamp, image)))

    def add_scan(self, stamp: float, scan: Any) -> None:
        self._run(lambda: self._scans.append(Stamped(stamp, scan)))

    def _run(self, add: Callable[[], None]) -> None:
        with self._lock:
            add()
            ready = self._take_ready()
        for image, scan in ready:  # emit outside the lock: the callback may be slow
            self._emit(image, scan)

    def _take_ready(self) -> list[tuple[Stamped, Stamped | None]]:
        ready = []
        while self._images:
            image = self._images[0]
            newest_scan = self._scans[-1].stamp if self._scans else None
            decided = newest_scan is not None and newest_scan >= image.stamp
            if not decided and len(self._images) <= self._max_pending:
                break
            self._images.popleft()
            scan = self._nearest_scan(image.stamp)
            if scan is None:
                self.unpaired += 1
            else:
                self.paired += 1
            ready.append((image, scan))
        return ready

    def _nearest_scan(self, stamp: float) -> Stamped | None:
        usable = (s for s in self._scans if s.value is not None)
        best = min(usable, key=lambda s: abs(s.stamp - stamp), default=None)
        if best is None or abs(best.stamp - stamp) > self.slop:
            return None
        return best


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
