"""Storage on any fsspec URL: one listing, range reads, and writes that never leave half files.

Local paths are written to a hidden temporary name in the same folder, fsynced and renamed.
Object stores get a single-object put of a finished local temporary file, which is atomic there.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from airflow_curator.core.errors import TransientError

logger = logging.getLogger(__name__)

TMP_MARK = ".tmp-"
Reader = io.FileIO | io.BufferedIOBase  # what open_read gives: read, readinto, seek
# Exceptions (by defining module and name, so nothing is imported to test for them) that mean
# the storage or the network failed, not the request or the data: retrying may help.
UNAVAILABLE = frozenset(
    {
        "aiohttp.client_exceptions.ClientError",
        "requests.exceptions.ConnectionError",
        "requests.exceptions.Timeout",
        "requests.exceptions.ChunkedEncodingError",
        "google.auth.exceptions.TransportError",
        "google.auth.exceptions.RefreshError",
        "google.api_core.exceptions.ServiceUnavailable",
        "google.api_core.exceptions.TooManyRequests",
        "google.api_core.exceptions.DeadlineExceeded",
        "google.api_core.exceptions.InternalServerError",
        "gcsfs.retry.ChecksumError",
    }
)
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})  # HTTP statuses worth a retry
NOT_UNAVAILABLE = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


@dataclass(frozen=True)
class Entry:
    """One file of a listing."""

    url: str
    name: str
    size: int
    mtime: float | None


def unavailable(error: BaseException) -> str | None:
    """The reason, when ``error`` from a storage call means the storage or the network is
    unavailable (refused, reset, timed out, throttled, a 5xx); None for anything else (a
    missing file, no permission, a bug), which retrying would not cure."""
    if isinstance(error, TransientError):
        return error.reason
    if isinstance(error, NOT_UNAVAILABLE):
        # fsspec's http turns a refused connection into FileNotFoundError "from" the real one
        cause = error.__cause__
        return unavailable(cause) if cause is not None and cause is not error else None
    text = str(error) or type(error).__name__
    status = getattr(error, "status", None) or getattr(error, "code", None)  # an HTTP answer
    if isinstance(status, int) and 400 <= status < 600:
        return text if status in RETRY_STATUS else None
    if isinstance(error, OSError):  # sockets, ConnectionError, TimeoutError, aiohttp's OS errors
        return None if text.startswith("Forbidden") else text  # gcsfs: 403 is an OSError
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(error).__mro__}
    return text if names & UNAVAILABLE else None


@contextlib.contextmanager
def reading(url: str, action: str = "reading") -> Iterator[None]:
    """Storage failures of a remote ``url`` inside become ``TransientError`` naming it (the
    error contract: never blame the data for a connection error). Wrap I/O only, never
    parsing: a parser's OSError is the data's fault. Local paths are left as they are."""
    if is_local(url):
        yield
        return
    try:
        yield
    except Exception as e:
        reason = unavailable(e)
        if reason is None or isinstance(e, TransientError):
            raise
        raise TransientError(url, reason, action) from e


def fs_and_path(url: str) -> tuple[Any, str]:
    import fsspec.core

    return fsspec.core.url_to_fs(url)


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def join(url: str, *parts: str) -> str:
    return posixpath.join(url.rstrip("/"), *parts)


def basename(url: str) -> str:
    return posixpath.basename(url.rstrip("/"))


def _mtime(info: dict[str, Any]) -> float | None:
    for key in ("mtime", "updated", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        with contextlib.suppress(ValueError):
            from datetime import datetime

            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    return None


def list_files(url: str, *, missing_ok: bool = False) -> list[Entry]:
    """All plain files directly in a folder, from one listing call (no per-file stat).
    ``missing_ok``: a folder that does not exist (yet) has no files."""
    if missing_ok:
        try:
            return list_files(url)
        except FileNotFoundError:
            return []
    if is_local(url):
        root = local_path(url)
        entries = []
        with os.scandir(root) as it:
            for d in it:
                if d.is_file(follow_symlinks=True):
                    st = d.stat()
                    entries.append(Entry(join(url, d.name), d.name, st.st_size, st.st_mtime))
        return sorted(entries, key=lambda e: e.name)
    fs, path = fs_and_path(url)
    entries = []
    for info in fs.ls(path, detail=True):
        if info.get("type") != "file":
            continue
        name = posixpath.basename(info["name"].rstrip("/"))
        entries.append(Entry(join(url, name), name, int(info.get("size") or 0), _mtime(info)))
    return sorted(entries, key=lambda e: e.name)


def list_folders(url: str) -> list[str]:
    """Names of the folders directly in a folder (sorted; none if it does not exist)."""
    try:
        if is_local(url):
            with os.scandir(local_path(url)) as it:
                return sorted(d.name for d in it if d.is_dir(follow_symlinks=True))
        fs, path = fs_and_path(url)
        infos = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    return sorted(
        posixpath.basename(i["name"].rstrip("/")) for i in infos if i.get("type") == "directory"
    )


def open_read(url: str, block_size: int = 8 << 20) -> Reader:
    """A binary file to read: unbuffered locally (callers read in large chunks), read ahead
    in ``block_size`` blocks elsewhere."""
    if is_local(url):
        return open(local_path(url), "rb", buffering=0)
    fs, path = fs_and_path(url)
    return fs.open(path, "rb", block_size=block_size, cache_type="readahead")


def read_bytes(url: str) -> bytes:
    with open_read(url) as f:
        return f.read()


def read_range(url: str, start: int, end: int) -> bytes:
    fs, path = fs_and_path(url)
    return fs.cat_file(path, start=start, end=end)


def exists(url: str) -> bool:
    if is_local(url):
        return os.path.exists(local_path(url))
    fs, path = fs_and_path(url)
    return fs.exists(path)


def makedirs(url: str) -> None:
    if is_local(url):
        os.makedirs(local_path(url), exist_ok=True)
    else:
        fs, path = fs_and_path(url)
        fs.makedirs(path, exist_ok=True)


def size(url: str) -> int:
    """Bytes in a file; FileNotFoundError when there is none."""
    if is_local(url):
        return os.stat(local_path(url)).st_size
    fs, path = fs_and_path(url)
    return int(fs.size(path))


def remove(url: str) -> None:
    if is_local(url):  # local paths skip fsspec's import (every step would pay for it)
        path = local_path(url)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return
    fs, path = fs_and_path(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def tmp_name(final_name: str) -> str:
    """Hidden temporary sibling name; discovery ignores it and commit sweeps leftovers."""
    return f".{final_name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def atomic_writer(url: str, *, fsync: bool = True) -> Iterator[IO[bytes]]:
    """A binary file that appears under ``url`` only once it is whole.

    ``fsync=False`` skips the flush to disk (still atomic against a crashed process); a caller
    that flushes later, e.g. reshard's commit via ``sync_file``, saves one disk wait per file."""
    if is_local(url):
        final = local_path(url)
        folder = os.path.dirname(final) or "."
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, tmp_name(os.path.basename(final)))
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                if fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, final)
            if fsync:
                _fsync_dir(folder)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return
    fs, path = fs_and_path(url)
    with tempfile.NamedTemporaryFile(prefix="curator-", suffix=".part") as f:
        yield f
        f.flush()
        fs.put_file(f.name, path)


