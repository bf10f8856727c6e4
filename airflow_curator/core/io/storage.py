"""Storage on any fsspec URL: one listing, range reads, and writes that never leave half files.

Local files are written unnamed (``O_TMPFILE``; a hidden temporary name where the file system
has none), flushed, and linked under their name by one rename: a killed writer leaves nothing
behind but, in the instant between link and rename, a hidden temporary that discovery and commit
sweep. Object stores are written the way they are atomic: bytes in memory as one request (a
single-object put), a stream as a resumable upload that is finalised only when whole (one request
per chunk, no local copy); other fsspec filesystems from a local spool file that the next run
removes if a killed process left it. ``gs://`` goes through ``gcs`` (the gcsfs flag handling).
Every remote call's storage failure becomes ``TransientError`` naming the URI (``reading``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from airflow_curator.core.errors import TransientError

logger = logging.getLogger(__name__)

TMP_MARK = ".tmp-"
SPOOL = "airflow-curator-spool"  # local spool folders, <pid>-<random>, under the temp folder
STREAMED = frozenset({"gs", "gcs", "s3", "s3a", "az", "abfs", "abfss"})  # atomic uploads
DOWNLOAD_BLOCK = 64 << 20  # a download's ranged request
UPLOAD_BLOCK = 32 << 20  # a streamed upload's chunk: one request each (a multiple of 256 KiB)
Reader = io.RawIOBase | io.BufferedIOBase  # what open_read gives: read, readinto, seek
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
    if protocol(url) in ("gs", "gcs"):
        from airflow_curator.core.io import gcs

        return gcs.filesystem(url)
    import fsspec.core

    return fsspec.core.url_to_fs(url)


def protocol(url: str) -> str:
    return url.partition("://")[0] if "://" in url else "file"


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def join(url: str, *parts: str) -> str:
    return posixpath.join(url.rstrip("/"), *parts)


def basename(url: str) -> str:
    return posixpath.basename(url.rstrip("/"))


def _mtime_of(value: Any) -> float | None:
    """A listing's modification time: a number, a datetime, an ISO 8601 string (GCS's
    ``updated``), or a whole fsspec info dict (its first time field)."""
    if isinstance(value, dict):
        for key in ("mtime", "updated", "LastModified", "last_modified", "created"):
            if value.get(key) is not None:
                return _mtime_of(value[key])
        return None
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    with contextlib.suppress(ValueError):
        from datetime import datetime

        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    return None


def list_files(url: str, *, missing_ok: bool = False) -> list[Entry]:
    """All plain files directly in a folder, from one listing (no per-file stat), sorted by
    name. ``missing_ok``: a folder that does not exist (yet) has no files."""
    try:
        return sorted((e for page in list_pages(url) for e in page), key=lambda e: e.name)
    except FileNotFoundError:
        if missing_ok:
            return []
        raise


Pager = Callable[[Any, str], Iterator[list[tuple[str, int, Any]]]]
# Listing a folder page by page, per protocol: ``(fs, path)`` to pages of ``(name, size,
# mtime)``, each page as soon as the store answers it. Without one, a listing is one page.
PAGERS: dict[str, Pager] = {}


def list_pages(url: str) -> Iterator[list[Entry]]:
    """The plain files directly in a folder, page by page as the store answers (one request
    each on GCS): a caller can work on the first names while the rest are being listed (20,000
    shards are 40 pages, one after another). Locally, and on a filesystem without a pager, one
    page. A folder that does not exist is ``FileNotFoundError``; a storage failure
    ``TransientError`` naming the URI."""
    if is_local(url):
        yield _local_files(url)
        return
    fs, path = fs_and_path(url)
    folder = url.rstrip("/") + "/"  # join(url, name) for a name without "/": tens of thousands
    pager = PAGERS.get(protocol(url), _one_page)
    with reading(url, "listing"):
        for page in pager(fs, path):
            yield [Entry(folder + name, name, size, _mtime_of(mtime)) for name, size, mtime in page]


def _local_files(url: str) -> list[Entry]:
    entries = []
    with os.scandir(local_path(url)) as it:
        for d in it:
            if d.is_file(follow_symlinks=True):
                st = d.stat()
                entries.append(Entry(join(url, d.name), d.name, st.st_size, st.st_mtime))
    return entries


def _one_page(fs: Any, path: str) -> Iterator[list[tuple[str, int, Any]]]:
    """A filesystem without paging: its whole ``ls`` (cache refreshed) as one page."""
    infos = fs.ls(path, detail=True, refresh=True)
    yield [
        (info["name"].rstrip("/").rpartition("/")[2], int(info.get("size") or 0), info)
        for info in infos
        if info.get("type") == "file"
    ]


def _gcs_pages(fs: Any, path: str) -> Iterator[list[tuple[str, int, Any]]]:
    """gcsfs's JSON pages; gcsfs's cached listings of the folder go, as ``ls(refresh=True)``
    drops them, so its ``exists`` and ``ls`` after this do not answer from an older listing."""
    from airflow_curator.core.io import gcs

    fs.invalidate_cache(path)
    return gcs.list_pages(fs, path)


PAGERS.update(gs=_gcs_pages, gcs=_gcs_pages)


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


def open_read(url: str, block_size: int = 32 << 20, size: int | None = None) -> Reader:
    """A file to read sequentially: unbuffered locally (callers read in large chunks);
    elsewhere ``BlockReader``, one ranged request per ``block_size`` block (``size``, when the
    manifest knows it, saves the one request that finds it out)."""
    if is_local(url):
        return open(local_path(url), "rb", buffering=0)
    return BlockReader(url, info(url)["size"] if size is None else size, block_size)


class Seekable:
    """``seek``/``tell`` over ``pos`` and ``size``: the readers of fetched byte ranges."""

    pos: int
    size: int

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset + (0, self.pos, self.size)[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


class BlockReader(Seekable, io.RawIOBase):
    """A remote object read front to back: each block one ranged request (gcsfs's own file
    asks for the object's metadata first, two more requests, on every open), a read larger
    than a block one request of its own. Storage failures are ``TransientError`` naming the
    URI, so a parser reading it (pyarrow's, the tar scanner) never blames the data for them."""

    def __init__(self, url: str, size: int, block_size: int) -> None:
        super().__init__()
        self.url, self.size, self.block = url, size, max(1, block_size)
        self.pos = 0
        self.buf = memoryview(b"")
        self.buf_start = 0

    def _fetch(self, start: int, end: int) -> memoryview:
        from airflow_curator.core.io.ranges import Span, read_span

        return memoryview(read_span(Span(self.url, start, end)).data)

    def read(self, n: int | None = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        if end <= self.pos:
            return b""
        off = self.pos - self.buf_start
        if off >= 0 and end <= self.buf_start + len(self.buf):
            data = bytes(self.buf[off : off + end - self.pos])
        elif end - self.pos >= self.block:
            data = bytes(self._fetch(self.pos, end))
        else:
            head = bytes(self.buf[off:]) if 0 <= off < len(self.buf) else b""
            at = self.pos + len(head)
            self.buf = self._fetch(at, min(self.size, at + self.block))
            self.buf_start = at
            data = head + bytes(self.buf[: end - at])
        self.pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.buf = memoryview(b"")
        super().close()


def read_bytes(url: str) -> bytes:
    """The whole file: one request on an object store."""
    if is_local(url):
        with open(local_path(url), "rb") as f:
            return f.read()
    from airflow_curator.core.io.ranges import Span, read_span

    return read_span(Span(url)).data


def read_range(url: str, start: int, end: int) -> bytes:
    if is_local(url):
        with open(local_path(url), "rb", buffering=0) as f:
            return os.pread(f.fileno(), end - start, start)
    from airflow_curator.core.io.ranges import Span, read_span

    return read_span(Span(url, start, end)).data


def info(url: str) -> dict[str, Any]:
    """The object's metadata (size, and on object stores generation, etag, md5Hash...)."""
    if is_local(url):
        st = os.stat(local_path(url))
        return {"size": st.st_size, "mtime": st.st_mtime, "ino": st.st_ino, "type": "file"}
    fs, path = fs_and_path(url)
    with reading(url):
        if protocol(url) in ("gs", "gcs"):
            from airflow_curator.core.io import gcs

            return gcs.object_info(fs, path)
        return dict(fs.info(path))


def exists(url: str) -> bool:
    """A file or a folder (on an object store: a prefix with objects) is there."""
    if is_local(url):
        return os.path.exists(local_path(url))
    if is_file(url):
        return True
    fs, path = fs_and_path(url)
    with reading(url):
        return bool(fs.exists(path))


def is_file(url: str) -> bool:
    """A file is there: on an object store one metadata request."""
    if is_local(url):
        return os.path.isfile(local_path(url))
    try:
        info(url)
    except FileNotFoundError:
        return False
    return True


def makedirs(url: str) -> None:
    if is_local(url):
        os.makedirs(local_path(url), exist_ok=True)
    elif protocol(url) not in STREAMED:  # object stores have no folders to make
        fs, path = fs_and_path(url)
        with reading(url, "writing"):
            fs.makedirs(path, exist_ok=True)


def size(url: str) -> int:
    """Bytes in a file; FileNotFoundError when there is none."""
    return int(info(url)["size"])


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
    with reading(url, "removing"), contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)


def remove_file(url: str) -> bool:
    """Remove one file (one request on an object store); False when there was none."""
    if is_local(url):
        try:
            os.remove(local_path(url))
        except FileNotFoundError:
            return False
        return True
    fs, path = fs_and_path(url)
    try:
        with reading(url, "removing"):
            fs.rm_file(path)
    except FileNotFoundError:
        return False
    return True


def read_many(urls: list[str], *, missing_ok: bool = False) -> list[bytes | None]:
    """Whole small files, all requested at once (one request each)."""
    from airflow_curator.core.io.ranges import Span, read_spans

    return [
        None if g is None else g.data
        for g in read_spans([Span(u) for u in urls], missing_ok=missing_ok)
    ]


def tmp_name(final_name: str) -> str:
    """Hidden temporary sibling name; discovery ignores it and commit sweeps leftovers."""
    return f".{final_name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def atomic_writer(url: str, *, fsync: bool = True) -> Iterator[IO[bytes]]:
    """A binary file that appears under ``url`` only once it is whole.

    ``fsync=False`` skips the flush to disk (still atomic against a crashed process); a caller
    that flushes later, e.g. reshard's commit via ``sync_file``, saves one disk wait per file."""
    if is_local(url):
        with _local_writer(local_path(url), fsync) as f:
            yield f
        return
    fs, path = fs_and_path(url)
    if protocol(url) in STREAMED:
        with _upload(fs, path, url) as f:
            yield f
        return
    with spool() as folder:  # a filesystem whose writes are visible half-done: put it whole
        part = os.path.join(folder, "upload.part")
        with open(part, "wb") as f:
            yield f
        with reading(url, "writing"):
            fs.put_file(part, path)


@contextlib.contextmanager
def _upload(fs: Any, path: str, url: str) -> Iterator[IO[bytes]]:
    """An object-store upload, finalised on close only; on failure it is cancelled (nothing
    appears) and a storage failure is ``TransientError`` naming the URI."""
    writer = _Upload(fs, path, url)
    try:
        yield writer  # type: ignore[misc]
        writer.finish()
    except BaseException:
        writer.cancel()
        raise


class _Upload:
    """Bytes held in memory up to one chunk: an object smaller than that is one request
    (a simple upload) when it closes; a larger one becomes a resumable upload, one request
    to begin it and one per chunk (gcsfs's file alone begins a resumable upload, two
    requests, for even a small object)."""

    def __init__(self, fs: Any, path: str, url: str) -> None:
        self._fs, self._path, self._url = fs, path, url
        self._pending = bytearray()
        self._file: Any = None
        self._size = 0

    def write(self, data: Any) -> int:
        n = len(memoryview(data).cast("B"))
        self._size += n
        if self._file is None:
            self._pending += data
            if len(self._pending) < UPLOAD_BLOCK:
                return n
            with reading(self._url, "writing"):
                self._file = self._fs.open(self._path, "wb", block_size=UPLOAD_BLOCK)
            data, self._pending = self._pending, bytearray()
        with reading(self._url, "writing"):
            self._file.write(data)
        return n

    def finish(self) -> None:
        with reading(self._url, "writing"):
            if self._file is None:
                self._fs.pipe_file(self._path, bytes(self._pending))
            else:
                self._file.close()

    def cancel(self) -> None:
        self._pending = bytearray()
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.discard()  # cancels a resumable upload that has begun
            self._file.closed = True  # and never let close() (or the collector's) commit it

    def flush(self) -> None:
        """Nothing: an upload sends whole chunks as they fill (fsspec's flush of a partial
        chunk is a no-op too)."""

    def tell(self) -> int:
        return self._size

    def writable(self) -> bool:
        return True


@contextlib.contextmanager
def _local_writer(final: str, fsync: bool) -> Iterator[IO[bytes]]:
    folder = os.path.dirname(final) or "."
    os.makedirs(folder, exist_ok=True)
    fd = _unnamed(folder)
    tmp = os.path.join(folder, tmp_name(os.path.basename(final)))
    try:
        with open(fd if fd is not None else tmp, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
            if fd is not None:  # give the unnamed file a name, then the final one atomically
                _link(f.fileno(), tmp)
        os.replace(tmp, final)
        if fsync:
            _fsync_dir(folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _link(fd: int, path: str) -> None:
    """``linkat(AT_FDCWD, "/proc/self/fd/N", ..., AT_SYMLINK_FOLLOW)``: Python calls plain
    ``link`` unless a directory descriptor is given (the source path is absolute: it is unused)."""
    folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=folder, follow_symlinks=True)
    finally:
        os.close(folder)


def _unnamed(folder: str) -> int | None:
    """A file descriptor of a new file without a name in ``folder`` (Linux ``O_TMPFILE``:
    a killed writer leaves nothing), or None where the file system or the platform has none."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(folder, flag | os.O_WRONLY, 0o666)
    except OSError:
        return None


@contextlib.contextmanager
def spool(prefix: str = "") -> Iterator[str]:
    """A local scratch folder for this process (a remote tar copied for DALI, an upload for a
    filesystem without atomic writes), removed on exit; one a killed process left behind is
    removed by the next process that spools."""
    root = os.path.join(tempfile.gettempdir(), SPOOL)
    os.makedirs(root, exist_ok=True)
    sweep_spools(root)
    folder = tempfile.mkdtemp(prefix=f"{os.getpid()}-{prefix}", dir=root)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sweep_spools(root: str) -> int:
    """Remove spool folders of processes that are gone (killed before they could)."""
    removed = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(root) as it:
        for d in it:
            pid = d.name.partition("-")[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(d.path, ignore_errors=True)
                logger.info("removed %s, left by killed process %s", d.path, pid)
                removed += 1
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (a spool's or a lease's owner)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def download(url: str, local: str, size: int | None = None) -> None:
    """Copy ``url`` to the local path ``local`` atomically: on an object store one ranged
    request per 64 MB block (``size``, when the manifest knows it, saves the metadata
    request; gcsfs's own ``get_file`` asks for the metadata, and the first time for the name
    as a folder too)."""
    if is_local(url):
        copy_file(url, local)
        return
    with (
        open_read(url, block_size=DOWNLOAD_BLOCK, size=size) as fin,
        _local_writer(local, fsync=False) as fout,
    ):
        shutil.copyfileobj(fin, fout, DOWNLOAD_BLOCK)


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
    """Write ``data`` atomically: on an object store one request (below its 50 MB chunk)."""
    if is_local(url) or protocol(url) not in STREAMED:
        with atomic_writer(url, fsync=fsync) as f:
            f.write(data)
        return
    fs, path = fs_and_path(url)
    with reading(url, "writing"):
        fs.pipe_file(path, data)


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
    """Whether ``url`` exists and holds exactly ``data`` (so a rerun need not rewrite it). On
    an object store one metadata request: the size, then the stored MD5 when it has one."""
    try:
        meta = info(url)
    except FileNotFoundError:
        return False
    if int(meta.get("size") or 0) != len(data):
        return False
    md5 = meta.get("md5Hash")
    if isinstance(md5, str) and md5:
        return base64.b64decode(md5) == hashlib.md5(data, usedforsecurity=False).digest()
    try:
        return read_bytes(url) == data
    except FileNotFoundError:
        return False


def copy_file(src: str, dst: str) -> None:
    with open_read(src) as fin, atomic_writer(dst) as fout:
        shutil.copyfileobj(fin, fout, 8 << 20)
