"""Kept input records by id: member locations (the input ``.idx`` or a header scan, both by
the one record grouping) and byte ranges.

A local tar is read a record at a time with ``preadv``; an object-store tar in merged ranges, a
batch of records at a time. An input index is checked cheaply against a local tar before use and
replaced by a scan when it is stale.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping

from airflow_curator.core.errors import DataError, TarFormatError
from airflow_curator.core.io import storage
from airflow_curator.core.wds.index import Location, read_index
from airflow_curator.core.wds.records import iter_records
from airflow_curator.core.wds.tarstream import BLOCK, _checksum_ok, _octal

logger = logging.getLogger(__name__)

MERGE_GAP = 1 << 20  # read through gaps smaller than this rather than issue another request


def scan_locations(tar_url: str, size: int, shard: str) -> dict[str, Location]:
    """Record id -> member locations from one pass over the tar headers."""
    return {
        r.id: sorted((ext, m.data_offset, m.size) for ext, m in r.parts.items())
        for r in iter_records(tar_url, shard, with_data=False, size=size)
    }


def record_locations(
    tar_url: str, size: int, shard: str, idx_url: str | None = None
) -> Mapping[str, Location]:
    """Where each record's members are: from the shard's fresh ``.idx`` when there is one
    (reshard checks it against the tar with ``index_matches``), else one header scan."""
    return read_index(idx_url, shard) if idx_url else scan_locations(tar_url, size, shard)


def index_matches(
    source: TarSource, locations: Mapping[str, Location], kept: list[str], checks: int = 64
) -> bool:
    """Cheap check of an input index against its tar: before the first member of evenly spread
    kept records (``checks`` of them) there must be a valid tar header of that member's size. A
    stale index (the tar was rewritten) fails it. On an object store the header blocks come from
    the bytes the source has prefetched, the others in merged ranges read together."""
    if not kept:
        return True
    step = max(1, len(kept) // checks)
    sample = [locations[rid][0] for rid in kept[::step] + kept[-1:] if rid in locations]
    # records missing from the index are reported by the writer
    if any(off < BLOCK or off + size > source.size for _, off, size in sample):
        return False
    heads = source.blocks([off - BLOCK for _, off, _ in sample])
    for head, (_, off, size) in zip(heads, sample, strict=True):
        if len(head) < BLOCK or not _checksum_ok(head, off - BLOCK):
            return False
        with contextlib.suppress(TarFormatError):
            if _octal(head[124:136], "size", off) in (size, 0):  # 0: size in a PAX header
                continue
        return False
    return True


class TarSource:
    """Byte ranges of one input tar: positional reads locally, merged range reads elsewhere.

    Locally a record is read with one ``preadv`` into the writer's buffer rather than through
    a memory map: the bytes then cross memory once and are still in the CPU cache when they are
    hashed (hashing from a map measured ~1.5x the CPU; copying out of a map was no faster).
    """

    def __init__(self, url: str, size: int) -> None:
        """``size``: the tar's size as listed (a local file's own size is taken from it)."""
        self.url = url
        self.fd: int | None = None
        self.size = size
        self.cache: list[tuple[int, bytes]] = []
        if storage.is_local(url):
            self.fd = os.open(storage.local_path(url), os.O_RDONLY)
            self.size = os.fstat(self.fd).st_size

    def blocks(self, offsets: list[int]) -> list[bytes]:
        """The 512-byte blocks at ``offsets``: local reads, or merged ranges read together
        (fsspec's ``cat_ranges`` sends one request per range: blocks closer than
        ``MERGE_GAP`` share one)."""
        if self.fd is not None:
            return [os.pread(self.fd, BLOCK, off) for off in offsets]
        missing = [(off, BLOCK) for off in offsets if _within(self.cache, off, BLOCK) is None]
        ranges = self.cache + self._fetch(missing)  # the prefetched bytes first
        return [bytes(_within(ranges, off, BLOCK) or b"") for off in offsets]

    def prefetch(self, spans: list[tuple[int, int]]) -> None:
        """Fetch ``(offset, size)`` spans in few requests (no-op for a local file, or when the
        spans are fetched already)."""
        if self.fd is not None or not spans:
            return
        if all(_within(self.cache, off, size) is not None for off, size in spans):
            return
        self.cache = self._fetch(spans)

    def _fetch(self, spans: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        """The spans read as merged ranges, one request each, in flight together."""
        if not spans:
            return []
        merged: list[list[int]] = []
        for off, size in sorted(spans):
            if merged and off - merged[-1][1] <= MERGE_GAP:
                merged[-1][1] = max(merged[-1][1], off + size)
            else:
                merged.append([off, off + size])
        fs, path = storage.fs_and_path(self.url)
        blobs = fs.cat_ranges([path] * len(merged), [m[0] for m in merged], [m[1] for m in merged])
        return [(m[0], b) for m, b in zip(merged, blobs, strict=True)]

    def _pread(self, off: int, size: int) -> bytes:
        assert self.fd is not None
        data = os.pread(self.fd, size, off)
        if len(data) < size:
            raise DataError(f"{self.url}: bytes {off}+{size} are past the end of the file")
        return data

    def read(self, locs: Location) -> list[bytes | memoryview]:
        """The data of a record's members (in ``locs`` order)."""
        if self.fd is not None:
            lo = min(off for _, off, _ in locs)
            hi = max(off + size for _, off, size in locs)
            if hi - lo <= 2 * sum(size for _, _, size in locs) + 4 * BLOCK:  # contiguous
                blob = memoryview(self._pread(lo, hi - lo))
                return [blob[off - lo : off - lo + size] for _, off, size in locs]
            return [self._pread(off, size) for _, off, size in locs]
        return [self.get(off, size) for _, off, size in locs]

    def read_into(self, locs: Location, slots: list[memoryview]) -> bool:
        """Read a record laid out plainly (each member one header block, then its data and
        padding, the members back to back in any order) into ``slots``, the writer's header +
        data + padding views in ``locs`` order: one ``preadv`` reads the whole record, the input
        headers landing where the new headers go. False, reading nothing, for other layouts."""
        offsets = [off for _, off, _ in locs]
        order = sorted(range(len(locs)), key=offsets.__getitem__)
        start = at = offsets[order[0]] - BLOCK
        for i in order:
            size = locs[i][2]
            if offsets[i] != at + BLOCK or len(slots[i]) != BLOCK + size + (-size % BLOCK):
                return False
            at += len(slots[i])
        if start < 0 or at > self.size:
            return False  # a truncated last member: read its data alone
        views = [slots[i] for i in order]
        if self.fd is None:
            blob = memoryview(self.get(start, at - start))
            for v in views:
                v[:] = blob[: len(v)]
                blob = blob[len(v) :]
            return True
        if os.preadv(self.fd, views, start) != at - start:
            raise DataError(f"{self.url}: bytes {start}+{at - start} are past the end of the file")
        return True

    def get(self, off: int, size: int) -> bytes | memoryview:
        if self.fd is not None:
            return self._pread(off, size)
        cached = _within(self.cache, off, size)
        if cached is not None:
            return cached
        fs, path = storage.fs_and_path(self.url)
        return fs.cat_file(path, start=off, end=off + size)

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def _within(ranges: list[tuple[int, bytes]], off: int, size: int) -> memoryview | None:
    """Bytes ``off``..``off + size`` from the fetched ranges holding them; None if none does
    (or a range came back short: past the end of the object)."""
    for start, blob in ranges:
        if start <= off and off + size <= start + len(blob):
            return memoryview(blob)[off - start : off - start + size]
    return None
