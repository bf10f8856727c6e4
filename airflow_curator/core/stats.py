"""A step's result figures in one shape (as datatrove's ``Stats``): its elapsed time, what it
counted, and rates named one way, so the report and the task logs read every step alike.

A result has ``seconds`` (wall time of the step), its counts (``records``, ``bytes``,
``shards``, ...) and, for the records and bytes it counted, ``records_per_s`` and ``mb_per_s``.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

Result = dict[str, Any]  # a step's JSON result: small, heterogeneous, what lands in XCom


def per_second(amount: float, seconds: float) -> float:
    return round(amount / max(seconds, 1e-9), 1)


class Stats:
    """Counts and elapsed time of one run of a step, from its creation."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.counts: Counter[str] = Counter()

    def update(self, **counts: int) -> None:
        """Add to named counts, e.g. ``update(records=n, bytes=size)``."""
        self.counts.update(counts)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def result(self, **fields: object) -> Result:
        """``fields``, then the counts, ``seconds``, ``records_per_s`` and ``mb_per_s`` (of the
        ``records`` and ``bytes`` among them)."""
        seconds = self.seconds
        out: Result = {**fields, **self.counts, "seconds": round(seconds, 3)}
        if isinstance(out.get("records"), int):
            out["records_per_s"] = per_second(out["records"], seconds)
        if isinstance(out.get("bytes"), int):
            out["mb_per_s"] = per_second(out["bytes"] / 1e6, seconds)
        return out
