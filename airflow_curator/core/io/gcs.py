"""``gs://`` through gcsfs, without what an endpoint other than Google's would cost.

gcsfs 2026.x turns its zonal and hierarchical-namespace bucket support on by default
(``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT``, read once when ``gcsfs`` is imported): ``gcsfs.
GCSFileSystem`` is then ``ExtendedGcsFileSystem``, whose every open, read and upload first asks
the Storage Control gRPC API for the bucket's layout (``_lookup_bucket_type``). Real GCS answers
once per bucket and the answer is cached. An emulator or a proxy cannot answer: the call is
retried for up to 60 s (``gcsfs.retry.DEFAULT_RETRY_CONFIG``), ends as ``UNKNOWN``, and UNKNOWN
is never cached, so every call pays the minute again (measured against fake-gcs-server: 41-56 s
for a 10 KB upload, read or open that takes 3-11 ms without it).

So: with a custom endpoint (``STORAGE_EMULATOR_HOST``, or ``endpoint_url`` in fsspec's
configuration, e.g. ``FSSPEC_GCS_ENDPOINT_URL``) and the variable not set by the user, our
storage layer uses ``gcsfs.core.GCSFileSystem``, the plain JSON-API client; real GCS keeps
gcsfs's default, and the variable set either way is obeyed. ``STORAGE_EMULATOR_HOST`` also means
anonymous credentials unless a token is configured, as Google's own client libraries do.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)

PROTOCOLS = ("gs", "gcs")
FLAG = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"
EMULATOR = "STORAGE_EMULATOR_HOST"
POOL = 256  # connections per client: the requests core.io.ranges keeps in flight
PAGE = 1000  # names per listing request: the most GCS gives
LISTED = "items(name,size,updated),prefixes,nextPageToken"  # what a listing needs of a page


def config() -> dict[str, Any]:
    """fsspec's configured options for ``gs``/``gcs`` (files, ``FSSPEC_GCS_*`` variables)."""
    import fsspec.config

    options: dict[str, Any] = {}
    for protocol in PROTOCOLS:
        options.update(fsspec.config.conf.get(protocol, {}))
    return options


def custom_endpoint(options: dict[str, Any] | None = None) -> str | None:
    """The endpoint when it is not Google's: an emulator's or an ``endpoint_url``."""
    options = config() if options is None else options
    emulator = os.environ.get(EMULATOR, "")
    if emulator not in ("", "default"):
        return emulator
    return options.get("endpoint_url") or None


def plain_client_wanted(options: dict[str, Any] | None = None) -> bool:
    """Whether to skip gcsfs's zonal/HNS layer: a custom endpoint and the flag left unset."""
    flag = os.environ.get(FLAG)
    if flag is not None:
        return flag.strip().lower() not in ("true", "1")
    return custom_endpoint(options) is not None


