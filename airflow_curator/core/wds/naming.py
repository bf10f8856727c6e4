"""Shard and record naming: ``00042.tar`` and record id ``000420031`` (shard + offset digits)."""

from __future__ import annotations

import posixpath
import re

from airflow_curator.core.errors import UsageError

SHARD_STEM = re.compile(r"^[0-9]+$")
SHARD_EXTS = ("tar", "parquet", "idx")


def shard_id(name: str) -> int | None:
    """Shard number of a file name like ``00042.tar`` (any folder), or None if it is not one."""
    stem = posixpath.basename(name).split(".", 1)[0]
    return int(stem) if SHARD_STEM.match(stem) else None


def offset_digits(samples_per_shard: int) -> int:
    """Digits needed for offsets 0..samples_per_shard-1 (10,000 -> 4, 1,500 -> 4, 1 -> 1)."""
    if samples_per_shard < 1:
        raise UsageError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    return len(str(samples_per_shard - 1))


def shard_name(index: int, max_shards: int = 5) -> str:
    """File stem of output shard ``index``; ``max_shards`` is the number of shard digits."""
    if index >= 10**max_shards:
        raise UsageError(f"shard {index} does not fit in {max_shards} digits (max_shards)")
    return f"{index:0{max_shards}d}"


def record_id(shard: int, offset: int, samples_per_shard: int = 10000, max_shards: int = 5) -> str:
    """Seed convention: shard digits followed by the zero-padded offset within the shard."""
    if not 0 <= offset < samples_per_shard:
        raise ValueError(f"offset {offset} outside 0..{samples_per_shard - 1}")
    return shard_name(shard, max_shards) + f"{offset:0{offset_digits(samples_per_shard)}d}"


def record_ids(
    shard: int, count: int, samples_per_shard: int = 10000, max_shards: int = 5
) -> list[str]:
    """The ids of the first ``count`` records of output ``shard`` (``record_id`` in bulk)."""
    if count > samples_per_shard:
        raise UsageError(f"{count} records do not fit a shard of {samples_per_shard}")
    prefix, width = shard_name(shard, max_shards), offset_digits(samples_per_shard)
    return [f"{prefix}{i:0{width}d}" for i in range(count)]


def split_member(name: str) -> tuple[str, str]:
    """The one member-key function: WebDataset key and extension, the key being the path up to
    the first dot of the basename (``a.b/0042.seg.png`` -> ``a.b/0042``, ``seg.png``)."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


def key_id(key: str) -> str:
    """A record's id: its key's basename (``sub/000420031`` -> ``000420031``)."""
    return key[key.rfind("/") + 1 :]
