"""Reshard: write the output shards of a plan, copying kept members' bytes unchanged.

Each output shard is a ``.tar`` (deterministic headers, new ids, the id inside ``.json`` rewritten),
its ``.idx`` (from the members as they are written: no second read) and its ``.parquet`` (the kept
metadata rows, new ids, the old id in ``old_id_col``). Input members are found by record id through
the input ``.idx`` (or one header scan of the tar) and read by range: a local tar is memory-mapped,
an object-store tar is read in merged ranges. A marker JSON (sizes, sha256, counts) is written last
per output shard; ``commit`` checks those markers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from airflow_curator.core import storage
from airflow_curator.core.errors import CuratorError, ShardError, TarFormatError, preview
from airflow_curator.core.index import index_text
from airflow_curator.core.merge import parquet_bytes
from airflow_curator.core.naming import record_id, split_member
from airflow_curator.core.plan import (
    InputShard,
    OutputShard,
    Plan,
    ids_digest,
    kept_rows,
    load_plan,
    marker_url,
    read_parquet,
)
from airflow_curator.core.progress import Progress
from airflow_curator.core.shardspec import format_spec, parse_spec
from airflow_curator.core.tarstream import TarScanner
from airflow_curator.core.tarwriter import TarWriter

logger = logging.getLogger(__name__)

Location = list[tuple[str, int, int]]  # (ext, data offset, size), sorted by ext
BATCH = 256  # records per ranged read from an object store
MERGE_GAP = 1 << 20  # read through gaps smaller than this rather than issue another request


class IndexLocations:
    """Record id -> member locations from a DALI v1.2 index, each line parsed only when asked
    (most records of a shard are usually filtered out)."""

    def __init__(self, text: str, shard: str, source: str) -> None:
        self.shard, self.source = shard, source
        lines = text.split("\n")
        if not lines or not lines[0].startswith("v1.2"):
            raise ShardError(shard, f"{source} is not a v1.2 DALI index")
        self.lines: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            parts = line.split(" ", 4)
            if len(parts) < 4:
                raise ShardError(shard, f"{source}: malformed line {line[:120]!r}")
            key = split_member(parts[3])[0]
            rid = key[key.rfind("/") + 1 :]
            if rid in self.lines:
                raise ShardError(shard, f"{source}: record {rid} appears twice")
            self.lines[rid] = line

    def __contains__(self, rid: str) -> bool:
        return rid in self.lines

    def __getitem__(self, rid: str) -> Location:
        tokens = self.lines[rid].split()
        if len(tokens) % 4:
            raise ShardError(self.shard, f"{self.source}: malformed line for record {rid}")
        try:
            return sorted(
                (tokens[i], int(tokens[i + 1]), int(tokens[i + 2]))
                for i in range(0, len(tokens), 4)
            )
        except ValueError:
            raise ShardError(
                self.shard, f"{self.source}: malformed line for record {rid}"
            ) from None


def scan_locations(tar_url: str, size: int, shard: str) -> dict[str, Location]:
    """Record id -> member locations from one pass over the tar headers."""
    out: dict[str, Location] = {}
    last = None
    with storage.open_read(tar_url) as f:
        scanner = TarScanner(f, size, source=tar_url)
        try:
            for m, _ in scanner.members():
                key, ext = split_member(m.name)
                rid = key[key.rfind("/") + 1 :]
                if not ext or not rid:
                    continue
                if rid in out and rid != last:
                    raise ShardError(shard, f"record {rid}: members are not contiguous in the tar")
                out.setdefault(rid, []).append((ext, m.data_offset, m.size))
                last = rid
        except TarFormatError as e:
            raise ShardError(shard, str(e)) from None
        finally:
            scanner.close()
    for locs in out.values():
        locs.sort()
    return out


class TarSource:
    """Byte ranges of one input tar: a memory map locally, merged range reads elsewhere."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.mm: Any = None
        self.cache: list[tuple[int, bytes]] = []
        if storage.is_local(url):
            import mmap

            with open(storage.local_path(url), "rb") as f:
                if os.fstat(f.fileno()).st_size:
                    self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self.view = memoryview(self.mm) if self.mm is not None else memoryview(b"")

    def prefetch(self, spans: list[tuple[int, int]]) -> None:
        """Fetch ``(offset, size)`` spans in few requests (no-op for a local file)."""
        if self.mm is not None or not spans:
            return
        spans = sorted(spans)
        merged: list[list[int]] = []
        for off, size in spans:
            if merged and off - merged[-1][1] <= MERGE_GAP:
                merged[-1][1] = max(merged[-1][1], off + size)
            else:
                merged.append([off, off + size])
        fs, path = storage.fs_and_path(self.url)
        blobs = fs.cat_ranges([path] * len(merged), [m[0] for m in merged], [m[1] for m in merged])
        self.cache = [(m[0], b) for m, b in zip(merged, blobs, strict=True)]

    def get(self, off: int, size: int) -> bytes | memoryview:
        if self.mm is not None:
            if off + size > len(self.view):
                raise CuratorError(f"{self.url}: member at {off}+{size} is past the end of file")
            return self.view[off : off + size]
        for start, blob in self.cache:
            if start <= off and off + size <= start + len(blob):
                return memoryview(blob)[off - start : off - start + size]
        fs, path = storage.fs_and_path(self.url)
        return fs.cat_file(path, start=off, end=off + size)

    def close(self) -> None:
        """Unmap now unless slices are still referenced (then when they are collected)."""
        mm, self.mm = self.mm, None
        if mm is not None:
            self.view = memoryview(b"")
            with contextlib.suppress(BufferError):
                mm.close()