def temporary_target(name: str) -> str | None:
    """The final name a temporary (``.NAME.tmp-PID-RAND``) was for, or None."""
    if not name.startswith(".") or TMP_MARK not in name:
        return None
    return name[1 : name.rindex(TMP_MARK)]


def sweep_temporaries(entries: list[Entry], finals: set[str]) -> int:
    """Remove temporaries that killed earlier attempts left for these final names.

    Only the caller's own outputs: mapped tasks write other names in the same folder at the same
    time, and one task writes a given name at a time (Airflow retries are sequential).
    """
    removed = 0
    for e in entries:
        if temporary_target(e.name) in finals:
            with contextlib.suppress(FileNotFoundError):
                remove(e.url)
                removed += 1
                logger.info("removed %s left by an interrupted attempt", e.url)
    return removed


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(url: str, data: bytes, *, fsync: bool = True) -> None:
    with atomic_writer(url, fsync=fsync) as f:
        f.write(data)


def sync_file(url: str) -> None:
    """Flush a local file (and its folder entry) to disk; object stores are durable already."""
    if not is_local(url):
        return
    path = local_path(url)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(os.path.dirname(path) or ".")


def same_bytes(url: str, data: bytes) -> bool:
    """Whether ``url`` exists and holds exactly ``data`` (so a rerun need not rewrite it)."""
    try:
        if size(url) != len(data):
            return False
        return read_bytes(url) == data
    except FileNotFoundError:
        return False


def copy_file(src: str, dst: str) -> None:
    with open_read(src) as fin, atomic_writer(dst) as fout:
        shutil.copyfileobj(fin, fout, 8 << 20)
