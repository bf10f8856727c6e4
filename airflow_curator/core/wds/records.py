"""A tar shard as WebDataset records: members grouped by key, streamed one record at a time.

Follows webdataset's chain of small generators: tar members -> records. What to do with a bad
record is the caller's ``handler`` (raise by default), not try/excepts scattered downstream.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from airflow_curator.core.errors import ShardError, TarFormatError
from airflow_curator.core.io import storage
from airflow_curator.core.wds.naming import split_member
from airflow_curator.core.wds.tarstream import Member, TarScanner

logger = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass
class Record:
    """One sample: ``id`` is the key's basename (``000420031``), ``parts`` maps ext -> member."""

    key: str
    parts: dict[str, Member] = field(default_factory=dict)
    data: dict[str, bytes] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return posixpath.basename(self.key)

    def image_ext(self) -> str | None:
        for ext in IMAGE_EXTS:
            if ext in self.parts:
                return ext
        return None

    @property
    def start(self) -> int:
        return min(m.offset for m in self.parts.values())

    @property
    def end(self) -> int:
        return max(m.end for m in self.parts.values())


def raise_handler(error: ShardError) -> None:
    raise error


def group_records(
    members: Iterator[tuple[Member, bytes | None]],
    shard: str,
    handler: Callable[[ShardError], None] = raise_handler,
) -> Iterator[Record]:
    """Consecutive members with one key form a record; a key seen again later is an error."""
    seen: set[str] = set()
    current: Record | None = None
    for member, data in members:
        key, ext = split_member(member.name)
        if not ext or not posixpath.basename(key):
            logger.debug("shard %s: member %r is not part of a sample", shard, member.name)
            continue
        if current is not None and key == current.key:
            if ext in current.parts:
                handler(ShardError(shard, f"record {current.id}: duplicate member {member.name!r}"))
                continue
        else:
            if current is not None:
                yield current
            if key in seen:
                handler(
                    ShardError(
                        shard,
                        f"record {posixpath.basename(key)}: members are not "
                        f"contiguous in the tar (duplicate record)",
                    )
                )
            seen.add(key)
            current = Record(key)
        current.parts[ext] = member
        if data is not None:
            current.data[ext] = data
    if current is not None:
        yield current


def iter_records(
    tar_url: str,
    shard: str = "?",
    *,
    with_data: bool = True,
    size: int | None = None,
    handler: Callable[[ShardError], None] = raise_handler,
) -> Iterator[Record]:
    """Stream the records of one tar; memory is one record at a time."""
    with storage.open_read(tar_url) as f:
        scanner = TarScanner(f, size, source=tar_url)
        try:
            yield from group_records(scanner.members(with_data=with_data), shard, handler)
        except TarFormatError as e:
            raise ShardError(shard, str(e)) from None
        finally:
            scanner.close()