def rewrite_json(raw: bytes | memoryview, id_col: str, new_id: str, shard: str, old: str) -> bytes:
    """The record's JSON with ``id_col`` set to the new id; other fields as they were."""
    try:
        meta = json.loads(bytes(raw))
    except ValueError as e:
        raise ShardError(shard, f"record {old}: .json is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ShardError(shard, f"record {old}: .json is not an object")
    meta[id_col] = new_id
    return json.dumps(meta, ensure_ascii=False).encode()


class InputCache:
    """The metadata table, kept rows, member locations and byte source of recent input shards."""

    def __init__(self, plan: Plan, keep: int = 2) -> None:
        self.plan = plan
        self.keep = keep
        self.loaded: dict[str, dict[str, Any]] = {}

    def get(self, stem: str) -> dict[str, Any]:
        if stem in self.loaded:
            return self.loaded[stem]
        if len(self.loaded) >= self.keep:
            old = next(iter(self.loaded))
            self.loaded.pop(old)["source"].close()
        inp = self.plan.input(stem)
        self.loaded[stem] = entry = self._load(inp)
        return entry

    def _load(self, inp: InputShard) -> dict[str, Any]:
        from airflow_curator.core.metadata import check_ids

        plan = self.plan
        table = read_parquet(inp.metadata, inp.stem)[1]
        ids = check_ids(table.column(plan.id_col).to_pylist(), inp.stem, inp.metadata)
        rows = kept_rows(table, plan.filter_column, inp.stem)
        if len(rows) != inp.kept or ids_digest([ids[r] for r in rows]) != inp.digest:
            raise ShardError(
                inp.stem,
                f"{inp.metadata} changed after planning ({len(rows)} kept now, {inp.kept} "
                f"planned): run plan-reshard again",
            )
        if inp.idx:
            text = storage.read_bytes(inp.idx).decode("utf-8", "surrogateescape")
            locations: Any = IndexLocations(text, inp.stem, inp.idx)
        else:
            locations = scan_locations(inp.tar, inp.tar_bytes, inp.stem)
        return {
            "table": table,
            "ids": ids,
            "rows": rows,
            "locations": locations,
            "source": TarSource(inp.tar),
        }

    def close(self) -> None:
        for entry in self.loaded.values():
            entry["source"].close()
        self.loaded.clear()


def _records(cache: InputCache, out: OutputShard) -> Iterator[tuple[Any, str, Location, TarSource]]:
    """(input entry, old id, locations, source) for each record of ``out`` in output order."""
    for stem, first, end in out.pieces:
        entry = cache.get(stem)
        old_ids = [entry["ids"][r] for r in entry["rows"][first:end]]
        missing = [i for i in old_ids if i not in entry["locations"]]
        if missing:
            raise ShardError(
                stem, f"{len(missing)} kept records are not in the tar: {preview(missing)}"
            )
        for start in range(0, len(old_ids), BATCH):
            batch = old_ids[start : start + BATCH]
            entry["source"].prefetch(
                [(off, size) for i in batch for _, off, size in entry["locations"][i]]
            )
            for old in batch:
                yield entry, old, entry["locations"][old], entry["source"]


def _metadata_table(cache: InputCache, out: OutputShard, new_ids: list[str], old: list[str]) -> Any:
    import pyarrow as pa

    plan = cache.plan
    schema = plan.arrow_schema()
    parts = []
    for stem, first, end in out.pieces:
        entry = cache.get(stem)
        parts.append(entry["table"].take(pa.array(entry["rows"][first:end], pa.int64())))
    n = len(new_ids)
    columns = []
    for f in schema:
        if f.name == plan.id_col:
            columns.append(pa.array(new_ids, pa.string()))
        elif f.name == plan.old_id_col:
            columns.append(pa.array(old).cast(f.type))
        else:
            chunks = [
                t.column(f.name).cast(f.type)
                if f.name in t.column_names
                else pa.nulls(len(t), f.type)
                for t in parts
            ]
            columns.append(pa.chunked_array(chunks, f.type) if chunks else pa.nulls(n, f.type))
    return pa.Table.from_arrays(columns, schema=schema).combine_chunks()


def write_output(cache: InputCache, out: OutputShard) -> dict[str, Any]:
    """Write one output shard (tar, idx, parquet, then its marker); return the marker."""
    import hashlib

    plan = cache.plan
    base = storage.join(plan.output, out.name)
    sps, digits = plan.samples_per_shard, plan.max_shards
    new_ids: list[str] = []
    old_ids: list[str] = []
    with storage.atomic_writer(base + ".tar", fsync=False) as f:
        writer = TarWriter(f)
        for _entry, old, locs, source in _records(cache, out):
            new = record_id(out.index, len(new_ids), sps, digits)
            for ext, off, size in locs:
                data = source.get(off, size)
                if ext == "json":
                    data = rewrite_json(data, plan.id_col, new, out.name, old)
                writer.add(f"{new}.{ext}", data)
            new_ids.append(new)
            old_ids.append(old)
        writer.close()
    if len(new_ids) != out.records:
        raise ShardError(out.name, f"wrote {len(new_ids)} records, the plan says {out.records}")
    files = {"tar": {"name": out.name + ".tar", "size": writer.pos, "sha256": writer.sha256}}
    idx = index_text(writer.members, out.name)[0].encode()
    pq_data = parquet_bytes(_metadata_table(cache, out, new_ids, old_ids))
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
    return marker


def _write_many(task: tuple[str, list[int]]) -> list[dict[str, Any]]:
    plan_url, indexes = task
    plan = load_plan(plan_url)
    cache = InputCache(plan)
    try:
        return [write_output(cache, plan.outputs[i]) for i in indexes]
    finally:
        cache.close()


def reshard(plan_url: str, outputs: str | None = None, *, workers: int = 0) -> dict[str, Any]:
    """Write the output shards ``outputs`` (a spec; default all) of the plan at ``plan_url``."""
    t0 = time.perf_counter()
    plan = load_plan(plan_url)
    wanted = parse_spec(outputs)
    indexes = [o.index for o in plan.outputs if wanted is None or o.index in wanted]
    if wanted is not None and len(indexes) != len(wanted):
        extra = wanted - set(indexes)
        raise CuratorError(
            f"outputs {format_spec(extra)} are not in the plan ({len(plan.outputs)} outputs)"
        )
    n = min(workers or os.cpu_count() or 1, len(indexes))
    chunks = [indexes[i * len(indexes) // n : (i + 1) * len(indexes) // n] for i in range(n)]
    tasks = [(plan_url, c) for c in chunks if c]
    progress = Progress("reshard", len(indexes), logger=logger)
    markers: list[dict[str, Any]] = []
    local = storage.is_local(plan.output) and "fork" in multiprocessing.get_all_start_methods()
    if len(tasks) <= 1:
        results: Any = map(_write_many, tasks)
        pool = None
    elif local:
        pool = ProcessPoolExecutor(len(tasks), mp_context=multiprocessing.get_context("fork"))
        results = pool.map(_write_many, tasks)
    else:
        pool = ThreadPoolExecutor(len(tasks))
        results = pool.map(_write_many, tasks)
    try:
        for batch in results:
            markers.extend(batch)
            progress.update(
                len(batch),
                items=sum(m["records"] for m in batch),
                nbytes=sum(m["files"]["tar"]["size"] for m in batch),
            )
    finally:
        if pool is not None:
            pool.shutdown()
    seconds = time.perf_counter() - t0
    nbytes = sum(m["files"]["tar"]["size"] for m in markers)
    return {
        "plan": plan_url,
        "outputs": format_spec(indexes),
        "shards": len(markers),
        "records": sum(m["records"] for m in markers),
        "bytes": nbytes,
        "seconds": round(seconds, 3),
        "mb_per_s": round(nbytes / 1e6 / max(seconds, 1e-9), 1),
    }
