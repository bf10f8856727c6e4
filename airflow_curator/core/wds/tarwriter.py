"""Deterministic tar writer: fixed headers, ``.idx`` entries and sha256 computed while writing.

Headers are POSIX ustar with mtime 0, uid/gid 0, mode 0644 and empty user/group names, so the same
members always give the same bytes. Names longer than 100 bytes get a GNU ``L`` long-name header,
which every reader we care about (tarfile, webdataset, DALI, GNU tar) understands. Headers are
built from a template instead of ``tarfile.TarInfo.tobuf`` because that costs tens of microseconds
per member, which is most of the time of a reshard of small files.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from typing import IO, cast

from airflow_curator.core.io.sink import Sink
from airflow_curator.core.wds.tarstream import BLOCK, Member

logger = logging.getLogger(__name__)

ZEROS = bytes(BLOCK)
PADS = [bytes(n) for n in range(BLOCK)]
END_OF_ARCHIVE = bytes(2 * BLOCK)
BATCH = 1 << 20  # bytes staged per hash call and write: few calls, data still in the CPU cache
MAX_OCTAL_SIZE = 8**11 - 1  # what 11 octal digits hold; larger sizes use GNU base-256
# a header's fixed parts around its key, size and checksum fields, and their byte sum
Template = tuple[bytes, bytes, bytes, int]


def _template(magic: bytes, typeflag: bytes) -> bytearray:
    h = bytearray(BLOCK)
    h[100:108] = b"0000644\x00"  # mode
    h[108:116] = b"0000000\x00"  # uid
    h[116:124] = b"0000000\x00"  # gid
    h[136:148] = b"00000000000\x00"  # mtime 0
    h[148:156] = b" " * 8  # checksum placeholder
    h[156:157] = typeflag
    h[257:265] = magic
    h[329:337] = b"0000000\x00"  # devmajor
    h[337:345] = b"0000000\x00"  # devminor
    return h


USTAR = bytes(_template(b"ustar\x0000", b"0"))
GNU_REGULAR = _template(b"ustar  \x00", b"0")
GNU_LONG = _template(b"ustar  \x00", b"L")
GNU_LONG[0:13] = b"././@LongLink"


def _size_field(size: int) -> bytes:
    if size <= MAX_OCTAL_SIZE:
        return b"%011o\x00" % size
    return b"\x80" + size.to_bytes(11, "big")


def _checksum(h: bytearray | memoryview) -> None:
    """Byte sum with the checksum field as spaces (adler32's low half is 1 + the sum here)."""
    total = (zlib.adler32(h[:256]) & 0xFFFF) + (zlib.adler32(h[256:]) & 0xFFFF) - 2
    h[148:156] = b"%06o\x00 " % total


def _fill_ustar(h: memoryview, raw: bytes, size: int) -> None:
    """Write the one-block ustar header of a name of at most 100 bytes into ``h``."""
    h[:] = USTAR
    h[0 : len(raw)] = raw
    h[124:136] = _size_field(size)
    _checksum(h)


def header(name: str, size: int) -> bytes:
    """The header block(s) of a regular file ``name`` of ``size`` bytes."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= 100:
        h = bytearray(BLOCK)
        _fill_ustar(memoryview(h), raw, size)
        return bytes(h)
    long = bytearray(GNU_LONG)
    payload = raw + b"\x00"
    long[124:136] = _size_field(len(payload))
    _checksum(long)
    pad = -len(payload) % BLOCK
    h = bytearray(GNU_REGULAR)
    h[0:100] = raw[:100]
    h[124:136] = _size_field(size)
    _checksum(h)
    return bytes(long) + payload + bytes(pad) + bytes(h)


def slot_size(size: int) -> int:
    """Bytes a member of ``size`` takes with a one-block header and its padding."""
    return BLOCK + size + (-size % BLOCK)


class TarWriter:
    """Appends members to a binary file; keeps the members (for the ``.idx``) and a sha256.

    Everything goes through a staging buffer that is hashed a batch at a time, while its bytes
    are still in the CPU cache, and then handed to a ``Sink``. ``reserve``/``commit`` let a
    caller read member data straight into the buffer (one copy from the input file to the
    output in all). ``direct=True`` writes a local file with direct I/O (see ``sink``).
    """

    def __init__(self, f: IO[bytes], *, checksum: bool = True, direct: bool = False) -> None:
        self.sink = Sink(f, BATCH, direct=direct)
        self.pos = 0  # bytes of the archive so far, staged ones included
        self.members: list[Member] = []
        self.sha = hashlib.sha256() if checksum else None
        self.view = self.sink.view
        self.n = 0  # staged bytes
        self.hashed = 0  # of those, already hashed (carried over by the sink)
        self._sizes: list[int] = []  # of the members reserved
        self._templates: dict[tuple[int, str], Template] = {}

    def reserve(self, sizes: list[int]) -> list[memoryview] | None:
        """Room for members of ``sizes`` with one-block headers (names of at most 100 bytes):
        a view per member of its header block, data and padding, for the caller to fill with
        the data (header and padding bytes are overwritten by ``commit``). None when the record
        does not fit in the buffer: then use ``add_record``. The views are valid until the next
        call of any other method."""
        spans = [BLOCK + s + (-s % BLOCK) for s in sizes]
        total = sum(spans)
        if self.n + total > BATCH:
            self._flush()
            if self.n + total > BATCH:
                return None
        view, at, slots = self.view, self.n, []
        for span in spans:
            slots.append(view[at : at + span])
            at += span
        self._sizes = sizes
        return slots

    def commit(self, key: str, exts: list[str]) -> bool:
        """Finish the reserved members, named ``key.ext`` (in ``reserve`` order). False, with
        nothing written, when a name does not fit a one-block header."""
        raw = key.encode("utf-8", "surrogateescape")
        templates = self._templates
        found = [templates.get((len(raw), ext)) or self._template(len(raw), ext) for ext in exts]
        if len(exts) != len(self._sizes) or None in found:
            return False
        key_sum = sum(raw)
        buf, at, pos = self.sink.buffer, self.n, self.pos
        for ext, size, parts in zip(exts, self._sizes, cast(list[Template], found), strict=True):
            after_key, middle, tail, base = parts
            size_field = b"%011o\x00" % size if size <= MAX_OCTAL_SIZE else _size_field(size)
            checksum = b"%06o\x00 " % (base + key_sum + sum(size_field))
            buf[at : at + BLOCK] = b"".join((raw, after_key, size_field, middle, checksum, tail))
            self.members.append(Member(f"{key}.{ext}", pos, pos + BLOCK, size))
            at += BLOCK + size
            pad = -size % BLOCK
            if pad:
                buf[at : at + pad] = PADS[pad]
                at += pad
            pos += BLOCK + size + pad
        self.n, self.pos = at, pos
        self._sizes = []
        return True

    def _template(self, key_len: int, ext: str) -> Template | None:
        """The fixed parts of the header of ``<key_len bytes>.ext`` around its key, size and
        checksum fields, and the byte sum of the fixed parts with the checksum as spaces: a
        header is then one join (three per record make this the writer's hot spot)."""
        suffix = f".{ext}".encode("utf-8", "surrogateescape")
        if key_len + len(suffix) > 100:
            return None
        h = bytearray(USTAR)
        h[key_len : key_len + len(suffix)] = suffix
        parts = (bytes(h[key_len:124]), bytes(h[136:148]), bytes(h[156:]), sum(h))
        self._templates[(key_len, ext)] = parts
        return parts

    def add_record(self, items: list[tuple[str, bytes | memoryview]]) -> None:
        """Append members (a record's, in the given order), copying each ``data`` as is."""
        for name, data in items:
            head = header(name, len(data))
            self.members.append(Member(name, self.pos, self.pos + len(head), len(data)))
            self._stage(head)
            self._stage(data)
            self._stage(ZEROS[: -len(data) % BLOCK])

    def _stage(self, data: bytes | memoryview) -> None:
        data = memoryview(data).cast("B")
        while data:
            if self.n == BATCH:
                self._flush()
            take = min(len(data), BATCH - self.n)
            self.view[self.n : self.n + take] = data[:take]
            self.n += take
            self.pos += take
            data = data[take:]

    def _hash(self) -> None:
        if self.sha is not None and self.n > self.hashed:
            self.sha.update(self.view[self.hashed : self.n])
        self.hashed = self.n

    def _flush(self) -> None:
        self._hash()
        self.n = self.hashed = self.sink.emit(self.n)
        self.view = self.sink.view

    def close(self) -> None:
        """End-of-archive marker (two zero blocks), then write out what is staged."""
        self._stage(END_OF_ARCHIVE)
        self._hash()
        self.sink.close(self.n)
        self.n = self.hashed = 0

    def abort(self) -> None:
        """Give up on the archive (the caller removes the file): waits for writes in flight."""
        self.sink.abort()

    @property
    def sha256(self) -> str | None:
        return self.sha.hexdigest() if self.sha is not None else None
