"""Per-shard Parquet metadata: read it and check its ids against the tar and each ``.json``."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from airflow_curator.core.errors import ShardError, preview
from airflow_curator.core.io import parquet
from airflow_curator.core.wds.records import Record

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

STATUS_COL = "status"  # img2dataset: success | failed_to_download | failed_to_resize
OK_STATUS = "success"


def failed_ids(table: pa.Table, id_col: str) -> set[str]:
    """Rows that legitimately have no tar members: img2dataset keeps one row per input URL and
    marks the ones it could not fetch with a ``status`` other than ``success``."""
    if STATUS_COL not in table.column_names:
        return set()
    ids = table.column(id_col).to_pylist()
    status = table.column(STATUS_COL).to_pylist()
    return {str(i) for i, s in zip(ids, status, strict=True) if s is not None and s != OK_STATUS}


def read_shard_ids(
    parquet_url: str, id_col: str, shard: str = "?", size: int | None = None
) -> tuple[list[str], set[str]]:
    """The checked id column and the ids of failed-download rows (see ``failed_ids``);
    ``size``: the file's size, when the manifest knows it."""
    read = parquet.load(parquet_url, shard, [], optional=(id_col, STATUS_COL), size=size)
    names = read.schema.names
    if id_col not in names:
        raise ShardError(
            shard, f"{parquet_url} has no id column {id_col!r} (columns: {', '.join(names)})"
        )
    table = read.table
    ids = check_ids(table.column(id_col).to_pylist(), shard, parquet_url)
    return ids, failed_ids(table, id_col)


def check_ids(ids: list[object], shard: str, source: str) -> list[str]:
    if any(i is None for i in ids):
        raise ShardError(shard, f"{source} has null ids")
    out = [str(i) for i in ids]
    if len(set(out)) != len(out):
        dups = {i for i, n in Counter(out).items() if n > 1}
        raise ShardError(shard, f"{source} has duplicate ids: {preview(dups)}")
    return out


def json_id(record: Record, id_col: str, shard: str) -> str | None:
    """The id inside a record's ``.json`` (None when the record has no .json)."""
    raw = record.data.get("json")
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise ShardError(shard, f"record {record.id}: .json is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or id_col not in meta:
        raise ShardError(shard, f"record {record.id}: .json has no {id_col!r} field")
    return str(meta[id_col])


def check_json_id(record: Record, id_col: str, shard: str) -> None:
    """The id inside the record's ``.json`` (when it has one) must be the record's own."""
    jid = json_id(record, id_col, shard)
    if jid is not None and jid != record.id:
        raise ShardError(shard, f"record {record.id}: .json says {id_col}={jid!r}")


def compare_ids(
    parquet_ids: Iterable[str],
    tar_ids: Iterable[str],
    shard: str,
    *,
    allowed_missing: Iterable[str] = (),
) -> None:
    """Fail naming the first offending ids unless both sides hold the same set.

    ``allowed_missing`` are Parquet rows that legitimately have no tar members (img2dataset's failed
    downloads); one of them that does have a record in the tar is an error too.
    """
    pq_set, tar_set, failed = set(parquet_ids), set(tar_ids), set(allowed_missing)
    only_tar = tar_set - pq_set
    only_pq = pq_set - tar_set - failed
    stale = failed & tar_set
    if only_tar:
        raise ShardError(
            shard, f"{len(only_tar)} records in the tar are not in the Parquet: {preview(only_tar)}"
        )
    if only_pq:
        raise ShardError(
            shard, f"{len(only_pq)} Parquet rows have no record in the tar: {preview(only_pq)}"
        )
    if stale:
        raise ShardError(shard, f"rows marked failed have records in the tar: {preview(stale)}")


def validate_shard(tar_url: str, parquet_url: str, id_col: str = "key", shard: str = "?") -> int:
    """Check Parquet ids == tar record ids == ids inside each .json; return the record count."""
    from airflow_curator.core.wds.records import iter_records

    pq_ids, failed = read_shard_ids(parquet_url, id_col, shard)
    tar_ids: list[str] = []
    for rec in iter_records(tar_url, shard):
        check_json_id(rec, id_col, shard)
        tar_ids.append(rec.id)
    compare_ids(pq_ids, tar_ids, shard, allowed_missing=failed)
    return len(tar_ids)
