"""DALI index files (``wds2idx`` v1.2): written by one sequential pass over each tar, and read.

Format: ``v1.2 <samples>`` then one line per sample, ``<ext> <data_offset> <size> <name>`` per
member. Samples are the records of ``records.group_records``, the grouping every reader uses, so
the index and the readers never disagree on what a record is; unlike DALI's ``wds2idx``, offsets
are the real data offsets for GNU long names and PAX headers too.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import as_completed
from dataclasses import dataclass
from typing import Any

from airflow_curator.core.errors import ShardError
from airflow_curator.core.io import storage
from airflow_curator.core.progress import Progress
from airflow_curator.core.stats import Result, Stats
from airflow_curator.core.wds.naming import key_id, split_member
from airflow_curator.core.wds.records import Record, group_records, iter_records
from airflow_curator.core.wds.tarstream import Member, file_cached
from airflow_curator.core.workerpool import worker_pool

logger = logging.getLogger(__name__)

VERSION = "v1.2"
_SPACE = re.compile(r"\s")
Location = list[tuple[str, int, int]]  # a record's members: (ext, data offset, size), by ext


def index_text(members: Iterable[Member], shard: str = "?") -> tuple[str, int]:
    """Index file content and its sample count for members in tar order."""
    return _index_of(group_records(((m, None) for m in members), shard), shard)


def _index_of(records: Iterable[Record], shard: str) -> tuple[str, int]:
    """One line per record as ``group_records`` makes records (the readers' grouping), its
    members in tar order."""
    lines: list[str] = []
    for record in records:
        line = " ".join([f"{e} {m.data_offset} {m.size} {m.name}" for e, m in record.parts.items()])
        if len(line.split()) != 4 * len(record.parts):  # white space in a name
            name = next(m.name for m in record.parts.values() if _SPACE.search(m.name))
            raise ShardError(shard, f"member name {name!r} has white space: no DALI index for it")
        lines.append(line)
    if not lines:
        raise ShardError(shard, "tar has no samples to index")
    return f"{VERSION} {len(lines)}\n" + "\n".join(lines) + "\n", len(lines)


class IndexLocations(Mapping[str, Location]):
    """The one reader of ``.idx`` files: record id -> member locations, each line parsed only
    when asked (most records of a shard are usually filtered out)."""

    def __init__(self, text: str, shard: str, source: str) -> None:
        self.shard, self.source = shard, source
        lines = text.split("\n")
        if not lines or not lines[0].startswith(VERSION):
            raise ShardError(shard, f"{source} is not a {VERSION} DALI index")
        self.lines: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            parts = line.split(" ", 4)
            if len(parts) < 4:
                raise ShardError(shard, f"{source}: malformed line {line[:120]!r}")
            rid = key_id(split_member(parts[3])[0])
            if rid in self.lines:
                raise ShardError(shard, f"{source}: record {rid} appears twice")
            self.lines[rid] = line

    def __contains__(self, rid: object) -> bool:
        return rid in self.lines

    def __iter__(self) -> Iterator[str]:
        return iter(self.lines)

    def __len__(self) -> int:
        return len(self.lines)

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


def read_index(url: str, shard: str) -> IndexLocations:
    return IndexLocations(storage.read_bytes(url).decode("utf-8", "surrogateescape"), shard, url)


def build_index(tar_url: str, size: int | None = None, shard: str = "?") -> tuple[str, int]:
    """The index of a tar, from one streaming pass over its headers."""
    return _index_of(iter_records(tar_url, shard, with_data=False, size=size), shard)


@dataclass
class IndexOutcome:
    shard: str
    action: str  # written | skipped | verified
    records: int
    bytes: int


def write_index(
    tar_url: str, idx_url: str, size: int | None = None, shard: str = "?"
) -> IndexOutcome:
    text, records = build_index(tar_url, size, shard)
    storage.write_bytes(idx_url, text.encode())
    return IndexOutcome(shard, "written", records, size or 0)


def verify_index(
    tar_url: str, idx_url: str, size: int | None = None, shard: str = "?"
) -> IndexOutcome:
    """Check an existing index against its tar; raise naming the first differing line."""
    expected, records = build_index(tar_url, size, shard)
    try:
        actual = storage.read_bytes(idx_url).decode("utf-8", "replace")
    except FileNotFoundError:
        raise ShardError(shard, f"index {idx_url} is missing") from None
    if actual != expected:
        exp_lines, act_lines = expected.splitlines(), actual.splitlines()
        for n, (a, b) in enumerate(zip(exp_lines, act_lines, strict=False), start=1):
            if a != b:
                raise ShardError(
                    shard, f"index {idx_url} is stale at line {n}: {b[:120]!r} != {a[:120]!r}"
                )
        raise ShardError(
            shard, f"index {idx_url} has {len(act_lines)} lines, the tar needs {len(exp_lines)}"
        )
    return IndexOutcome(shard, "verified", records, size or 0)


def _index_one(task: tuple[str, str, str, int, str]) -> IndexOutcome:
    mode, tar_url, idx_url, size, shard = task
    if mode == "verify":
        return verify_index(tar_url, idx_url, size, shard)
    return write_index(tar_url, idx_url, size, shard)


def index_dataset(
    dataset: str,
    shards: str | None = None,
    *,
    force: bool = False,
    verify: bool = False,
    workers: int = 0,
    manifest: Any = None,
) -> Result:
    """Index (or verify) the selected shards; fresh indexes are skipped unless ``force``.
    ``manifest``: discover's (object or URI), so no listing."""
    from airflow_curator.core.dataset.discovery import shards_of

    stats = Stats()
    manifest = shards_of(dataset, manifest, on_invalid="skip")
    selected = manifest.select(shards)
    tasks: list[tuple[str, str, str, int, str]] = []
    outcomes: list[IndexOutcome] = []
    for s in selected:
        idx_url = s.idx or storage.join(dataset, f"{s.stem}.idx")
        if verify:
            tasks.append(("verify", s.tar, idx_url, s.tar_bytes, s.stem))
        elif s.idx_fresh and not force:
            outcomes.append(IndexOutcome(s.stem, "skipped", 0, 0))
        else:
            tasks.append(("write", s.tar, idx_url, s.tar_bytes, s.stem))
    storage.sweep_temporaries(
        manifest.temporaries, {storage.basename(t[2]) for t in tasks if t[0] == "write"}
    )
    progress = Progress("index", len(selected), logger=logger)
    progress.update(len(outcomes))
    for outcome in _run_all(tasks, workers, storage.is_local(dataset)):
        outcomes.append(outcome)
        progress.update(nbytes=outcome.bytes, items=outcome.records)
    outcomes.sort(key=lambda o: o.shard)
    return stats.result(
        dataset=dataset,
        shards=len(outcomes),
        written=sum(o.action == "written" for o in outcomes),
        skipped=sum(o.action == "skipped" for o in outcomes),
        verified=sum(o.action == "verified" for o in outcomes),
        records=sum(o.records for o in outcomes),
        bytes=sum(o.bytes for o in outcomes),
        per_shard=[{"shard": o.shard, "action": o.action, "records": o.records} for o in outcomes],
    )


def _run_all(
    tasks: list[tuple[str, str, str, int, str]], workers: int, local: bool
) -> Iterator[IndexOutcome]:
    """Cached local shards in forked processes (parsing is CPU-bound), cold local ones one at a
    time (the disk is the limit and interleaved readers defeat read-ahead), remote ones in
    threads (network latency)."""
    n = min(workers or os.cpu_count() or 1, len(tasks))
    if not workers and local and tasks and not file_cached(storage.local_path(tasks[0][1])):
        n = 1
    if n <= 1:
        yield from map(_index_one, tasks)
        return
    with worker_pool(n if local else max(n, 8), processes=local) as pool:
        futures = [pool.submit(_index_one, t) for t in tasks]
        for fut in as_completed(futures):
            yield fut.result()
