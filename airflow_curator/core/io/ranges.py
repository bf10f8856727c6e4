"""Many byte ranges of objects at once: one request each, hundreds in flight.

On an async fsspec filesystem (gcsfs, s3fs, http) every range is a coroutine on the
filesystem's own event loop, up to ``CONCURRENCY`` in flight (the connection pool is the limit
that is left); a synchronous one gets a thread pool, a local path ``pread``. Each range is one
request, never preceded by a size lookup: a whole object, a positional range, or a suffix (the
last ``n`` bytes), whose answer on gcsfs also tells the object's size (``Content-Range``), so a
Parquet footer of an object of unknown size is still one request.

Failures follow the error contract: a storage or network failure is ``TransientError`` naming
the URI; a missing object is ``FileNotFoundError`` naming it, or ``None`` with ``missing_ok``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from airflow_curator.core.errors import TransientError
from airflow_curator.core.io import gcs, storage

CONCURRENCY = gcs.POOL  # requests in flight per batch (a gs:// client has as many connections)
THREADS = 16  # for filesystems without an async API
RETRIES = 6  # attempts per request on gs://, as gcsfs makes
BACKOFF = 1.0  # seconds: attempt n waits BACKOFF * (random() + 2 ** (n - 1)), 32 s at most
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class Span:
    """What to read of ``url``: all of it (``start`` None), ``[start, end)``, or with a
    negative ``start`` and no ``end`` the last ``-start`` bytes."""

    url: str
    start: int | None = None
    end: int | None = None

    @classmethod
    def tail(cls, url: str, n: int, size: int | None = None) -> Span:
        """The last ``n`` bytes (all of a smaller object); positional when ``size`` is known."""
        if size is None:
            return cls(url, -n)
        return cls(url) if size <= n else cls(url, size - n, size)


@dataclass
class Got:
    """The bytes of a span and, when the answer says so, the whole object's size."""

    data: bytes
    size: int | None = None


def read_spans(
    spans: Sequence[Span], *, missing_ok: bool = False, action: str = "reading"
) -> list[Got | None]:
    """The spans' bytes, in order, fetched concurrently (one request each)."""
    out: list[Any] = [None] * len(spans)
    by_fs: dict[int, tuple[Any, list[int], list[str]]] = {}
    folders: dict[str, tuple[Any, str]] = {}  # resolving a URL costs fsspec ~0.1 ms: once
    for i, span in enumerate(spans):
        if storage.is_local(span.url):
            out[i] = _attempt(_local, span)
            continue
        folder, _, name = span.url.rpartition("/")
        if folder not in folders:
            folders[folder] = storage.fs_and_path(folder)
        fs, parent = folders[folder]
        path = f"{parent.rstrip('/')}/{name}"
        by_fs.setdefault(id(fs), (fs, [], []))
        by_fs[id(fs)][1].append(i)
        by_fs[id(fs)][2].append(path)
    for fs, indexes, paths in by_fs.values():
        todo = [(paths[k], spans[i]) for k, i in enumerate(indexes)]
        results = _run_async(fs, todo) if _is_async(fs) else _run_threads(fs, todo)
        for i, r in zip(indexes, results, strict=True):
            out[i] = r
    for i, r in enumerate(out):
        if isinstance(r, BaseException):
            _settle(r, spans[i].url, missing_ok, action)
            out[i] = None
    return out


def read_span(span: Span, *, action: str = "reading") -> Got:
    got = read_spans([span], action=action)[0]
    assert got is not None
    return got


def _settle(error: BaseException, url: str, missing_ok: bool, action: str) -> None:
    """Raise ``error`` the contract's way (return for a missing object with ``missing_ok``)."""
    reason = storage.unavailable(error)
    if reason is not None:
        raise TransientError(url, reason, action) from error
    if isinstance(error, FileNotFoundError):
        if missing_ok:
            return
        raise FileNotFoundError(errno.ENOENT, "no such object", url) from None
    raise error


