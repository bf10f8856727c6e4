"""Compact shard selections like ``0-99,120,130-131`` that keep XComs and argv short."""

from __future__ import annotations

from collections.abc import Iterable

from airflow_curator.core.errors import UsageError


def format_spec(ids: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    out: list[str] = []
    run: list[int] = []
    for i in sorted(set(ids)):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def parse_spec(spec: str | None) -> set[int] | None:
    """Shard numbers of a spec; None (all shards) for an empty spec or ``all``."""
    if spec is None or spec.strip() in ("", "all", "*"):
        return None
    ids: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise UsageError(f"invalid shard spec {spec!r}: {part!r} is not N or N-M") from None
        if a < 0 or b < a:
            raise UsageError(f"invalid shard spec {spec!r}: bad range {part!r}")
        ids.update(range(a, b + 1))
    return ids
