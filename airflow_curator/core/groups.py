"""Groups for mapped tasks: contiguous runs of shards (input or output) balanced by bytes, and
the small XCom value each mapped task receives, built one way for input shard groups, output
shard groups and cluster groups alike.

A group is ``{<key>: spec, "label": "<first>-<last>", "count": n, ...}``: ``key`` is the option
the step takes (``shards``, ``outputs``, ``clusters``), ``spec`` a compact selection such as
``0-3,7`` (``wds.shardspec``), the label what the Airflow UI shows of a mapped task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_curator.core.errors import UsageError
from airflow_curator.core.wds.shardspec import format_spec

MAX_GROUPS = 1024  # Airflow's default max_map_length
GROUP_BYTES = 4 << 30  # ~4 shards of 1 GB per mapped task amortises pod start and model load


def balanced_runs(
    sizes: Sequence[int], max_groups: int = MAX_GROUPS, group_bytes: int = GROUP_BYTES
) -> list[range]:
    """Contiguous index ranges over ``sizes`` balanced by size: at most ``max_groups``, each
    about ``group_bytes``, none empty."""
    if not sizes:
        return []
    if max_groups < 1:
        raise UsageError("max_groups must be >= 1")
    weights = [max(s, 1) for s in sizes]
    total = sum(weights)
    n = min(len(weights), max_groups, max(1, -(-total // max(group_bytes, 1))))
    runs: list[range] = []
    start = seen = 0
    for i, w in enumerate(weights):
        seen += w
        left_items = len(weights) - i - 1
        left_groups = n - len(runs) - 1
        # cut where the running total crosses the next equal share, keeping an item per group
        if left_groups > 0 and (seen * n >= total * (len(runs) + 1) or left_items == left_groups):
            runs.append(range(start, i + 1))
            start = i + 1
    if start < len(weights):
        runs.append(range(start, len(weights)))
    return runs


def label(first: str, last: str) -> str:
    """``00004-00007``, or ``00004`` for a group of one."""
    return first if first == last else f"{first}-{last}"


def group_value(
    key: str, numbers: Sequence[int], first: str, last: str, **extra: Any
) -> dict[str, Any]:
    """The XCom value of one group: its selection under ``key``, label, count and ``extra``."""
    return {key: format_spec(numbers), "label": label(first, last), "count": len(numbers), **extra}
