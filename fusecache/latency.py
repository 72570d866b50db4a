"""Fixed-bucket latency histograms kept as plain ints (cheap enough for every FUSE request).

An observation is one `bisect` and three integer additions; a snapshot is JSON-ready and
becomes a Prometheus histogram (`_bucket`/`_sum`/`_count`) in cli/stats.py. Updates are not
locked: on the trio thread there is no race, and from worker threads a lost increment now
and then is an acceptable price for staying off a lock on the hot path.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

# Upper bounds in seconds: from a cached getattr (~50 µs) to a slow object store request.
BUCKETS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                              0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last slot: above the largest bound (+Inf)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def snapshot(self) -> dict[str, Any]:
        """Non-cumulative bucket counts (the last is +Inf only), count and sum."""
        return {"counts": list(self.counts), "count": self.count, "sum": self.sum}


class Histograms:
    """One histogram per key (a FUSE op, an object store method, ...)."""

    __slots__ = ("_by_key",)

    def __init__(self) -> None:
        self._by_key: dict[str, Histogram] = {}

    def observe(self, key: str, seconds: float) -> None:
        h = self._by_key.get(key)
        if h is None:
            h = self._by_key[key] = Histogram()
        h.observe(seconds)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {key: h.snapshot() for key, h in list(self._by_key.items())}


def total_seconds(snapshot: dict[str, dict[str, Any]]) -> float:
    return float(sum(h["sum"] for h in snapshot.values()))


def total_count(snapshot: dict[str, dict[str, Any]]) -> int:
    return int(sum(h["count"] for h in snapshot.values()))
