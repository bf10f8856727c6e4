"""The dataset's metadata as a Dask DataFrame: one partition per shard, built from the manifest.

Partition i is shard i by construction (``dask.dataframe.from_map`` over the manifest's shards),
never by the sort order of two globs. Rows are sorted by id within a partition (as NeMo Curator
does) and indexed by their row number in the whole dataset, so the divisions are known and a
partition says which shard it came from even after Dask pushed a selection (``.partitions[i]``,
``tail``) below a ``map_partitions``. Columns keep their Arrow types (``pd.ArrowDtype``), so
embeddings, nullable integers and strings go back to Parquet exactly as they came.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Any

from airflow_curator.core.dataset.discovery import Manifest, Shard
from airflow_curator.core.dataset.metadata import check_ids, read_shard_ids
from airflow_curator.core.errors import DataError, ShardError, UsageError, preview
from airflow_curator.core.io import parquet

logger = logging.getLogger(__name__)


def footers(shards: list[Shard]) -> list[tuple[Any, int]]:
    """(Arrow schema without metadata, rows) of each shard's Parquet: one footer request
    each, all in flight together."""
    wants = [parquet.Want(s.parquet, s.stem, size=s.parquet_bytes) for s in shards]  # type: ignore[arg-type]
    return [
        (md.schema.to_arrow_schema().remove_metadata(), int(md.num_rows))
        for md in parquet.footers(wants)
    ]


def footer(shard: Shard) -> tuple[Any, int]:
    """(Arrow schema without metadata, rows) of the shard's Parquet: one footer read."""
    return footers([shard])[0]


def to_frame(table: Any, start: int = 0) -> Any:
    """A pandas frame of ``table`` with Arrow-backed columns, indexed from ``start``."""
    import pandas as pd

    frame = table.replace_schema_metadata(None).to_pandas(types_mapper=pd.ArrowDtype)
    frame.index = pd.RangeIndex(start, start + len(frame))
    return frame


def to_table(frame: Any) -> Any:
    """The frame's columns as an Arrow table (the index is the row number: not written)."""
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)


def with_columns(frame: Any, new: Any) -> Any:
    """``frame`` with ``new``'s columns: same-named ones replaced where they are (so a column
    annotated twice is there once, in its place), the others added at the end."""
    new = new.set_axis(frame.index, axis=0)
    return frame.assign(**{str(c): new[c] for c in new.columns})


def empty_columns(types: dict[str, Any]) -> Any:
    """An empty frame with these Arrow-typed columns (the ``meta`` of new columns)."""
    import pyarrow as pa

    return to_frame(pa.schema(list(types.items())).empty_table())


