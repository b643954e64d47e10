"""Rolling figures the node reports in /diagnostics: answer rate, latency percentiles, recent errors."""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np


class RollingStats:
    """Answers over the last `window` seconds: rate (Hz) and latency percentiles (ms)."""

    def __init__(self, window: float = 10.0, clock=time.monotonic):
        self.window = window
        self._clock = clock
        self._events: deque[tuple[float, float, float, float]] = deque()  # (time, latency, stamp age, encode) ms
        self._lock = threading.Lock()
        self.total = 0

    def add(self, latency_ms: float, stamp_age_ms: float, encode_ms: float = float("nan")) -> None:
        with self._lock:
            now = self._clock()
            self._events.append((now, latency_ms, stamp_age_ms, encode_ms))
            self.total += 1
            self._expire(now)

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window:
            self._events.popleft()

    def summary(self) -> dict[str, float]:
        with self._lock:
            self._expire(self._clock())
            events = np.asarray(self._events, dtype=np.float64).reshape(-1, 4)
        span = events[-1, 0] - events[0, 0] if len(events) else 0.0
        summary = {"rate_hz": (len(events) - 1) / span if span > 0 else 0.0}
        for column, name in ((1, "latency_ms"), (2, "stamp_age_ms"), (3, "encode_ms")):
            for q in (50, 95):
                summary[f"{name}_p{q}"] = float(np.percentile(events[:, column], q)) if len(events) else float("nan")
        return summary


class RecentEvents:
    """How many events (e.g. failed queries) happened in the last `window` seconds: what the
    diagnostics level reflects, so that a transient failure does not keep it WARN for good."""

    def __init__(self, window: float = 10.0, clock=time.monotonic):
        self.window = window
        self._clock = clock
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self._times.append(self._clock())

    def count(self) -> int:
        with self._lock:
            now = self._clock()
            while self._times and self._times[0] < now - self.window:
                self._times.popleft()
            return len(self._times)


class Silence:
    """Seconds since a stream was last heard from (or since this was created): a dead sensor's measure."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._last = clock()

    def heard(self) -> None:
        self._last = self._clock()

    def seconds(self) -> float:
        return self._clock() - self._last