class _OneLineRetries(logging.Filter):
    """gcsfs logs a traceback when a request runs out of retries; the step then fails with one
    line naming the URI (``TransientError``), so the traceback is only noise in the task log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and "out of retries" in str(record.msg):
            record.exc_info = None
            record.exc_text = None
        return True


_QUIET = _OneLineRetries()


def filesystem(url: str) -> tuple[Any, str]:
    """The gcsfs filesystem and bucket path for a ``gs://`` URL (fsspec's instance cache
    applies: one client, one connection pool and one event loop per process)."""
    import fsspec.core

    logging.getLogger("gcsfs").addFilter(_QUIET)  # a set: adding twice is adding once
    options = config()
    if EMULATOR in os.environ and "token" not in options:
        options["token"] = "anon"  # an emulator takes no credentials (Google's clients agree)
    if not plain_client_wanted(options):
        fs, path = fsspec.core.url_to_fs(url, **options)
    else:
        from gcsfs.core import GCSFileSystem

        fs, path = GCSFileSystem(**options), GCSFileSystem._strip_protocol(url)
    _widen_pool(fs)
    return fs, path


def _widen_pool(fs: Any) -> None:
    """A pool of ``POOL`` connections for a client whose session is not made yet. gcsfs's
    aiohttp session keeps aiohttp's default of 100, so of the hundreds of ranges a batch sends
    (discovery's footers) only 100 would be on the wire, the rest queued: at 20 ms a request,
    20,000 footers would wait 4 s instead of 1.6 s. A session with its own connector, or one
    presenting a client certificate (gcsfs builds that connector), is left as it is."""
    if getattr(fs, "_session", True) is not None:
        return  # made already (fsspec caches the client: the usual case)
    import aiohttp
    from fsspec.asyn import sync

    async def pool() -> aiohttp.TCPConnector:
        return aiohttp.TCPConnector(limit=POOL)  # on the client's loop, which it belongs to

    with _WIDENING:  # threads sharing the cached client make one connector
        if (
            getattr(fs, "_session", True) is not None
            or "connector" in fs.session_kwargs
            or getattr(fs, "_use_client_cert", False)
        ):
            return
        fs.session_kwargs = {**fs.session_kwargs, "connector": sync(fs.loop, pool)}


_WIDENING = threading.Lock()


def object_info(fs: Any, path: str) -> dict[str, Any]:
    """One object's metadata in one request (gcsfs's ``info`` also lists the name as a folder,
    concurrently: two requests), ``size`` as an int; FileNotFoundError when there is none."""
    bucket, key, _ = fs.split_path(path)
    meta = dict(fs.call("GET", "b/{}/o/{}", bucket, key, json_out=True))
    meta["size"] = int(meta.get("size") or 0)
    return meta


def read_generation(fs: Any, path: str) -> tuple[bytes, int] | None:
    """An object's bytes and the generation they are, in one request; None when there is none."""
    bucket, key, _ = fs.split_path(path)
    try:
        headers, data = fs.call("GET", "b/{}/o/{}", bucket, key, alt="media")
    except FileNotFoundError:
        return None
    return bytes(data), int(headers["X-Goog-Generation"])


def write_if_generation(fs: Any, path: str, data: bytes, generation: int) -> bool:
    """Write the object only if it is still at ``generation`` (0: only if there is none), in one
    multipart upload with ``ifGenerationMatch`` (the emulator honours it there, as GCS does);
    False when the precondition failed (412: someone wrote or removed it in between)."""
    from urllib.parse import quote

    bucket, key, _ = fs.split_path(path)
    head = (
        "--==0==\nContent-Type: application/json; charset=UTF-8\n\n"
        + json.dumps({"name": key})
        + "\n--==0==\nContent-Type: application/json\n\n"
    )
    try:
        fs.call(
            "POST",
            f"{fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
            uploadType="multipart",
            ifGenerationMatch=str(generation),
            headers={"Content-Type": 'multipart/related; boundary="==0=="'},
            data=head.encode() + data + b"\n--==0==--",
            json_out=True,
        )
    except FileExistsError:
        return False
    return True


def remove_if_generation(fs: Any, path: str, generation: int) -> bool:
    """Delete the object only if it is still at ``generation``; False when it is not (412) or
    is gone. (fake-gcs-server ignores this precondition; GCS honours it.)"""
    bucket, key, _ = fs.split_path(path)
    try:
        fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=str(generation))
    except (FileExistsError, FileNotFoundError):
        return False
    return True


def list_pages(fs: Any, path: str) -> Iterator[list[tuple[str, int, str | None]]]:
    """The objects directly in a folder, one listing request per page of ``PAGE``, each page as
    GCS answers it (in name order): ``(name, size, updated)``. Only the fields a listing needs
    are asked for (a full object resource is about 1 KB of JSON to parse). A folder with nothing
    in it and no placeholder object is ``FileNotFoundError``, as gcsfs's ``ls`` says; a missing
    bucket too (its 404)."""
    bucket, key, _ = fs.split_path(path)
    prefix = key.rstrip("/") + "/" if key else None
    token, found = None, not key  # a bucket's root exists when the bucket does
    while True:
        page = fs.call(
            "GET",
            "b/{}/o",
            bucket,
            json_out=True,
            prefix=prefix,
            delimiter="/",
            maxResults=PAGE,
            pageToken=token,
            fields=LISTED,
        )
        items = page.get("items", [])
        found = found or bool(items or page.get("prefixes"))
        token = page.get("nextPageToken")
        if not found and not token:
            raise FileNotFoundError(f"gs://{path.rstrip('/')}")
        skip = len(prefix or "")
        yield [
            (item["name"][skip:], int(item.get("size") or 0), item.get("updated"))
            for item in items
            if len(item["name"]) > skip  # the folder's placeholder object, "<folder>/"
        ]
        if not token:
            return