def _attempt(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as e:
        return e


def _local(span: Span) -> Got:
    path = storage.local_path(span.url)
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        start, end = _bounds(span, size)
        return Got(os.pread(f.fileno(), end - start, start), size)


def _bounds(span: Span, size: int) -> tuple[int, int]:
    if span.start is None:
        return 0, size
    if span.start < 0:
        return max(0, size + span.start), size
    return min(span.start, size), min(size if span.end is None else span.end, size)


def _is_async(fs: Any) -> bool:
    from fsspec.asyn import AsyncFileSystem

    return isinstance(fs, AsyncFileSystem)


def _run_threads(fs: Any, todo: list[tuple[str, Span]]) -> list[Any]:
    def one(item: tuple[str, Span]) -> Any:
        path, span = item
        if span.start is not None and span.start < 0:
            size = int(fs.size(path))
            start, end = _bounds(span, size)
            return Got(fs.cat_file(path, start=start, end=end), size)
        return Got(fs.cat_file(path, start=span.start, end=span.end))

    if len(todo) == 1:
        return [_attempt(one, todo[0])]
    with ThreadPoolExecutor(min(THREADS, len(todo))) as pool:
        return list(pool.map(lambda item: _attempt(one, item), todo))


def _run_async(fs: Any, todo: list[tuple[str, Span]]) -> list[Any]:
    from fsspec.asyn import sync

    plain = _plain_gcs(fs)  # once per batch, not per range: tens of thousands at a time

    async def gather() -> list[Any]:
        # CONCURRENCY workers taking the next range as one finishes: a semaphore with tens of
        # thousands of waiters costs more CPU than the requests (Python 3.11 scans its waiters)
        out: list[Any] = [None] * len(todo)
        queue = iter(range(len(todo)))
        zonal: dict[str, bool] = {}  # per bucket

        async def worker() -> None:
            for i in queue:
                path, span = todo[i]
                try:
                    if plain:
                        bucket = path.partition("/")[0]
                        if bucket not in zonal:
                            zonal[bucket] = await _zonal(fs, path)
                        if not zonal[bucket]:
                            out[i] = await _gcs_get(fs, path, span)
                            continue
                    out[i] = await _get(fs, path, span)
                except Exception as e:
                    out[i] = e

        await asyncio.gather(*(worker() for _ in range(min(CONCURRENCY, len(todo)))))
        return out

    return sync(fs.loop, gather)


async def _get(fs: Any, path: str, span: Span) -> Got:
    """A range through the filesystem's own API (a suffix asks for the size first)."""
    if span.start is not None and span.start < 0:
        size = int((await fs._info(path))["size"])
        start, end = _bounds(span, size)
        return Got(await fs._cat_file(path, start=start, end=end), size)
    return Got(await fs._cat_file(path, start=span.start, end=span.end))


def _plain_gcs(fs: Any) -> bool:
    names = {f"{c.__module__}.{c.__name__}" for c in type(fs).__mro__}
    return "gcsfs.core.GCSFileSystem" in names


async def _zonal(fs: Any, path: str) -> bool:
    """Zonal buckets are read over gRPC by gcsfs's extended client: leave those to it."""
    check = getattr(fs, "_is_zonal_bucket", None)
    if check is None:
        return False
    return bool(await check(fs.split_path(path)[0]))


async def _gcs_get(fs: Any, path: str, span: Span) -> Got:
    """One GET of the JSON API's media URL, keeping the size its headers tell. Straight on
    gcsfs's session, with its headers (credentials included) and error mapping: its ``_call``
    (a retry decorator binding arguments by signature, URL templating, parsing the URL again)
    costs more client CPU than the request, and discovery makes tens of thousands. Retried as
    gcsfs retries: a connection failure or a retryable status, with backoff."""
    headers = {}
    if span.start is not None:
        if span.start < 0:
            headers["Range"] = f"bytes={span.start}"  # a suffix: bytes=-N
        elif span.end is None:
            headers["Range"] = f"bytes={span.start}-"
        elif span.end <= span.start:
            return Got(b"")
        else:
            headers["Range"] = f"bytes={span.start}-{span.end - 1}"
    answer, data = await _media_get(fs, path, headers)
    size = None
    match = _CONTENT_RANGE.match(answer.get("Content-Range", ""))
    if match and match.group(3) != "*":
        size = int(match.group(3))
    elif "Range" not in headers:
        size = len(data)
    return Got(data, size)


async def _media_get(fs: Any, path: str, headers: dict[str, str]) -> tuple[Any, bytes]:
    import aiohttp
    from gcsfs.retry import validate_response
    from yarl import URL

    bucket, _, key = path.partition("/")
    if "#" in key or not key:  # a generation, or not an object: gcsfs's own URL
        url = URL(fs.url(path), encoded=True)
    else:
        url = URL(
            f"{fs._location}/download/storage/v1/b/{quote(bucket, safe='')}/o/"
            f"{quote(key, safe='')}?alt=media",
            encoded=True,
        )
    await fs._set_session()
    for attempt in range(RETRIES):
        if attempt:
            await asyncio.sleep(min(BACKOFF * (random.random() + 2 ** (attempt - 1)), 32))
        try:
            async with fs.session.get(
                url, headers=fs._get_headers(headers), timeout=fs.requests_timeout
            ) as r:
                status, answer, data = r.status, r.headers, await r.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            if attempt == RETRIES - 1:
                raise
            continue
        if status in storage.RETRY_STATUS and attempt < RETRIES - 1:
            continue
        validate_response(status, data, f"{bucket}/{key}")  # 404, 403, ... as gcsfs raises
        return answer, data
    raise AssertionError("unreachable")
