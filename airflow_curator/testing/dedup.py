"""Run the dedup stage in-process over synthetic annotations, split into tasks as asked."""

from __future__ import annotations

import glob
import os

import pyarrow.parquet as pq

from airflow_curator.core.dedup.assign import assign_shards
from airflow_curator.core.dedup.dedup import dedup_clusters
from airflow_curator.core.dedup.fit import fit_centroids
from airflow_curator.core.dedup.result import write_results


def run_stage(
    output: str,
    *,
    shard_groups: list[str | None] = (None,),
    cluster_groups: list[str] | None = None,
    n_clusters: int = 8,
    parts: int = 4,
    eps: float = 0.01,
    block: int = 2048,
    seed: int = 0,
) -> dict:
    """fit -> assign per shard group -> dedup per cluster group -> result per shard group."""
    fit = fit_centroids(
        output, n_clusters=n_clusters, parts=parts, seed=seed, sample=10_000, device="cpu"
    )
    for spec in shard_groups:
        assign_shards(output, spec, device="cpu")
    groups = cluster_groups or [g["clusters"] for g in fit["groups"]]
    for spec in groups:
        dedup_clusters(output, spec, eps=eps, block=block, device="cpu")
    results = [write_results(output, spec) for spec in shard_groups]
    return {"fit": fit, "results": results}


def removed_ids(output: str, column: str = "is_unique") -> set[str]:
    out = set()
    for path in sorted(glob.glob(os.path.join(output, "_work", "dedup", "result", "*.parquet"))):
        t = pq.read_table(path)
        out |= {k for k, u in zip(t["key"].to_pylist(), t[column].to_pylist()) if not u}
    return out


def result_bytes(output: str) -> dict[str, bytes]:
    folder = os.path.join(output, "_work", "dedup", "result")
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}
