"""Streaming tar reader: member names and data offsets from large sequential reads.

Handles ustar, GNU (``L`` long names) and PAX (``x`` extended headers) archives. It parses the
512-byte headers itself instead of using ``tarfile`` so that indexing a shard costs little more
than reading it: data are skipped inside big buffered chunks, never seeked over header by header.
"""

from __future__ import annotations

import contextlib
import io
import logging
import mmap
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from airflow_curator.core.errors import TarFormatError
from airflow_curator.core.io.storage import Reader

logger = logging.getLogger(__name__)

BLOCK = 512
CHUNK = 4 << 20
ZERO_BLOCK = bytes(BLOCK)
REGULAR = (ord("0"), 0, ord("7"))
GNU_LONGNAME = ord("L")
GNU_LONGLINK = ord("K")
PAX_HEADER = ord("x")
PAX_GLOBAL = ord("g")
USTAR_MAGIC = b"ustar\x00"


@dataclass(slots=True)
class Member:
    """A regular file in the archive. ``offset`` is where its first header (or preamble) starts."""

    name: str
    offset: int
    data_offset: int
    size: int

    @property
    def end(self) -> int:
        """Offset just past the member's padded data."""
        return self.data_offset + (self.size + BLOCK - 1) // BLOCK * BLOCK


