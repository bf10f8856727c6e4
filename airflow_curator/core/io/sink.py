"""Where a writer's staged bytes go: a file descriptor (optionally with direct I/O) or a file.

Direct I/O (``O_DIRECT``) moves a big output straight from the staging buffer to the disk: no
copy into the page cache, no dirty pages to flush later, almost no CPU. Full buffers are written
by a background thread, in order, while the caller fills the next one of a small ring, so the
disk and the CPU work at the same time and a slow moment of the disk does not stop the caller.
Direct writes must be whole aligned blocks from aligned memory: the staging buffers are
page-aligned memory maps, the unaligned rest of a batch is carried over to the next one, and the
tail of the file is written through the page cache at the end. A file system that refuses direct
I/O gets ordinary writes of the same bytes.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

logger = logging.getLogger(__name__)

ALIGN = 4096  # covers 512- and 4096-byte logical blocks
RING = 4  # staging buffers with direct I/O: one being filled, the others in flight


def _descriptor(f: IO[bytes]) -> int | None:
    try:
        fd = f.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    f.flush()  # from here on everything goes through the descriptor
    return fd


class Sink:
    """Staging buffers of ``size`` bytes; ``view`` is the one being filled."""

    def __init__(self, f: IO[bytes], size: int, *, direct: bool = False) -> None:
        self.f = f
        self.fd = _descriptor(f)
        self.direct = False
        if direct and self.fd is not None and hasattr(os, "O_DIRECT"):
            with contextlib.suppress(OSError, ValueError):
                if os.lseek(self.fd, 0, os.SEEK_CUR) % ALIGN == 0:
                    self._set_direct(True)
        # page-aligned memory for direct I/O
        self.buffers: list[Any] = (
            [mmap.mmap(-1, size) for _ in range(RING)] if self.direct else [bytearray(size)]
        )
        self.views = [memoryview(b) for b in self.buffers]
        self.current = 0
        self.pool: ThreadPoolExecutor | None = None
        self.pending: list[Future | None] = [None] * len(self.buffers)

    @property
    def view(self) -> memoryview:
        return self.views[self.current]

    @property
    def buffer(self) -> bytearray | mmap.mmap:
        """The buffer behind ``view`` (slice assignment on it skips making a view)."""
        return self.buffers[self.current]

    def _set_direct(self, on: bool) -> None:
        import fcntl

        assert self.fd is not None
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        flags = flags | os.O_DIRECT if on else flags & ~os.O_DIRECT
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags)
        self.direct = on

    def emit(self, n: int) -> int:
        """Hand over the first ``n`` bytes of ``view``. Returns how many of them were carried
        over to the start of the (new) ``view`` instead: direct writes take whole blocks."""
        if not self.direct:
            self._wait_all()  # a refused direct write may have switched modes midway
            self._write(self.view[:n])
            return 0
        whole = n - n % ALIGN
        old = self.view
        if whole:
            if self.pool is None:
                self.pool = ThreadPoolExecutor(1, thread_name_prefix="curator-write")
            self.pending[self.current] = self.pool.submit(self._write, old[:whole])
        self.current = (self.current + 1) % len(self.buffers)
        self._wait(self.current)  # the next buffer is free once its last write is done
        carry = n - whole
        self.view[:carry] = old[whole:n]
        return carry

    def _wait(self, i: int) -> None:
        pending, self.pending[i] = self.pending[i], None
        if pending is not None:
            pending.result()

    def _wait_all(self) -> None:
        for i in range(len(self.pending)):  # submitted in this order: the oldest first
            self._wait((self.current + 1 + i) % len(self.pending))

    def _write(self, data: memoryview) -> None:
        if self.fd is None:
            self.f.write(bytes(data))  # the buffer is reused: the file must not keep a view
            return
        while data:
            try:
                done = os.write(self.fd, data)
            except OSError as e:
                if not (self.direct and e.errno == errno.EINVAL):
                    raise
                logger.debug("direct I/O refused (%s): writing through the page cache", e)
                self._set_direct(False)
                continue
            data = data[done:]

    def abort(self) -> None:
        """Stop after a failure: let writes in flight finish (their errors no longer matter),
        so none lands after the caller has closed the file and its descriptor is reused."""
        for i in range(len(self.pending)):
            with contextlib.suppress(Exception):
                self._wait(i)
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def close(self, n: int) -> None:
        """Write the last ``n`` bytes of ``view`` and wait for every write to finish."""
        try:
            self._wait_all()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)
        if self.direct:
            self._set_direct(False)  # the unaligned tail goes through the page cache
        self._write(self.view[:n])
