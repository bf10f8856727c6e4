"""Reshard: write the output shards of a plan, copying kept members' bytes unchanged.

Each output shard is a ``.tar`` (deterministic headers, new ids, the id inside ``.json`` rewritten),
its ``.idx`` (from the members as they are written: no second read) and its ``.parquet`` (the kept
metadata rows, new ids, the old id in ``old_id_col``). Input members are found by record id through
the input ``.idx`` (or one header scan of the tar) and read by range: a local tar a record at a
time, an object-store tar in merged ranges. A record is read straight into the writer's staging
buffer, where its headers are replaced and its ``.json`` id is patched; the buffer is hashed and
written (with direct I/O on a local disk) a megabyte at a time. A marker JSON (sizes, sha256,
counts) is written last per output shard; ``commit`` checks those markers. Reading inputs lives in
``tarsource``, writing in ``tarwriter`` and ``sink``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from airflow_curator.core.errors import ShardError, UsageError, preview
from airflow_curator.core.io import lease, parquet, storage
from airflow_curator.core.layout import marker_url, markers_url
from airflow_curator.core.progress import Progress
from airflow_curator.core.reshard.plan import (
    InputShard,
    OutputShard,
    Plan,
    ids_digest,
    kept_rows,
    load_plan,
)
from airflow_curator.core.stats import Result, Stats
from airflow_curator.core.wds.index import Location, index_text
from airflow_curator.core.wds.naming import SHARD_EXTS, record_ids
from airflow_curator.core.wds.shardspec import format_spec, parse_spec
from airflow_curator.core.wds.tarsource import TarSource, index_matches, record_locations
from airflow_curator.core.wds.tarstream import BLOCK
from airflow_curator.core.wds.tarwriter import TarWriter, slot_size
from airflow_curator.core.workerpool import worker_pool

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

BATCH = 256  # records per ranged read from an object store
Marker = dict[str, Any]  # an output shard's marker JSON: its files' names, sizes, sha256


def rewrite_json(raw: bytes | memoryview, id_col: str, old: str, new: str, shard: str) -> bytes:
    """The record's JSON with ``id_col`` set to the new id.

    Fast path: when ``"<id_col>": "<old id>"`` occurs exactly once it is replaced in place, so the
    rest of the JSON keeps its exact bytes; otherwise the JSON is parsed and dumped again.
    """
    raw = bytes(raw)
    needle = f'"{id_col}": "{old}"'.encode()
    if raw.count(needle) == 1 and raw.lstrip().startswith(b"{"):
        return raw.replace(needle, f'"{id_col}": "{new}"'.encode())
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise ShardError(shard, f"record {old}: .json is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ShardError(shard, f"record {old}: .json is not an object")
    meta[id_col] = new
    return json.dumps(meta, ensure_ascii=False).encode()


@dataclass
class LoadedInput:
    """What writing needs of one input shard: its metadata, kept rows, member locations and
    byte source."""

    table: pa.Table
    ids: list[str]
    rows: list[int]
    locations: Mapping[str, Location]
    source: TarSource


class InputCache:
    """The loaded inputs of recent input shards."""

    def __init__(self, plan: Plan, keep: int = 2) -> None:
        self.plan = plan
        self.keep = keep
        self.loaded: dict[str, LoadedInput] = {}

    def get(self, stem: str) -> LoadedInput:
        if stem in self.loaded:
            return self.loaded[stem]
        if len(self.loaded) >= self.keep:
            old = next(iter(self.loaded))
            self.loaded.pop(old).source.close()
        inp = self.plan.input(stem)
        self.loaded[stem] = entry = self._load(inp)
        return entry

    def _load(self, inp: InputShard) -> LoadedInput:
        from airflow_curator.core.dataset.metadata import check_ids

        plan = self.plan
        table = parquet.read_table(inp.metadata, inp.stem)
        ids = check_ids(table.column(plan.id_col).to_pylist(), inp.stem, inp.metadata)
        rows, _ = kept_rows(table, plan.filter_column, inp.stem, plan.id_col)
        if len(rows) != inp.kept or ids_digest([ids[r] for r in rows]) != inp.digest:
            raise ShardError(
                inp.stem,
                f"{inp.metadata} changed after planning ({len(rows)} kept now, {inp.kept} "
                f"planned): run plan-reshard again",
            )
        source = TarSource(inp.tar, inp.tar_bytes)
        if source.size != inp.tar_bytes:
            raise ShardError(inp.stem, f"{inp.tar} changed after planning: run plan-reshard again")
        return LoadedInput(table, ids, rows, self._locations(inp, source, ids, rows), source)

    @staticmethod
    def _locations(
        inp: InputShard, source: TarSource, ids: list[str], rows: list[int]
    ) -> Mapping[str, Location]:
        """The input's index when there is one and it matches the tar, else one header scan."""
        if inp.idx:
            try:
                locations = record_locations(inp.tar, inp.tar_bytes, inp.stem, inp.idx)
            except FileNotFoundError:  # not indexed
                pass
            else:
                if source.fd is None:  # the first batch's bytes: the check reads its headers
                    first = [ids[r] for r in rows[:BATCH] if ids[r] in locations]
                    source.prefetch(_spans([locations[i] for i in first]))
                if index_matches(source, locations, [ids[r] for r in rows]):
                    return locations
                logger.warning(
                    "shard %s: %s does not match the tar (stale?); scanning the tar instead",
                    inp.stem,
                    inp.idx,
                )
        return record_locations(inp.tar, inp.tar_bytes, inp.stem)

    def close(self) -> None:
        for entry in self.loaded.values():
            entry.source.close()
        self.loaded.clear()


