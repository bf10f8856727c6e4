"""Deterministic tar writer: fixed headers, ``.idx`` entries and sha256 computed while writing.

Headers are POSIX ustar with mtime 0, uid/gid 0, mode 0644 and empty user/group names, so the same
members always give the same bytes. Names longer than 100 bytes get a GNU ``L`` long-name header,
which every reader we care about (tarfile, webdataset, DALI, GNU tar) understands. Headers are
built from a template instead of ``tarfile.TarInfo.tobuf`` because that costs tens of microseconds
per member, which is most of the time of a reshard of small files.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zlib
from typing import IO

from airflow_curator.core.tarstream import BLOCK, Member

logger = logging.getLogger(__name__)

ZEROS = bytes(BLOCK)
END_OF_ARCHIVE = bytes(2 * BLOCK)
IOV_MAX = 1024
WRITE_BATCH = 1 << 20  # bytes gathered per writev: few calls, data still in the CPU cache
MAX_OCTAL_SIZE = 8**11 - 1  # what 11 octal digits hold; larger sizes use GNU base-256


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


USTAR = _template(b"ustar\x0000", b"0")
GNU_REGULAR = _template(b"ustar  \x00", b"0")
GNU_LONG = _template(b"ustar  \x00", b"L")
GNU_LONG[0:13] = b"././@LongLink"


def _size_field(size: int) -> bytes:
    if size <= MAX_OCTAL_SIZE:
        return b"%011o\x00" % size
    return b"\x80" + size.to_bytes(11, "big")


def _checksum(h: bytearray) -> None:
    """Byte sum with the checksum field as spaces (adler32's low half is 1 + the sum here)."""
    total = (zlib.adler32(h[:256]) & 0xFFFF) + (zlib.adler32(h[256:]) & 0xFFFF) - 2
    h[148:156] = b"%06o\x00 " % total


def header(name: str, size: int) -> bytes:
    """The header block(s) of a regular file ``name`` of ``size`` bytes."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= 100:
        h = bytearray(USTAR)
        h[0 : len(raw)] = raw
        h[124:136] = _size_field(size)
        _checksum(h)
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


class TarWriter:
    """Appends members to a binary file; keeps the members (for the ``.idx``) and a sha256.

    Headers, data and padding of several records go out in one ``writev`` straight from the
    caller's buffers, so member bytes are never copied in Python; each record is hashed as it is
    added, while its bytes are still in the CPU cache.
    """

    def __init__(self, f: IO[bytes], *, checksum: bool = True) -> None:
        self.f = f
        self.pos = 0
        self.members: list[Member] = []
        self.sha = hashlib.sha256() if checksum else None
        self._out: list[bytes | memoryview] = []
        self._out_bytes = 0
        self.fd: int | None = None
        try:
            fd = f.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            fd = None
        if fd is not None and hasattr(os, "writev"):
            f.flush()  # from here on everything goes through the descriptor
            self.fd = fd

    def add_record(self, items: list[tuple[str, bytes | memoryview]]) -> None:
        """Write members (a record's, in the given order); written in batches of records."""
        bufs: list[bytes | memoryview] = []
        pos = self.pos
        for name, data in items:
            size = len(data)
            head = header(name, size)
            self.members.append(Member(name, pos, pos + len(head), size))
            pad = -size % BLOCK
            bufs.append(head)
            bufs.append(data)
            if pad:
                bufs.append(ZEROS[:pad])
            pos += len(head) + size + pad
        self._write(bufs, pos - self.pos)
        self.pos = pos

    def add(self, name: str, data: bytes | memoryview) -> Member:
        """Write one member; ``data`` is copied as is."""
        self.add_record([(name, data)])
        return self.members[-1]

    def _write(self, bufs: list[bytes | memoryview], total: int) -> None:
        if self.sha is not None:
            for b in bufs:
                self.sha.update(b)
        if self.fd is None:
            for b in bufs:
                self.f.write(b)
            return
        self._out.extend(bufs)  # several records per system call
        self._out_bytes += total
        if len(self._out) >= IOV_MAX or self._out_bytes >= WRITE_BATCH:
            self._flush()

    def _flush(self) -> None:
        bufs, self._out, self._out_bytes = self._out, [], 0
        for i in range(0, len(bufs), IOV_MAX):
            chunk = bufs[i : i + IOV_MAX]
            want = sum(len(b) for b in chunk)
            done = os.writev(self.fd, chunk)  # type: ignore[arg-type]
            if done < want:  # short write (rare on files): finish it plainly
                rest = memoryview(b"".join(chunk))[done:]
                while rest:
                    rest = rest[os.write(self.fd, rest) :]  # type: ignore[arg-type]

    def close(self) -> None:
        """End-of-archive marker (two zero blocks), then write out what is buffered."""
        self._write([END_OF_ARCHIVE], len(END_OF_ARCHIVE))
        self.pos += len(END_OF_ARCHIVE)
        if self._out:
            self._flush()

    @property
    def sha256(self) -> str | None:
        return self.sha.hexdigest() if self.sha is not None else None
