"""Shard discovery: one listing, tar/Parquet/idx paired by shard number, groups for mapping."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_curator.core.errors import ShardError, UsageError, preview
from airflow_curator.core.groups import GROUP_BYTES, MAX_GROUPS, balanced_runs, group_value
from airflow_curator.core.io import parquet, storage
from airflow_curator.core.wds.naming import SHARD_EXTS, SHARD_STEM
from airflow_curator.core.wds.shardspec import format_spec, parse_spec

logger = logging.getLogger(__name__)

LOOK_INTO = 20  # subfolders an empty dataset's error looks into for shards
FOOTER_WINDOW = 4 * parquet.WINDOW  # footers sent out together, as soon as they are listed


class EmptyDatasetError(UsageError):
    """The folder holds no shard: a wrong path (the drops root, a typo) is a usage error."""


@dataclass
class Shard:
    """One shard as discovery paired it: its tar and Parquet (always both), and its index."""

    id: int
    stem: str
    tar: str
    tar_bytes: int
    parquet: str
    parquet_bytes: int | None = None
    tar_mtime: float | None = None
    idx: str | None = None
    idx_fresh: bool = False
    records: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Shard:
        return cls(**d)


@dataclass
class Manifest:
    dataset: str
    shards: list[Shard]
    skipped: list[dict[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    # hidden temporaries of interrupted writes, for the steps to sweep (saved by name)
    temporaries: list[storage.Entry] = field(default_factory=list, repr=False, compare=False)

    @property
    def records(self) -> int | None:
        counts = [s.records for s in self.shards if s.records is not None]
        return sum(counts) if len(counts) == len(self.shards) else None

    @property
    def bytes(self) -> int:
        return sum(s.tar_bytes for s in self.shards)

    def select(self, spec: str | None) -> list[Shard]:
        wanted = parse_spec(spec)
        if wanted is None:
            return list(self.shards)
        chosen = [s for s in self.shards if s.id in wanted]
        missing = wanted - {s.id for s in chosen}
        if missing:
            raise UsageError(
                f"{self.dataset}: shards {format_spec(missing)} of --shards {spec!r} do not exist"
            )
        return chosen

    def to_json(self) -> str:
        d = asdict(self)
        d["temporaries"] = sorted(e.name for e in self.temporaries)
        d["records"] = self.records
        d["bytes"] = self.bytes
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        d = json.loads(text)
        return cls(
            dataset=d["dataset"],
            shards=[Shard.from_dict(s) for s in d["shards"]],
            skipped=d.get("skipped", []),
            ignored=d.get("ignored", []),
            created=d.get("created", 0.0),
            temporaries=[
                storage.Entry(storage.join(d["dataset"], name), name, 0, None)
                for name in d.get("temporaries", [])
            ],
        )


def discover(
    dataset: str,
    *,
    count_records: bool = True,
    on_invalid: str = "error",
    allow_empty: bool = True,
) -> Manifest:
    """Pair the shard files of ``dataset``; ``on_invalid`` is ``error`` or ``skip`` (reported).
    ``allow_empty=False``: a folder without shards is an ``EmptyDatasetError`` saying what it
    holds instead."""
    if on_invalid not in ("error", "skip"):
        raise UsageError(f"on_invalid must be 'error' or 'skip', not {on_invalid!r}")
    t0 = time.perf_counter()
    footers: dict[str, Any] = {}  # Parquet URL -> its footer, or its DataError
    try:
        entries = _listing(dataset, footers if count_records else None)
    except FileNotFoundError:
        raise UsageError(f"dataset folder {dataset} does not exist") from None
    by_id: dict[int, dict[str, storage.Entry]] = {}
    problems: list[dict[str, str]] = []
    ignored: list[str] = []
    temporaries: list[storage.Entry] = []
    for e in entries:
        if e.name.startswith((".", "_")):
            if storage.temporary_target(e.name):
                temporaries.append(e)
            continue  # temporaries, _SUCCESS, _work: never shards
        stem, _, ext = e.name.partition(".")
        if ext not in SHARD_EXTS:
            ignored.append(e.name)  # e.g. img2dataset's 00000_stats.json, report.html
            continue
        if not SHARD_STEM.match(stem):
            problems.append(
                {"shard": stem, "reason": f"{e.name} is not named as a shard id (NNNNN.{ext})"}
            )
            continue
        files = by_id.setdefault(int(stem), {})
        if ext in files:
            problems.append(
                {"shard": stem, "reason": f"{e.name} and {files[ext].name} are the same shard"}
            )
            continue
        files[ext] = e
    shards: list[Shard] = []
    for sid in sorted(by_id):
        files = by_id[sid]
        tar, pq, idx = files.get("tar"), files.get("parquet"), files.get("idx")
        stem = next(iter(files.values())).name.partition(".")[0]
        if tar is None:
            if pq is not None:
                problems.append({"shard": stem, "reason": f"{pq.name} has no {stem}.tar"})
            else:
                ignored.extend(e.name for e in files.values())  # a lone .idx
            continue
        if pq is None:
            problems.append({"shard": stem, "reason": f"{tar.name} has no {stem}.parquet"})
            continue
        fresh = idx is not None and (
            idx.mtime is None or tar.mtime is None or idx.mtime >= tar.mtime
        )
        shards.append(
            Shard(
                sid,
                stem,
                tar.url,
                tar.size,
                pq.url,
                pq.size,
                tar.mtime,
                idx.url if idx else None,
                fresh,
            )
        )
    if problems and on_invalid == "error":
        first = problems[0]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ShardError(first["shard"], first["reason"] + more)
    for p in problems:
        logger.warning("skipping shard %s: %s", p["shard"], p["reason"])
    if not shards and not allow_empty:
        raise EmptyDatasetError(empty_reason(dataset, ignored, problems))
    for s in shards if count_records else ():
        footer = footers[s.parquet]
        if isinstance(footer, Exception):
            raise footer
        s.records = int(footer.num_rows)
    manifest = Manifest(dataset, shards, problems, ignored, temporaries=temporaries)
    logger.info(
        "discovered %d shards (%d records, %.1f MB) in %s in %.2fs; %d skipped, %d ignored",
        len(shards),
        manifest.records or 0,
        manifest.bytes / 1e6,
        dataset,
        time.perf_counter() - t0,
        len(problems),
        len(ignored),
    )
    return manifest


def _listing(dataset: str, footers: dict[str, Any] | None) -> list[storage.Entry]:
    """The folder's files, sorted by name, and with ``footers`` given the footers of the
    shard-named Parquet files in it (URL to footer, or to the ``DataError`` reading it gave).
    The two overlap: each footer's ranged read (its size from the listing) goes out as soon as
    its page is in, hundreds in flight, while the next pages are listed (20,000 shards are 40
    pages one after another: 0.8 s at 20 ms a call). Pairing needs the whole listing, so
    footers are read before discovery knows which Parquet files pair with a tar: faults are
    kept, and raised only for the shards kept."""
    if footers is None:
        return storage.list_files(dataset)
    entries: list[storage.Entry] = []
    wants: list[parquet.Want] = []

    def listed() -> Iterator[parquet.Want]:
        for page in storage.list_pages(dataset):
            entries.extend(page)
            for e in page:
                stem, _, ext = e.name.partition(".")
                if ext == "parquet" and SHARD_STEM.match(stem):
                    wants.append(parquet.Want(e.url, stem, size=e.size))
                    yield wants[-1]

    for i, footer in enumerate(parquet.footers(listed(), window=FOOTER_WINDOW, faults=True)):
        footers[wants[i].url] = footer  # footer i comes after want i was listed
    return sorted(entries, key=lambda e: e.name)


def empty_reason(dataset: str, ignored: list[str], skipped: list[dict[str, str]]) -> str:
    """What a folder without shards holds instead: other files, invalid shards, and which of
    its subfolders hold shards (the dated drop under the drops root, for example)."""
    found = []
    if skipped:
        found.append(f"{_count(len(skipped), 'invalid shard')} skipped ({skipped[0]['reason']})")
    if ignored:
        found.append(f"{_count(len(ignored), 'other file')} ({preview(ignored, 3)})")
    with storage.reading(dataset, "listing"):
        folders = storage.list_folders(dataset)
        held = [f for f in folders[:LOOK_INTO] if _holds_shards(storage.join(dataset, f))]
    if held:
        names = ", ".join(f"{f}/" for f in held[:5]) + (", ..." if len(held) > 5 else "")
        verb = "holds" if len(held) == 1 else "hold"
        found.append(f"{_count(len(held), 'folder')} that {verb} shards ({names})")
    if len(folders) > len(held):
        unchecked = max(0, len(folders) - LOOK_INTO)
        found.append(
            _count(len(folders) - len(held), "other folder")
            + (f" ({unchecked} not looked into)" if unchecked else "")
        )
    what = ", ".join(found) if found else "the folder is empty"
    return f"no shards in {dataset}: {what}; pass allow_empty to accept an empty dataset"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _holds_shards(folder: str) -> bool:
    return any(
        e.name.endswith(".tar") and SHARD_STEM.match(e.name[: -len(".tar")])
        for e in storage.list_files(folder, missing_ok=True)
    )


def make_groups(
    shards: list[Shard], max_groups: int = MAX_GROUPS, group_bytes: int = GROUP_BYTES
) -> list[list[Shard]]:
    """Contiguous runs of shards balanced by tar bytes (``groups.balanced_runs``)."""
    runs = balanced_runs([s.tar_bytes for s in shards], max_groups, group_bytes)
    return [shards[r.start : r.stop] for r in runs]


def input_group(group: list[Shard], dataset: str, manifest_url: str | None) -> dict[str, Any]:
    """The small XCom value a mapped task receives for a group of input shards."""
    extra: dict[str, Any] = {"bytes": sum(s.tar_bytes for s in group), "dataset": dataset}
    if manifest_url:
        extra["manifest"] = manifest_url
    ids = [s.id for s in group]
    return group_value("shards", ids, group[0].stem, group[-1].stem, **extra)


def load_manifest(url: str) -> Manifest:
    try:
        return Manifest.from_json(storage.read_bytes(url).decode())
    except FileNotFoundError:
        raise UsageError(f"dataset manifest {url} does not exist: run discover first") from None


def shards_of(
    dataset: str, manifest: Manifest | str | None = None, *, on_invalid: str = "error"
) -> Manifest:
    """The dataset's shards as ``discover`` saw them: its manifest (an object, or the URI it
    wrote, which every group's XCom carries), so a step lists nothing and sees the same shards
    as every other task of the run; without one, one listing now."""
    if manifest is None:
        return discover(dataset, count_records=False, on_invalid=on_invalid)
    if isinstance(manifest, str):
        url, manifest = manifest, load_manifest(manifest)
    else:
        url = "the manifest given"
    if manifest.dataset.rstrip("/") != dataset.rstrip("/"):
        raise UsageError(f"{url} is the manifest of {manifest.dataset}, not of {dataset}")
    return manifest


def save_manifest(manifest: Manifest, url: str) -> None:
    storage.write_bytes(url, manifest.to_json().encode())
