"""Assign each record to its nearest centroid: the shuffle between shard tasks and cluster tasks.

Per input shard, reads the annotation file's id, image embedding and aesthetic score, skips
records without an embedding (failed images), and writes ``assign/NNNNN.parquet`` sorted by
cluster with one row group per part, so a dedup task reads only its part's row groups from each
file. The output depends on the shard alone (never on how shards were grouped into tasks) and
carries the centroids' digest, so dedup refuses assignments made with other centroids.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from airflow_curator.core.dedup import store
from airflow_curator.core.dedup.fit import Centroids, load_centroids, nearest, normalise
from airflow_curator.core.device import pick_device
from airflow_curator.core.errors import ShardError
from airflow_curator.core.io import parquet
from airflow_curator.core.progress import Progress
from airflow_curator.core.stats import Result, Stats

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_curator.core.dedup.store import Matrix

logger = logging.getLogger(__name__)


def read_annotations(
    url: str, shard: str, id_col: str, dim: int | None = None
) -> tuple[pa.Array, Matrix, Matrix]:
    """``(ids, embeddings, aesthetic)`` of the records that have an embedding: a pyarrow string
    array, a ``(n, dim)`` unit float32 array, and float32 with NaN for a missing score."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = [id_col, store.EMBEDDING]
    table = parquet.read_table(url, shard, wanted, optional=(store.AESTHETIC,))
    ids = table.column(id_col)
    if ids.null_count:
        raise ShardError(shard, f"{url}: {ids.null_count} records have no {id_col}")
    emb = table.column(store.EMBEDDING)
    valid = pc.is_valid(emb)
    table = table.filter(valid)
    x = store.to_matrix(table.column(store.EMBEDDING), shard)
    if dim is not None and len(x) and x.shape[1] != dim:
        raise ShardError(shard, f"embeddings have {x.shape[1]} dimensions, the centroids {dim}")
    if store.AESTHETIC in table.column_names:
        score = table.column(store.AESTHETIC).cast(pa.float32()).to_numpy(zero_copy_only=False)
        aesthetic = np.asarray(score, dtype=np.float32)
    else:
        aesthetic = np.full(len(x), np.nan, dtype=np.float32)
    return table.column(id_col).cast(pa.string()).combine_chunks(), normalise(x), aesthetic


def assign_table(
    number: int, ids: pa.Array, x: Matrix, aesthetic: Matrix, cent: Centroids, device: str
) -> tuple[pa.Table, list[int]]:
    """The shard's assign table sorted by cluster, and its row-group sizes (rows per part)."""
    import numpy as np
    import pyarrow as pa

    labels, _ = nearest(x, cent.vectors, device) if len(x) else (np.zeros(0, np.int32), None)
    order = np.argsort(labels, kind="stable")
    labels = labels[order]
    table = pa.table({
        "shard": pa.array(np.full(len(x), number, dtype=np.int32)),
        "id": ids.take(pa.array(order)),
        "cluster": pa.array(labels, pa.int32()),
        "aesthetic": pa.array(aesthetic[order], pa.float32(), from_pandas=True),
        "embedding": store.fixed_list(x[order] if len(x) else np.zeros((0, cent.dim)), cent.dim),
    })  # fmt: skip
    sizes = np.bincount(cent.parts.part_of(labels), minlength=cent.parts.count)
    return table, [int(s) for s in sizes]


def assign_shards(
    output: str,
    shards: str | None = None,
    *,
    annotations: str | None = None,
    id_col: str = "key",
    device: str = "auto",
) -> Result:
    """Write ``assign/NNNNN.parquet`` for the selected shards' annotation files."""
    stats = Stats()
    cent = load_centroids(output)
    device = pick_device(device)
    files = store.annotation_files(output, annotations, shards)
    progress = Progress("dedup-assign", len(files), logger=logger)
    per_shard: list[Result] = []
    for number, shard, url in files:
        ids, x, aesthetic = read_annotations(url, shard, id_col, cent.dim)
        table, sizes = assign_table(number, ids, x, aesthetic, cent, device)
        meta = {"centroids": cent.digest, "parts": cent.parts.count, "source": url}
        store.write_file(store.file_url(output, "assign", shard), table, meta, sizes)
        per_shard.append({"shard": shard, "records": len(x)})
        progress.update(items=len(x))
    return stats.result(
        output=output,
        assign=store.folder_url(output, "assign"),
        shards=len(per_shard),
        records=sum(s["records"] for s in per_shard),
        per_shard=per_shard,
    )
