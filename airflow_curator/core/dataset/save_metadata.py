"""Save metadata: join annotations into each shard's Parquet by record id, atomically.

Every record must have exactly one annotation and every annotation a record; anything else is an
error naming the shard and the ids (NeMo Curator 0.x matched them by sorted position). Optional
thresholds (``core.dataset.thresholds``) write a boolean filter column for ``plan-reshard``.
The Parquet is written deterministically (explicit schema, zstd, one row group), so a rerun
writes the same bytes, and replaced in place by rename when no ``path`` is given.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from airflow_curator.core.dataset.discovery import Manifest, Shard, shards_of
from airflow_curator.core.dataset.metadata import check_ids
from airflow_curator.core.dataset.thresholds import Funnel, Thresholds, add_funnels, funnel
from airflow_curator.core.errors import ShardError, UsageError, preview
from airflow_curator.core.io import parquet, storage
from airflow_curator.core.progress import Progress
from airflow_curator.core.stats import Result, Stats

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

META_KEY = b"airflow_curator.save_metadata"  # the filter column save-metadata wrote, and how
INPUT_SUFFIX = "_input"  # the input's own filter column, kept beside the one written


def join_annotations(base: pa.Table, annotations: pa.Table, id_col: str, shard: str) -> pa.Table:
    """``base`` with the annotation columns (replacing same-named ones), joined by id."""
    import pyarrow as pa

    if id_col not in annotations.column_names:
        raise ShardError(shard, f"annotations have no id column {id_col!r}")
    base_ids = check_ids(base.column(id_col).to_pylist(), shard, "metadata")
    ann_ids = check_ids(annotations.column(id_col).to_pylist(), shard, "annotations")
    position = {rid: i for i, rid in enumerate(ann_ids)}
    unannotated = [rid for rid in base_ids if rid not in position]
    if unannotated:
        raise ShardError(
            shard, f"{len(unannotated)} records have no annotation: {preview(unannotated)}"
        )
    if len(ann_ids) != len(base_ids):
        known = set(base_ids)
        orphans = [rid for rid in ann_ids if rid not in known]
        raise ShardError(shard, f"{len(orphans)} annotations match no record: {preview(orphans)}")
    ordered = annotations.take(pa.array([position[r] for r in base_ids], pa.int64()))
    new_columns = [c for c in ordered.column_names if c != id_col]
    out = base.drop_columns([c for c in new_columns if c in base.column_names])
    for c in new_columns:
        out = out.append_column(ordered.schema.field(c), ordered.column(c))
    return out


def filter_marker(schema: pa.Schema) -> dict[str, Any]:
    """What save-metadata recorded about the filter column it wrote into this Parquet."""
    raw = (schema.metadata or {}).get(META_KEY)
    return json.loads(raw) if raw else {}


def merge_shard(
    base: pa.Table,
    annotations: pa.Table | list[pa.Table] | None,
    *,
    id_col: str,
    shard: str,
    columns: list[str] | None = None,
    thresholds: Thresholds = Thresholds(),
    filter_column: str = "passes_curation",
    counts: Funnel | None = None,
) -> pa.Table:
    """The shard's merged metadata table: join, filter column, column subset.

    A filter column the input already has and that save-metadata did not write (the user's own
    labels) is never replaced: it is kept as ``<filter_column>_input`` and ANDed with the
    thresholds. One that save-metadata wrote (marked in the Parquet's metadata) is recomputed,
    so a pass with looser thresholds does not inherit an earlier pass's cuts. The table's
    schema metadata says what was done (``filter_marker``). ``counts`` receives the funnel:
    what each filter removed, alone and in sequence."""
    if id_col not in base.column_names:
        raise ShardError(shard, f"metadata has no id column {id_col!r}")
    sources = (
        []
        if annotations is None
        else annotations
        if isinstance(annotations, list)
        else [annotations]
    )
    table = base
    for ann in sources:  # e.g. the model scores, then the dedup result
        table = join_annotations(table, ann, id_col, shard)
    with_filter = bool(sources) or thresholds.any()
    earlier = filter_marker(base.schema)
    # no new filter: the column an earlier pass wrote stays marked as save-metadata's
    marker: dict[str, Any] = earlier if earlier.get("column") in table.column_names else {}
    if with_filter:
        import pyarrow as pa
        import pyarrow.compute as pc

        conditions = thresholds.conditions(table, shard)
        mask = pa.array([True] * table.num_rows, pa.bool_())
        for _, cond in conditions:
            mask = pc.and_(mask, cond)
        own = earlier.get("column") == filter_column
        input_column = earlier.get("input_column") if own else None
        if not own and filter_column in table.column_names:
            input_column = f"{filter_column}{INPUT_SUFFIX}"
            if input_column in table.column_names:
                raise UsageError(
                    f"shard {shard}: the metadata has its own {filter_column!r} and already "
                    f"a {input_column!r}: choose another --filter-column"
                )
            table = table.append_column(input_column, table.column(filter_column))
        if input_column is not None:
            values = table.column(input_column)
            if not pa.types.is_boolean(values.type):
                raise UsageError(
                    f"shard {shard}: the metadata's own column {filter_column!r} is "
                    f"{values.type}, not bool: choose another --filter-column"
                )
            mask = pc.and_(mask, pc.fill_null(values, False))
            conditions.append((input_column, pc.fill_null(values, False)))
        if counts is not None:
            counts.update(funnel(conditions))
        if filter_column in table.column_names:
            table = table.drop_columns([filter_column])
        table = table.append_column(filter_column, mask)
        marker = {"column": filter_column, "thresholds": thresholds.as_dict()}
        if input_column is not None:
            marker["input_column"] = input_column
    if columns is not None:
        unknown = [c for c in columns if c not in table.column_names]
        if unknown:
            raise UsageError(
                f"shard {shard}: unknown columns {', '.join(unknown)} "
                f"(columns: {', '.join(table.column_names)})"
            )
        keep = [id_col] + [c for c in columns if c != id_col]
        for c in (filter_column, marker.get("input_column")) if with_filter else ():
            if c is not None and c not in keep:
                keep.append(c)
        table = table.select(keep)
        if marker.get("column") not in keep:
            marker = {}
    meta = {META_KEY: json.dumps(marker, sort_keys=True).encode()} if marker else None
    return table.replace_schema_metadata(meta)


def save_metadata(
    dataset: str,
    *,
    annotations: str | list[str] | None = None,
    path: str | None = None,
    columns: list[str] | None = None,
    id_col: str = "key",
    thresholds: Thresholds = Thresholds(),
    filter_column: str = "passes_curation",
    shards: str | None = None,
    workers: int = 8,
    clip_threshold: str | None = None,
    manifest: Manifest | str | None = None,
) -> Result:
    """Merge and write each selected shard's metadata to ``path`` (default: in place).

    ``annotations`` is one folder of ``NNNNN.parquet`` or several, joined in turn. A shard whose
    merged bytes equal what is there already is not rewritten, so a rerun changes nothing.
    ``clip_threshold``: the clip-threshold step's file, for ``clip_score_top_fraction``.
    ``manifest``: discover's (object or URI): the shards and their sizes, without a listing;
    each shard's files are read whole, together, one request each."""
    import pyarrow.compute as pc

    stats = Stats()
    thresholds = thresholds.resolve_top(clip_threshold)
    selected = shards_of(dataset, manifest).select(shards)
    if path is not None:
        storage.makedirs(path)
    folders = [annotations] if isinstance(annotations, str) else list(annotations or [])

    def one(s: Shard) -> dict[str, Any]:
        urls = [storage.join(folder, f"{s.stem}.parquet") for folder in folders]
        wants = [parquet.Want(s.parquet, s.stem, size=s.parquet_bytes)]
        wants += [parquet.Want(url, s.stem) for url in urls]
        base, *reads = parquet.load_many(wants, missing_ok=True)
        if base is None:
            raise ShardError(s.stem, f"{s.parquet} does not exist")
        anns = []
        for url, read in zip(urls, reads, strict=True):
            if read is None:
                raise ShardError(s.stem, f"annotations {url} do not exist")
            anns.append(read.table)
        ann = anns if anns else None
        counts: Funnel = {}
        table = merge_shard(
            base.table, ann, id_col=id_col, shard=s.stem, columns=columns,
            thresholds=thresholds, filter_column=filter_column, counts=counts,
        )  # fmt: skip
        dest = storage.join(path, f"{s.stem}.parquet") if path is not None else s.parquet
        parquet.write_table(dest, table, metadata=table.schema.metadata)
        passed = None
        if filter_column in table.column_names and table.num_rows:
            passed = int(pc.sum(table.column(filter_column)).as_py() or 0)
        elif filter_column in table.column_names:
            passed = 0
        return {
            "shard": s.stem,
            "records": table.num_rows,
            "passed": passed,
            "columns": table.column_names,
            "input_column": filter_marker(table.schema).get("input_column"),
            "funnel": counts,
        }

    progress = Progress("save-metadata", len(selected), logger=logger)
    results = []
    with ThreadPoolExecutor(max(1, min(workers, len(selected)))) as pool:
        for r in pool.map(one, selected):
            results.append(r)
            progress.update(items=r["records"])
    passed = [r["passed"] for r in results if r["passed"] is not None]
    anded = sorted(r["shard"] for r in results if r["input_column"])
    if anded:
        logger.info(
            "%d shards have their own %r: kept as %r and ANDed with the thresholds",
            len(anded), filter_column, filter_column + INPUT_SUFFIX,
        )  # fmt: skip
    input_filter = {"column": filter_column + INPUT_SUFFIX, "shards": len(anded)}
    removed: Funnel = {}
    for r in results:
        add_funnels(removed, r["funnel"])
    return stats.result(
        dataset=dataset,
        path=path or dataset,
        shards=len(results),
        records=sum(r["records"] for r in results),
        filter_column=filter_column if passed else None,
        passed=sum(passed) if passed else None,
        # shards whose metadata brought its own filter column, ANDed with the thresholds
        input_filter=input_filter if anded else None,
        thresholds=thresholds.as_dict() if thresholds.any() else None,
        # records each filter removed alone and in sequence ("error": failed records)
        funnel=removed or None,
        columns=results[0]["columns"] if results else [],
        per_shard=[
            {"shard": r["shard"], "records": r["records"], "passed": r["passed"]} for r in results
        ],
    )