def _octal(field: bytes, what: str, pos: int) -> int:
    if field[0] & 0x80:  # GNU base-256 for large values
        value = int.from_bytes(field[1:], "big")
        return -value if field[0] & 0x40 else value
    text = field.split(b"\x00", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarFormatError(
            f"invalid {what} field {text!r} in tar header at offset {pos}"
        ) from None


def _checksum_ok(header: bytes, pos: int) -> bool:
    """Header checksum: byte sum with the checksum field read as spaces.

    Adler-32's low half is 1 + the byte sum mod 65521; over 256 bytes (at most 65,280) that is
    exact, so two C calls replace a Python loop over 512 bytes.
    """
    total = (zlib.adler32(header[:256]) & 0xFFFF) + (zlib.adler32(header[256:]) & 0xFFFF) - 2
    try:
        stored = _octal(header[148:156], "checksum", pos)
    except TarFormatError:
        return False
    return total - sum(header[148:156]) + 8 * 32 == stored


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def parse_pax(data: bytes, pos: int) -> dict[str, str]:
    """PAX records ``"<len> <key>=<value>\\n"``."""
    out: dict[str, str] = {}
    i = 0
    while i < len(data) and data[i] != 0:
        space = data.find(b" ", i)
        if space < 0:
            raise TarFormatError(f"malformed PAX header at offset {pos}")
        try:
            length = int(data[i:space])
        except ValueError:
            raise TarFormatError(f"malformed PAX record length at offset {pos}") from None
        record = data[space + 1 : i + length - 1]
        key, sep, value = record.partition(b"=")
        if not sep or length <= 0:
            raise TarFormatError(f"malformed PAX record at offset {pos}")
        out[_decode(key)] = _decode(value)
        i += length
    return out


class TarScanner:
    """Walks an archive's headers from a binary file object opened at offset 0.

    A local file is memory-mapped (the kernel reads ahead sequentially and nothing is copied);
    other file objects are read in large chunks.
    """

    _mapped: mmap.mmap  # the file, when it is memory-mapped

    def __init__(
        self, f: Reader, total_size: int | None = None, source: str = "", chunk: int = CHUNK
    ) -> None:
        self.f = f
        self.mm = _mmap(f)
        self._get: Callable[[int, int], bytes] = self._get_buffered
        if self.mm is not None:
            total_size = len(self.mm)
            self._mapped = self.mm
            self._get = self._get_mapped
        self.source = source or getattr(f, "name", "<tar>")
        self.total = total_size
        self.chunk = chunk
        self.buf = bytearray(chunk)
        self.view = memoryview(self.buf)
        self.start = 0  # archive offset of buf[0]
        self.filled = 0  # valid bytes in buf
        self.file_pos = 0  # where the file object is
        self.bytes_read = 0
        self.complete = False  # saw the end-of-archive marker

    def _fill_from(self, pos: int) -> None:
        """Make the buffer start at ``pos`` (keeping bytes already there), then top it up."""
        end = self.start + self.filled
        if self.start <= pos < end:
            keep = end - pos
            self.buf[:keep] = self.view[pos - self.start : self.filled]
        else:
            keep = 0
            if pos != self.file_pos:
                gap = pos - self.file_pos
                if 0 < gap < self.chunk:  # stay sequential: read through small gaps
                    while gap:
                        n = self._readinto(self.view[: min(gap, self.chunk)])
                        if not n:
                            break
                        gap -= n
                else:
                    self.f.seek(pos)
                    self.file_pos = pos
        self.start = pos
        self.filled = keep
        while self.filled < self.chunk:
            n = self._readinto(self.view[self.filled :])
            if not n:
                break
            self.filled += n

    def _readinto(self, target: memoryview) -> int:
        n = self.f.readinto(target)
        n = n or 0
        self.file_pos += n
        self.bytes_read += n
        return n

    def _get_buffered(self, pos: int, n: int) -> bytes:
        """Bytes ``[pos, pos+n)`` of the archive (fewer at end of file)."""
        if n > self.chunk:
            if self.file_pos != pos:
                self.f.seek(pos)
            data = self.f.read(n)
            self.file_pos = pos + len(data)
            self.bytes_read += len(data)
            self.filled = 0
            return data
        if not (self.start <= pos and pos + n <= self.start + self.filled):
            self._fill_from(pos)
        i = pos - self.start
        return bytes(self.view[i : i + min(n, self.filled - i)])

    def _get_mapped(self, pos: int, n: int) -> bytes:
        self.bytes_read = max(self.bytes_read, pos + n)
        return self._mapped[pos : pos + n]

    def close(self) -> None:
        if self.mm is not None:
            self.mm.close()
            self.mm = None

    def _truncated(self, what: str, pos: int, need: int) -> TarFormatError:
        return TarFormatError(
            f"{self.source}: truncated tar: {what} at offset {pos} needs {need} bytes "
            f"but the file ends at {self.total if self.total is not None else 'less'}"
        )

    def members(self, with_data: bool = False) -> Iterator[tuple[Member, bytes | None]]:
        """Regular file members in archive order, with their bytes when ``with_data``."""
        pos = 0
        first = 0  # offset of the current member's first header (GNU/PAX preamble included)
        long_name: str | None = None
        pax: dict[str, str] = {}
        get, total, adler32 = self._get, self.total, zlib.adler32  # hot loop: locals
        while True:
            header = get(pos, BLOCK)
            if len(header) < BLOCK:
                if header:
                    raise self._truncated("header", pos, BLOCK)
                logger.warning("%s: no end-of-archive marker at offset %d", self.source, pos)
                return
            if header == ZERO_BLOCK:
                self.complete = True
                return
            # checksum inlined (see _checksum_ok): this loop runs once per member
            field = header[148:156]
            byte_sum = (adler32(header[:256]) & 0xFFFF) + (adler32(header[256:]) & 0xFFFF) - 2
            try:
                ok = byte_sum - sum(field) + 256 == int(field.split(b"\x00", 1)[0] or b"0", 8)
            except ValueError:
                ok = False
            if not ok:
                raise TarFormatError(
                    f"{self.source}: invalid tar header at offset {pos} (bad checksum)"
                )
            field = header[124:136]
            if field[0] & 0x80:
                size = _octal(field, "size", pos)
            else:
                try:
                    size = int(field.split(b"\x00", 1)[0] or b"0", 8)
                except ValueError:
                    size = _octal(field, "size", pos)  # raises naming the field
            kind = header[156]
            data_pos = pos + BLOCK
            if kind in (GNU_LONGNAME, GNU_LONGLINK, PAX_HEADER, PAX_GLOBAL):
                payload = get(data_pos, size)
                if len(payload) < size:
                    raise self._truncated("extended header", pos, size)
                if kind == GNU_LONGNAME:
                    long_name = _decode(payload.split(b"\x00", 1)[0])
                elif kind == PAX_HEADER:
                    pax = parse_pax(payload, pos)
                pos = data_pos + (size + BLOCK - 1) // BLOCK * BLOCK
                continue
            if "size" in pax:
                size = int(pax["size"])
            if kind in REGULAR:
                if long_name is not None:
                    name = long_name
                elif "path" in pax:
                    name = pax["path"]
                else:
                    name = _decode(header[:100].split(b"\x00", 1)[0])
                    if header[257:263] == USTAR_MAGIC and header[345] != 0:
                        name = _decode(header[345:500].split(b"\x00", 1)[0]) + "/" + name
                if total is not None and data_pos + size > total:
                    raise self._truncated(f"member {name!r}", pos, size)
                member = Member(name, first, data_pos, size)
                data = None
                if with_data:
                    data = get(data_pos, size)
                    if len(data) < size:
                        raise self._truncated(f"member {name!r}", pos, size)
                yield member, data
            pos = data_pos + (size + BLOCK - 1) // BLOCK * BLOCK
            first = pos
            long_name = None
            pax = {}


def _mmap(f: Reader) -> mmap.mmap | None:
    """Map a local file whose pages are cached; cold files are read in chunks instead, which
    keeps the kernel's sequential read-ahead (mapping them faults page by page)."""
    try:
        fd = f.fileno()
        size = os.fstat(fd).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    if size == 0 or not _cached(fd, size):
        with contextlib.suppress(AttributeError, OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return None
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None


def file_cached(path: str) -> bool:
    """Whether a local file looks resident in the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _cached(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _cached(fd: int, size: int) -> bool:
    """Whether a few probes across the file hit the page cache (RWF_NOWAIT fails otherwise)."""
    flag = getattr(os, "RWF_NOWAIT", None)
    if flag is None:
        return True
    probe = bytearray(BLOCK)
    for offset in (0, size // 3, 2 * size // 3, max(0, size - BLOCK)):
        try:
            if os.preadv(fd, [probe], offset - offset % 4096, flag) <= 0:
                return False
        except BlockingIOError:
            return False
        except OSError:
            return True  # the probe itself is unsupported here: assume cached
    return True
