"""Where a job's files live, from its output URI: the one layout every step and operator uses.

For output ``O``: the curated dataset itself in ``O`` (shards, ``_manifest.json``, ``_SUCCESS``,
``report.html``), work files under ``O/_work`` (discovery ignores ``_`` names).
"""

from __future__ import annotations

from airflow_curator.core.io.storage import join

WORK = "_work"
SUCCESS = "_SUCCESS"
OUTPUT_MANIFEST = "_manifest.json"  # the curated dataset's manifest, written by commit
SIZES = "sizes.json"  # records per output tar, for open_clip's loader, written by commit
REPORT_NAME = "report.html"
RUN_NAME = "run.json"  # the DAG's run record (params, step results) the report draws from
PLAN_NAME = "reshard-plan.json"
CLIP_THRESHOLD = "clip-threshold.json"  # the run's top-fraction CLIP-score threshold
MARKERS = "reshard"  # O/_work/reshard/NNNNN.json: one per written output shard
LEASE_NAME = "lease.json"  # which run writes O now (core.io.lease)


def manifest_url(output: str) -> str:
    """The input dataset's manifest written by discover."""
    return join(output, WORK, "manifest.json")


def annotations_url(output: str) -> str:
    return join(output, WORK, "annotations")


def metadata_url(output: str) -> str:
    """Merged per-shard metadata (annotations joined in, filter column) written by save-metadata."""
    return join(output, WORK, "metadata")


def plan_url(output: str) -> str:
    return join(output, WORK, PLAN_NAME)


def markers_url(output: str) -> str:
    """The folder of reshard's per-shard markers."""
    return join(output, WORK, MARKERS)


def marker_url(output: str, name: str) -> str:
    return join(markers_url(output), f"{name}.json")


def dedup_url(output: str) -> str:
    return join(output, WORK, "dedup")


def dedup_result_url(output: str) -> str:
    """Per-shard ``is_unique``/``duplicate_of`` from dedup-result (merged like annotations)."""
    return join(dedup_url(output), "result")


def lease_url(output: str) -> str:
    """The output's lease: the run that writes the output shards now."""
    return join(output, WORK, LEASE_NAME)


def run_url(output: str) -> str:
    return join(output, WORK, RUN_NAME)


def clip_threshold_url(output: str) -> str:
    """The clip-threshold step's result, which save-metadata applies."""
    return join(output, WORK, CLIP_THRESHOLD)
