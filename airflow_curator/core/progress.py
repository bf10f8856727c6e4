"""Progress lines for task logs: done/total and throughput, at most every few seconds."""

from __future__ import annotations

import logging
import time


class Progress:
    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "shards",
        logger: logging.Logger | None = None,
        every: float = 5.0,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.logger = logger or logging.getLogger("airflow_curator.progress")
        self.every = every
        self.done = 0
        self.items = 0
        self.bytes = 0
        self.t0 = time.perf_counter()
        self.last = self.t0

    def update(self, n: int = 1, *, items: int = 0, nbytes: int = 0) -> None:
        self.done += n
        self.items += items
        self.bytes += nbytes
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            self.logger.info("%s", self.line())

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def line(self) -> str:
        dt = max(self.seconds, 1e-9)
        parts = [f"{self.label}: {self.done}/{self.total} {self.unit}"]
        if self.items:
            parts.append(f"{self.items} records, {self.items / dt:.1f} records/s")
        if self.bytes:
            parts.append(f"{self.bytes / 1e6 / dt:.1f} MB/s")
        parts.append(f"{dt:.1f}s")
        return ", ".join(parts)