def _piece_records(
    entry: LoadedInput, stem: str, rows: list[int]
) -> Iterator[tuple[str, Location, TarSource]]:
    """(old id, member locations, byte source) for the kept ``rows`` of one input shard."""
    ids, locations, source = entry.ids, entry.locations, entry.source
    old_ids = [ids[r] for r in rows]
    missing = [i for i in old_ids if i not in locations]
    if missing:
        raise ShardError(
            stem, f"{len(missing)} kept records are not in the tar: {preview(missing)}"
        )
    for start in range(0, len(old_ids), BATCH):
        batch = [(old, locations[old]) for old in old_ids[start : start + BATCH]]
        if source.fd is None:
            source.prefetch(_spans([locs for _, locs in batch]))
        for old, locs in batch:
            yield old, locs, source


def _spans(records: list[Location]) -> list[tuple[int, int]]:
    """The records' bytes to prefetch: each member with its header block and padding, so a
    plain record is read in one piece."""
    return [(off - BLOCK, slot_size(size)) for locs in records for _, off, size in locs]


def _cast(column: pa.Array, type_: pa.DataType) -> pa.Array:
    return column if column.type == type_ else column.cast(type_)


def _take(table: pa.Table, rows: list[int]) -> pa.Table:
    """``table.take(rows)`` without importing the ``pyarrow.compute`` wrapper module: that
    import costs ~25 ms, in the serial start of every reshard process; the kernel itself is in
    ``_compute``, a few milliseconds."""
    import pyarrow as pa

    try:
        from pyarrow._compute import call_function
    except ImportError:  # a pyarrow that moved it
        return table.take(pa.array(rows, pa.int64()))
    return call_function("take", [table, pa.array(rows, pa.int64())])


def _metadata_table(
    plan: Plan, parts: list[pa.Table], new_ids: list[str], old: list[str]
) -> pa.Table:
    """The output shard's Parquet rows in the plan's schema: new ids, old ids if asked."""
    import pyarrow as pa

    schema = plan.arrow_schema()
    n = len(new_ids)
    columns = []
    for f in schema:
        if f.name == plan.id_col:
            columns.append(pa.array(new_ids, pa.string()))
        elif f.name == plan.old_id_col:
            columns.append(_cast(pa.array(old), f.type))
        else:
            # arrays, not ChunkedArrays: pyarrow fails on those of lists with nulls (a failed
            # image's null embedding)
            chunks = [
                chunk
                for t in parts
                for chunk in (
                    _cast(t.column(f.name), f.type).chunks
                    if f.name in t.column_names
                    else [pa.nulls(len(t), f.type)]
                )
            ]
            columns.append(pa.chunked_array(chunks, f.type) if chunks else pa.nulls(n, f.type))
    return pa.Table.from_arrays(columns, schema=schema).combine_chunks()


