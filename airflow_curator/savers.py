"""What ``save_metadata`` and ``to_webdataset`` run per partition, on a Dask worker.

Each function gets one computed partition and its shard, and writes through the core's Parquet
layer (deterministic bytes, atomic, nothing rewritten that is unchanged). Kept at module level so
that Dask pickles a reference, not a closure.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow_curator.core.dataset.discovery import Shard
from airflow_curator.core.dataset.metadata import check_ids, read_shard_ids
from airflow_curator.core.dataset.save_metadata import Thresholds, join_annotations
from airflow_curator.core.errors import ShardError, preview
from airflow_curator.core.io import parquet, storage
from airflow_curator.frames import to_table

logger = logging.getLogger(__name__)


def save_partition(
    frame: Any,
    shard: Shard,
    dest: str,
    id_col: str,
    in_place: bool,
    thresholds: Thresholds,
    filter_column: str,
) -> dict[str, Any]:
    """Write one partition as ``dest``; in place, only if it still holds every record."""
    import pyarrow.compute as pc

    table = to_table(frame)
    if id_col in table.column_names:
        ids = check_ids(table.column(id_col).to_pylist(), shard.stem, "metadata")
        if in_place:
            assert shard.parquet is not None
            saved = read_shard_ids(shard.parquet, id_col, shard.stem, shard.parquet_bytes)[0]
            lost = set(saved) - set(ids)
            if lost:
                raise ShardError(
                    shard.stem,
                    f"the metadata lacks {len(lost)} of the shard's records ({preview(lost)}): "
                    "replacing its Parquet would lose them; save to another path, or filter "
                    "with to_webdataset",
                )
    passed = None
    if thresholds.any():
        mask = thresholds.mask(table, shard.stem)
        if filter_column in table.column_names:
            table = table.drop_columns([filter_column])
        table = table.append_column(filter_column, mask)
        passed = int(pc.sum(mask).as_py() or 0)
    parquet.write_table(dest, table)
    logger.info("shard %s: saved %d rows to %s", shard.stem, table.num_rows, dest)
    return {
        "shard": shard.stem,
        "records": table.num_rows,
        "passed": passed,
        "columns": table.column_names,
    }


def write_filter(frame: Any, shard: Shard, folder: str, id_col: str, filter_column: str) -> int:
    """Write the shard's saved metadata with ``filter_column`` from ``frame`` (ids and that
    column), joined by id, to ``folder``; a record missing from ``frame`` is not kept. Returns
    the number kept."""
    import pyarrow as pa

    values = to_table(frame)
    column = values.column(filter_column)
    if not pa.types.is_boolean(column.type):
        raise ShardError(
            shard.stem, f"filter column {filter_column!r} is {column.type}, not a boolean column"
        )
    ids = check_ids(values.column(id_col).to_pylist(), shard.stem, "metadata")
    kept = {rid for rid, keep in zip(ids, column.to_pylist(), strict=True) if keep}
    assert shard.parquet is not None
    base = parquet.read_table(shard.parquet, shard.stem, size=shard.parquet_bytes)
    base_ids = check_ids(base.column(id_col).to_pylist(), shard.stem, shard.parquet)
    unknown = set(ids) - set(base_ids)
    if unknown:
        raise ShardError(
            shard.stem, f"{len(unknown)} metadata rows are not its records: {preview(unknown)}"
        )
    flags = pa.table(
        {
            id_col: pa.array(base_ids, pa.string()),
            filter_column: pa.array([rid in kept for rid in base_ids], pa.bool_()),
        }
    )
    merged = join_annotations(base, flags, id_col, shard.stem)
    parquet.write_table(storage.join(folder, f"{shard.stem}.parquet"), merged)
    return len(kept)


def apply_top_fraction(
    shards: list[Shard],
    folder: str,
    results: list[dict[str, Any]],
    top: Thresholds,
    filter_column: str,
    *,
    with_filter: bool,
) -> dict[str, Any]:
    """AND the dataset-wide top-fraction CLIP-score filter into the saved shards (``results``'
    counts updated): the clip-threshold step's exact selection over the saved ``clip_score``
    columns, then each shard rewritten once. Returns the threshold's figures."""
    import dataclasses

    import pyarrow.compute as pc

    from airflow_curator.core.dataset.clip_threshold import read_scores, top_threshold

    files = [(s.stem, storage.join(folder, f"{s.stem}.parquet")) for s in shards]
    found = top_threshold(lambda: read_scores(files), top.clip_score_top_fraction or 1.0)
    resolved = dataclasses.replace(top, clip_score_top_threshold=found.threshold)
    for (stem, url), result in zip(files, results, strict=True):
        table = parquet.read_table(url, stem)
        mask = resolved.mask(table, stem)
        if with_filter and filter_column in table.column_names:
            mask = pc.and_(mask, pc.fill_null(table.column(filter_column), False))
        if filter_column in table.column_names:
            table = table.drop_columns([filter_column])
        table = table.append_column(filter_column, mask)
        parquet.write_table(url, table)
        result["passed"] = int(pc.sum(mask).as_py() or 0)
    return dataclasses.asdict(found)
