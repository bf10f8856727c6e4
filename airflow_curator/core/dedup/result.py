"""Per-shard dedup result: the boolean column save-metadata merges and reshard can filter on.

Per input shard, ``result/NNNNN.parquet`` has one row per record of the shard's annotation file,
in its order: the id column, ``is_unique`` (False for every record marked by the semantic or
the exact pass) and ``duplicate_of`` (the id of the record kept in its place, else null). So the
result folder is itself a valid annotations folder for ``save-metadata``. Every part's ``dups``
file must be there and made from the current centroids and one ``eps``: a half-run stage is an
error, never a silently incomplete column.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow_curator.core.dedup import store
from airflow_curator.core.dedup.fit import load_centroids
from airflow_curator.core.errors import DataError, ShardError, UsageError, preview
from airflow_curator.core.io import parquet, storage
from airflow_curator.core.progress import Progress
from airflow_curator.core.stats import Result, Stats

logger = logging.getLogger(__name__)

EXAMPLES = 5


def read_removed(
    output: str, wanted: set[int]
) -> tuple[dict[int, dict[str, tuple]], dict[str, Any]]:
    """``shard -> id -> (duplicate_of, similarity, kind)`` of the wanted shards, from all parts."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cent = load_centroids(output)
    removed: dict[int, dict[str, tuple]] = {n: {} for n in wanted}
    settings: set[tuple] = set()
    missing = []
    done = {e.name for e in storage.list_files(store.folder_url(output, "dups"), missing_ok=True)}
    for part in range(cent.parts.count):
        name = store.part_name(part)
        if f"{name}.parquet" not in done:
            missing.append(part)
            continue
        url = store.file_url(output, "dups", name)
        table = parquet.read_table(url, None)
        meta = store.file_meta(table.schema)
        if meta.get("centroids") != cent.digest or meta.get("parts") != cent.parts.count:
            raise DataError(f"{url} was made with other centroids: rerun dedup")
        settings.add((meta.get("eps"), meta.get("exact"), meta.get("keep", "aesthetic")))
        table = table.filter(pc.is_in(table.column("shard"), pa.array(sorted(wanted), pa.int32())))
        for shard, rid, dup_of, sim, kind in zip(
            *(
                table.column(c).to_pylist()
                for c in ("shard", "id", "duplicate_of", "similarity", "kind")
            )
        ):
            removed[shard].setdefault(rid, (dup_of, sim, kind))
    if missing:
        groups = [cent.parts.groups()[p]["clusters"] for p in missing[:3]]
        raise UsageError(
            f"dedup has not run for {len(missing)} of {cent.parts.count} cluster groups "
            f"(e.g. --clusters {' '.join(groups)}): run dedup for them first"
        )
    if len(settings) > 1:
        raise UsageError(f"dups files disagree on eps/exact/keep {sorted(settings)}: rerun dedup")
    if settings and next(iter(settings))[0] is None:
        raise UsageError(
            "the dups files hold every match, with no eps (the Python API's): rerun dedup"
        )
    eps, exact, keep = settings.pop() if settings else (None, None, None)
    return removed, {"eps": eps, "exact_pass": exact, "keep": keep}


def write_results(
    output: str,
    shards: str | None = None,
    *,
    annotations: str | None = None,
    id_col: str = "key",
    column: str = "is_unique",
) -> Result:
    """Write ``result/NNNNN.parquet`` for the selected shards; counts and a few pairs."""
    import pyarrow as pa

    stats = Stats()
    files = store.annotation_files(output, annotations, shards)
    removed, settings = read_removed(output, {f.number for f in files})
    progress = Progress("dedup-result", len(files), logger=logger)
    per_shard: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    kinds = {"semantic": 0, "exact": 0}
    for number, shard, url in files:
        table = parquet.read_table(url, shard, [id_col])
        ids = [str(i) for i in table.column(id_col).to_pylist()]
        marks = removed[number]
        unknown = set(marks) - set(ids)
        if unknown:
            raise ShardError(shard, f"dedup marked ids the annotations lack: {preview(unknown)}: "
                             "rerun dedup-assign, dedup-hash and dedup")  # fmt: skip
        dup_of = [marks[i][0] if i in marks else None for i in ids]
        out = pa.table({
            id_col: pa.array(ids, pa.string()),
            column: pa.array([d is None for d in dup_of], pa.bool_()),
            "duplicate_of": pa.array(dup_of, pa.string()),
        })  # fmt: skip
        store.write_file(store.file_url(output, "result", shard), out)
        for rid in sorted(marks):
            kinds[marks[rid][2]] += 1
            if len(examples) < EXAMPLES:
                d, sim, kind = marks[rid]
                examples.append(
                    {"id": rid, "duplicate_of": d, "similarity": round(sim, 4), "kind": kind}
                )
        per_shard.append({"shard": shard, "records": len(ids), "duplicates": len(marks)})
        progress.update(items=len(ids))
    return stats.result(
        output=output,
        result=store.folder_url(output, "result"),
        column=column,
        **settings,
        shards=len(per_shard),
        records=sum(s["records"] for s in per_shard),
        duplicates=sum(s["duplicates"] for s in per_shard),
        semantic=kinds["semantic"],
        exact=kinds["exact"],
        examples=examples,
        per_shard=per_shard,
    )
