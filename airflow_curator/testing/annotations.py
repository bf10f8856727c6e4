"""Synthetic annotation files with planted near-duplicates, for dedup tests and benchmarks.

Records are noisy copies of a few random directions (so k-means has clusters to find, and two
ordinary records of one direction have a cosine similarity near 0.5); a planted duplicate is a
record from the same or the previous shard plus a little noise (similarity near 0.999). Some
records have no embedding (a failed image) or no aesthetic score. Written in the annotate step's
layout: ``NNNNN.parquet`` with the id column, ``image_embedding`` and ``aesthetic_score``.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any

from airflow_curator.core.io import storage
from airflow_curator.core.wds.naming import record_id

logger = logging.getLogger(__name__)


@dataclass
class Planted:
    """The planted duplicate pairs ``(kept, removed)`` under the keep rule, and failed ids."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    records: int = 0


def _unit(x: Any) -> Any:
    import numpy as np

    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _ranks_before(a: tuple[float | None, str], b: tuple[float | None, str]) -> bool:
    """True when record ``a`` (score, id) is kept over ``b``: higher score, then lower id."""
    sa = a[0] if a[0] is not None else float("-inf")
    sb = b[0] if b[0] is not None else float("-inf")
    return (sa, _neg(a[1])) > (sb, _neg(b[1]))


def _neg(rid: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in rid)


def write_synthetic_annotations(
    folder: str,
    shards: int = 2,
    records_per_shard: int = 100,
    *,
    dim: int = 32,
    centers: int = 8,
    dup_fraction: float = 0.1,
    dup_noise: float = 0.05,
    failed_fraction: float = 0.02,
    null_score_fraction: float = 0.05,
    seed: int = 0,
    id_col: str = "key",
) -> Planted:
    """Write ``shards`` annotation files into ``folder``; return the planted pairs."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    directions = _unit(rng.standard_normal((centers, dim)))
    planted = Planted()
    previous: tuple[Any, list[str], list[float | None]] | None = None
    involved: set[str] = set()  # ids in a planted pair: each record in at most one
    dead: set[str] = set()
    for s in range(shards):
        n = records_per_shard
        srng = np.random.default_rng([seed, s])
        ids = [record_id(s, i) for i in range(n)]
        which = srng.integers(0, centers, n)
        x = _unit(
            directions[which] + srng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
        )
        raw = srng.uniform(3.0, 8.0, n).astype(np.float32)
        scores: list[float | None] = [
            None if srng.random() < null_score_fraction else float(v) for v in raw
        ]
        failed = srng.random(n) < failed_fraction
        copies = np.flatnonzero(srng.random(n) < dup_fraction)
        for i in copies:
            src_shard = s - 1 if previous is not None and srng.random() < 0.5 else s
            pool_x, pool_ids, pool_scores = previous if src_shard != s else (x, ids, scores)
            j = int(srng.integers(0, len(pool_ids)))
            if failed[i] or pool_ids[j] in involved or ids[i] in involved or pool_ids[j] in dead:
                continue
            if src_shard == s and (failed[j] or j in copies):
                continue
            involved.update((pool_ids[j], ids[i]))
            noise = srng.standard_normal(dim).astype(np.float32) / np.sqrt(dim)
            x[i] = _unit(pool_x[j] + dup_noise * noise)
            a, b = (pool_scores[j], pool_ids[j]), (scores[i], ids[i])
            planted.pairs.append((a[1], b[1]) if _ranks_before(a, b) else (b[1], a[1]))
        planted.failed += [ids[i] for i in np.flatnonzero(failed)]
        dead = {ids[i] for i in np.flatnonzero(failed)}
        planted.records += n
        flat = pa.array(x.reshape(-1), pa.float32())
        emb = pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(failed))
        table = pa.table({
            id_col: pa.array(ids, pa.string()),
            "image_embedding": emb,
            "aesthetic_score": pa.array(
                [None if f else v for f, v in zip(failed, scores)], pa.float32()
            ),
            "error": pa.array(["decode failed" if f else None for f in failed], pa.string()),
        })  # fmt: skip
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(storage.join(folder, f"{s:05d}.parquet"), buf.getvalue())
        previous = (x, ids, [None if f else v for f, v in zip(failed, scores)])
    logger.info("%d synthetic annotation files, %d planted pairs", shards, len(planted.pairs))
    return planted
