"""Where a job's files live, from its output URI (the layout the steps agree on).

For output ``O``: work files under ``O/_work`` (discovery ignores ``_`` names), the curated
dataset itself in ``O``. Tests check these against the core modules that write them.
"""

from __future__ import annotations

from airflow_curator.core.storage import join

WORK = "_work"


def work_url(output: str) -> str:
    return join(output, WORK)


def manifest_url(output: str) -> str:
    """The input dataset's manifest written by discover."""
    return join(output, WORK, "manifest.json")


def annotations_url(output: str) -> str:
    return join(output, WORK, "annotations")


def metadata_url(output: str) -> str:
    """Merged per-shard metadata (annotations joined in, filter column) written by save-metadata."""
    return join(output, WORK, "metadata")


def plan_url(output: str) -> str:
    return join(output, WORK, "reshard-plan.json")


def dedup_result_url(output: str) -> str:
    """Per-shard ``is_unique``/``duplicate_of`` from dedup-result (merged like annotations)."""
    return join(output, WORK, "dedup", "result")
