"""A plain HTTP file server on 127.0.0.1 for tests: like many weight mirrors, it ignores
``Range`` (Python's ``http.server`` answers every GET with the whole file) and logs each
request it answers."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class FileServer:
    """Where the server listens and the requests it answered (``"GET /path"``)."""

    url: str
    requests: list[str] = field(default_factory=list)


@contextlib.contextmanager
def serve_folder(root: str) -> Iterator[FileServer]:
    """Serve ``root`` on a free port of 127.0.0.1 until the block ends."""
    served = FileServer(url="")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            served.requests.append(f"{self.command} {self.path}")

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=root)
    )
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
