"""Shared bits of the benchmark scripts: whole-process timing and page-cache control."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

BIN = os.path.dirname(sys.executable)


_SCRATCH: list[tempfile.TemporaryDirectory] = []


def scratch_dir(given: str | None, prefix: str) -> str:
    """``given`` (a folder the user keeps), or a temporary one that is removed when the script
    ends, however it ends."""
    if given:
        return given
    _SCRATCH.append(tempfile.TemporaryDirectory(prefix=prefix))
    return _SCRATCH[-1].name


def tool(name: str) -> str:
    """A console script of this virtual environment (airflow-curator, wds2idx)."""
    return os.path.join(BIN, name)


def run(argv: Sequence[str], **kw) -> None:
    subprocess.run(list(argv), check=True, stdout=subprocess.DEVNULL, **kw)


def timed(fn: Callable[[], None], repeat: int, before: Callable[[], None] | None = None) -> float:
    """Median wall time of ``fn`` over ``repeat`` runs (``before`` runs untimed each time)."""
    times = []
    for _ in range(repeat):
        if before:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def drop_cache(paths: Sequence[str]) -> None:
    """Evict files from the page cache (no root needed: fadvise DONTNEED on clean pages)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_cache(paths: Sequence[str]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(8 << 20):
                pass


def cat(paths: Sequence[str]) -> None:
    with open(os.devnull, "wb") as null:
        subprocess.run(["cat", *paths], check=True, stdout=null)