class Flusher:
    """Flushes finished output tars to disk in a background thread while the next one is
    written, so commit's flush later finds the work done without the writer ever waiting on
    the disk (``fsync`` releases the GIL)."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="curator-flush")
        self.pending: list[Future[None]] = []

    def submit(self, f: IO[bytes]) -> None:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            f.flush()
            fd = os.dup(f.fileno())  # still the same file after the atomic rename
            self.pending.append(self.pool.submit(_fsync_close, fd))

    def close(self) -> None:
        for fut in self.pending:
            with contextlib.suppress(OSError):
                fut.result()
        self.pool.shutdown(wait=True)


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_record(
    writer: TarWriter,
    source: TarSource,
    locs: Location,
    old: str,
    new: str,
    id_col: str,
    shard: str,
) -> None:
    """Append one record under its new id. Usually its members are read straight into the
    writer's buffer and only the headers and the ``.json`` id are changed there; records with
    extended headers, a ``.json`` whose length changes, or long names take the general path,
    which writes the same bytes."""
    slots = writer.reserve([size for _, _, size in locs])
    if slots is not None and source.read_into(locs, slots):
        metas: dict[int, bytes] = {}  # .json members whose length changed
        for i, (ext, _, size) in enumerate(locs):
            if ext == "json":
                data = slots[i][BLOCK : BLOCK + size]
                meta = rewrite_json(data, id_col, old, new, shard)
                if len(meta) == size:
                    data[:] = meta
                else:
                    metas[i] = meta
        if not metas and writer.commit(new, [ext for ext, _, _ in locs]):
            return
        # copies: the views point into the buffer that add_record writes to
        datas: list[bytes | memoryview] = [
            metas.get(i) or bytes(slot[BLOCK : BLOCK + size])
            for i, (slot, (_, _, size)) in enumerate(zip(slots, locs, strict=True))
        ]
    else:
        datas = source.read(locs)
        for i, (ext, _, _) in enumerate(locs):
            if ext == "json":
                datas[i] = rewrite_json(datas[i], id_col, old, new, shard)
    writer.add_record([(f"{new}.{ext}", d) for (ext, _, _), d in zip(locs, datas, strict=True)])


def write_output(
    cache: InputCache, out: OutputShard, flusher: Flusher | None = None, direct_io: bool = True
) -> Marker:
    """Write one output shard (tar, idx, parquet, then its marker); return the marker.
    ``direct_io``: write a local tar around the page cache (see ``sink``)."""
    import hashlib

    t0 = time.perf_counter()
    plan = cache.plan
    base = storage.join(plan.output, out.name)
    ids = record_ids(out.index, out.records, plan.samples_per_shard, plan.max_shards)
    old_ids: list[str] = []
    id_col = plan.id_col
    parts = []  # the kept metadata rows, taken piece by piece (inputs may be evicted after)
    with storage.atomic_writer(base + ".tar", fsync=False) as f:
        writer = TarWriter(f, direct=direct_io and storage.is_local(base))
        try:
            for stem, first, end in out.pieces:
                entry = cache.get(stem)
                rows = entry.rows[first:end]
                parts.append(_take(entry.table, rows))
                for old, locs, source in _piece_records(entry, stem, rows):
                    new = ids[len(old_ids)]
                    _copy_record(writer, source, locs, old, new, id_col, out.name)
                    old_ids.append(old)
        except BaseException:
            writer.abort()  # before atomic_writer closes the file under the writing thread
            raise
        writer.close()
        if flusher is not None:
            flusher.submit(f)
    if len(old_ids) != out.records:
        raise ShardError(out.name, f"wrote {len(old_ids)} records, the plan says {out.records}")
    files = {"tar": {"name": out.name + ".tar", "size": writer.pos, "sha256": writer.sha256}}
    idx = index_text(writer.members, out.name)[0].encode()
    pq_data = parquet.to_bytes(_metadata_table(plan, parts, ids, old_ids))
    for ext, data in (("idx", idx), ("parquet", pq_data)):
        storage.write_bytes(f"{base}.{ext}", data, fsync=False)
        files[ext] = {
            "name": f"{out.name}.{ext}",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    marker = {"plan": plan.digest, "shard": out.name, "records": out.records, "files": files}
    storage.write_bytes(
        marker_url(plan.output, out.name), json.dumps(marker, sort_keys=True).encode(), fsync=False
    )
    seconds = time.perf_counter() - t0
    logger.info(
        "wrote shard %s: %d records, %.1f MB in %.2fs (%.0f MB/s)",
        out.name,
        out.records,
        writer.pos / 1e6,
        seconds,
        writer.pos / 1e6 / max(seconds, 1e-9),
    )
    return marker


def _write_many(task: tuple[str, list[int], bool, str]) -> list[Marker]:
    """Write these output shards, each once the run (``run_id``) is seen to hold the lease."""
    plan_url, indexes, direct_io, run_id = task
    plan = load_plan(plan_url)
    cache = InputCache(plan)
    flusher = Flusher() if storage.is_local(plan.output) else None
    markers = []
    try:
        for i in indexes:
            lease.verify(plan.output, run_id)
            markers.append(write_output(cache, plan.outputs[i], flusher, direct_io))
        return markers
    finally:
        cache.close()
        if flusher is not None:
            flusher.close()


def sweep_debris(plan: Plan, indexes: list[int], listing: list[storage.Entry]) -> None:
    """Remove what killed attempts left of these output shards (``listing``: the output folder's):
    temporaries of their tar, idx, Parquet and marker (a killed step's writers die with it,
    mid-file)."""
    names = [plan.outputs[i].name for i in indexes]
    if not names:
        return
    storage.sweep_temporaries(listing, {f"{n}.{ext}" for n in names for ext in SHARD_EXTS})
    storage.sweep_temporaries(
        storage.list_files(markers_url(plan.output), missing_ok=True), {f"{n}.json" for n in names}
    )


def finished(plan: Plan, indexes: list[int], listing: list[storage.Entry]) -> dict[int, Marker]:
    """Output shards an earlier attempt finished for this same plan: its marker is there and
    every file has the size ``listing`` (the output folder's) gives it."""
    sizes = {e.name: e.size for e in listing}
    digest = plan.digest
    done: dict[int, Marker] = {}
    for i in indexes:
        name = plan.outputs[i].name
        if f"{name}.tar" not in sizes:
            continue
        try:
            marker = json.loads(storage.read_bytes(marker_url(plan.output, name)))
        except FileNotFoundError:
            continue
        files = marker.get("files", {}).values()
        if marker.get("plan") == digest and all(sizes.get(f["name"]) == f["size"] for f in files):
            done[i] = marker
    return done


def reshard(
    plan_url: str,
    outputs: str | None = None,
    *,
    workers: int = 0,
    force: bool = False,
    direct_io: bool = True,
    run_id: str | None = None,
) -> Result:
    """Write the output shards ``outputs`` (a spec; default all) of the plan at ``plan_url``,
    holding the output's lease for the run ``run_id`` (``core.io.lease``: the mapped tasks of
    one run share it).

    Shards a previous attempt finished for the same plan are skipped unless ``force``: a retried
    task redoes only what is missing (rewriting would give the same bytes anyway). Local tars
    are written with direct I/O unless ``direct_io`` is false (e.g. for a network file system
    that would serve it slowly)."""
    stats = Stats()
    plan = load_plan(plan_url)
    wanted = parse_spec(outputs)
    indexes = [o.index for o in plan.outputs if wanted is None or o.index in wanted]
    if wanted is not None and len(indexes) != len(wanted):
        extra = wanted - set(indexes)
        raise UsageError(
            f"outputs {format_spec(extra)} are not in the plan ({len(plan.outputs)} outputs)"
        )
    with lease.output_lease(plan.output, run_id) as held:
        listing = storage.list_files(plan.output, missing_ok=True)  # one listing for both
        done = {} if force else finished(plan, indexes, listing)
        if done:
            logger.info("%d output shards are already written for this plan: skipped", len(done))
        todo = [i for i in indexes if i not in done]
        sweep_debris(plan, todo, listing)
        n = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        chunks = [todo[i * len(todo) // n : (i + 1) * len(todo) // n] for i in range(n)]
        tasks = [(plan_url, c, direct_io, held.run.id) for c in chunks if c]
        progress = Progress("reshard", len(todo), logger=logger)
        markers: list[Marker] = list(done.values())
        local = storage.is_local(plan.output)
        with contextlib.ExitStack() as stack:
            if len(tasks) <= 1:
                results: Iterable[list[Marker]] = map(_write_many, tasks)
            else:
                if local:
                    importlib.import_module("pyarrow.parquet")  # once here, not in every worker
                pool = stack.enter_context(worker_pool(len(tasks), processes=local))
                results = pool.map(_write_many, tasks)
            for batch in results:
                markers.extend(batch)
                progress.update(
                    len(batch),
                    items=sum(m["records"] for m in batch),
                    nbytes=sum(m["files"]["tar"]["size"] for m in batch),
                )
        return stats.result(
            plan=plan_url,
            outputs=format_spec(indexes),
            shards=len(markers),
            written=len(markers) - len(done),
            skipped=len(done),
            records=sum(m["records"] for m in markers),
            bytes=sum(m["files"]["tar"]["size"] for m in markers),
        )


def reshard_dataset(
    dataset: str,
    output: str,
    filter_column: str,
    *,
    workers: int = 0,
    sync: bool = True,
    direct_io: bool = True,
    run_id: str | None = None,
    **plan_options: Any,
) -> Result:
    """Plan, write and commit a reshard in this process: the seed's ``to_webdataset`` and the
    ``to-webdataset`` command, for a laptop or a script (the DAG runs the three steps as tasks).
    One lease on the output covers the three (``core.io.lease``), taken once the folder is
    found to be ours (``claim_output``, which leaves a foreign folder as it was)."""
    from airflow_curator.core.reshard.commit import commit
    from airflow_curator.core.reshard.plan import check_apart, claim_output, plan_reshard

    stats = Stats()
    check_apart(dataset, output)
    claim_output(output, plan_options.get("overwrite", False))
    with lease.output_lease(output, run_id, last=True):
        planned = plan_reshard(dataset, output, filter_column, **plan_options)
        written = reshard(planned["plan"], workers=workers, direct_io=direct_io)
        committed = commit(planned["plan"], sync=sync)
    return {
        **committed,
        **stats.result(records=committed["records"], bytes=committed["bytes"]),
        "plan": planned["plan"],
        "input_records": planned["input_records"],
        "written": written["written"],
        "skipped": written["skipped"],
        "not_written": planned["not_written"],
        "message": planned["message"],
    }
