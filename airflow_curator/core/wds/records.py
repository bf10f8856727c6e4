"""A tar shard as WebDataset records: members grouped by key, streamed one record at a time.

Follows webdataset's chain of small generators: tar members -> records. What to do with a bad
record is the caller's ``handler`` (raise by default), not try/excepts scattered downstream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from airflow_curator.core.errors import ShardError, TarFormatError
from airflow_curator.core.io import storage
from airflow_curator.core.wds.naming import key_id, split_member
from airflow_curator.core.wds.tarstream import Member, TarScanner

logger = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass(slots=True)
class Record:
    """One sample: ``key`` is its members' name up to the extension (``sub/000420031``), ``id``
    the key's basename (``000420031``), ``parts`` maps ext -> member in tar order."""

    key: str
    id: str
    parts: dict[str, Member] = field(default_factory=dict)
    data: dict[str, bytes] = field(default_factory=dict)

    def image_ext(self) -> str | None:
        for ext in IMAGE_EXTS:
            if ext in self.parts:
                return ext
        return None


def raise_handler(error: ShardError) -> None:
    raise error


def group_records(
    members: Iterable[tuple[Member, bytes | None]],
    shard: str,
    handler: Callable[[ShardError], None] = raise_handler,
) -> Iterator[Record]:
    """The one place where members become records, for the indexer, the readers and reshard
    alike (webdataset's ``group_by_keys``): consecutive members with one key (``split_member``)
    form a record. A hidden or extensionless member is part of no record. A second member with
    the same extension, and a record id seen before (its members are not contiguous, or two
    folders hold that id), are errors for ``handler``."""
    seen: set[str] = set()
    current: Record | None = None
    # current's key, parts and data as locals: this loop runs once per member
    current_key: str | None = None
    parts: dict[str, Member] = {}
    datas: dict[str, bytes] = {}
    for member, data in members:
        key, ext = split_member(member.name)
        if key == current_key:
            if ext in parts:
                handler(
                    ShardError(shard, f"record {key_id(key)}: duplicate member {member.name!r}")
                )
                continue
        elif not ext or not key or key[-1] == "/":
            logger.debug("shard %s: member %r is not part of a sample", shard, member.name)
            continue
        else:
            if current is not None:
                yield current
            rid = key_id(key)
            if rid in seen:
                handler(
                    ShardError(
                        shard,
                        f"record {rid}: members are not contiguous in the tar, or two folders "
                        "hold this id (duplicate record)",
                    )
                )
            seen.add(rid)
            current = Record(key, rid, {}, {})
            current_key, parts, datas = key, current.parts, current.data
        parts[ext] = member
        if data is not None:
            datas[ext] = data
    if current is not None:
        yield current


def iter_records(
    tar_url: str,
    shard: str = "?",
    *,
    with_data: bool = True,
    size: int | None = None,
    handler: Callable[[ShardError], None] = raise_handler,
    source: str | None = None,
) -> Iterator[Record]:
    """Stream the records of one tar; memory is one record at a time. ``source``: the URI
    errors name when ``tar_url`` is a local copy (the user knows the dataset's, not ours)."""
    with storage.open_read(tar_url, size=size) as f:
        scanner = TarScanner(f, size, source=source or tar_url)
        try:
            yield from group_records(scanner.members(with_data=with_data), shard, handler)
        except TarFormatError as e:
            raise ShardError(shard, str(e)) from None
        finally:
            scanner.close()