def conform(table: Any, schema: Any, shard: str) -> Any:
    """``table`` in the dataset's unified ``schema``: same column order, missing ones null."""
    import pyarrow as pa

    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            try:
                columns.append(column if column.type == field.type else column.cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise ShardError(shard, f"column {field.name!r} cannot be {field.type}: {e}") from e
        else:
            columns.append(pa.nulls(len(table), field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def read_partition(shard: Shard, start: int, rows: int, schema: Any, id_col: str) -> Any:
    """One shard's metadata rows, sorted by id, indexed by their row number in the dataset."""
    assert shard.parquet is not None
    table = parquet.read_table(shard.parquet, shard.stem, size=shard.parquet_bytes)
    if table.num_rows != rows:
        raise ShardError(
            shard.stem,
            f"{shard.parquet} has {table.num_rows} rows, {rows} when the dataset was opened: "
            "open it again",
        )
    if id_col not in table.column_names:
        raise ShardError(shard.stem, f"{shard.parquet} has no id column {id_col!r}")
    check_ids(table.column(id_col).to_pylist(), shard.stem, shard.parquet)
    table = conform(table.replace_schema_metadata(None), schema, shard.stem)
    return to_frame(table.sort_by(id_col), start)


@dataclass(frozen=True)
class ShardRows:
    """The dataset's shards in partition order and the row number each one starts at."""

    shards: tuple[Shard, ...]
    starts: tuple[int, ...]  # one more than shards: the last is the total

    def by_index(self, index: Any) -> Shard | None:
        """The shard whose rows the index values fall in, if they all fall in one."""
        lo, hi = int(index.min()), int(index.max())
        i = bisect.bisect_right(self.starts, lo) - 1
        if 0 <= i < len(self.shards) and hi < self.starts[i + 1]:
            return self.shards[i]
        return None

    def locate(self, partition: Any, id_col: str, number: int | None) -> Shard:
        """The shard a (non-empty) partition holds rows of: by its index (ours), else by its
        position (a frame the user built), checked against the shard's ids either way."""
        ids = {str(i) for i in partition[id_col]}
        tried = []
        for shard in (self.by_index(partition.index), self._at(number)):
            if shard is None or shard in tried:
                continue
            tried.append(shard)
            assert shard.parquet is not None
            shard_ids = read_shard_ids(shard.parquet, id_col, shard.stem, shard.parquet_bytes)[0]
            if ids <= set(shard_ids):
                return shard
        names = ", ".join(s.stem for s in tried) or "none"
        raise UsageError(
            f"a metadata partition ({len(ids)} rows, e.g. {preview(ids, 3)}) holds rows of no one "
            f"shard (tried {names}): keep one partition per shard and the index "
            "from_webdataset gives (no repartition or reset_index before an embedder)"
        )

    def _at(self, number: int | None) -> Shard | None:
        if number is None or not 0 <= number < len(self.shards):
            return None
        return self.shards[number]


def metadata_frame(manifest: Manifest, id_col: str) -> tuple[Any, ShardRows]:
    """The lazy metadata of every shard of ``manifest`` and where each shard's rows start.

    Reads each Parquet footer once (schema and row count); the rows are read on compute."""
    import dask.dataframe as dd
    import pyarrow as pa

    shards = list(manifest.shards)
    if not shards:  # e.g. a curated output that kept nothing: one empty partition
        empty = to_frame(pa.schema([pa.field(id_col, pa.string())]).empty_table())
        return dd.from_pandas(empty, npartitions=1), ShardRows((), (0,))
    found = footers(shards)
    try:
        schema = pa.unify_schemas([s for s, _ in found], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise DataError(f"{manifest.dataset}: the shards' metadata schemas differ: {e}") from e
    if id_col not in schema.names:
        raise UsageError(f"{manifest.dataset}: the metadata has no id column {id_col!r}")
    counts = [n for _, n in found]
    for shard, n in zip(shards, counts, strict=True):
        shard.records = n
    starts = [0]
    for n in counts:
        starts.append(starts[-1] + n)
    # known divisions need a row in every shard; the index still locates shards without them
    divisions: tuple[int | None, ...] = (None,) * (len(shards) + 1)
    if all(counts):
        divisions = (*starts[:-1], starts[-1] - 1)
    frame = dd.from_map(
        read_partition,
        shards,
        starts[:-1],
        counts,
        args=(schema, id_col),
        meta=to_frame(schema.empty_table()),
        divisions=divisions,
        label="metadata",
        enforce_metadata=False,
    )
    return frame, ShardRows(tuple(shards), tuple(starts))


def join_by_id(partition: Any, table: Any, id_col: str, shard: str, types: dict[str, Any]) -> Any:
    """``partition`` with ``table``'s columns (cast to ``types``) joined by id: every row must
    have one; rows the partition no longer holds are dropped."""
    import pyarrow as pa

    position = {str(rid): i for i, rid in enumerate(table.column(id_col).to_pylist())}
    ids = [str(rid) for rid in partition[id_col]]
    missing = [rid for rid in ids if rid not in position]
    if missing:
        raise ShardError(
            shard, f"{len(missing)} metadata rows have no embedding: {preview(missing)}"
        )
    picked = table.take(pa.array([position[rid] for rid in ids], pa.int64()))
    picked = picked.select(list(types)).cast(pa.schema(list(types.items())))
    return with_columns(partition, to_frame(picked))
