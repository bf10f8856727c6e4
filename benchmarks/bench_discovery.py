"""Discovery on a folder of many shards (metadata only): listing, pairing, footers, groups.

    .venv/bin/python benchmarks/bench_discovery.py [--shards 50000]
    .venv/bin/python benchmarks/bench_discovery.py --latency-ms 20 [--shards 20000]

Tars are tiny stand-ins and every Parquet is the same small file: discovery reads only the
listing and the Parquet footers, so this measures exactly its own work. Target: seconds.

``--latency-ms``: the folder is read through an async fsspec filesystem (``slowfile://``) that
waits that long on every storage call, as an object store does: a listing page of 1,000
names (GCS's most; pages one after another, each needing the last one's token), a ranged
read, a metadata lookup, each one call, at most ``gcs.POOL`` calls in flight (our gs:// client's
connections), a new connection two more round trips. The listing comes page by page
(``storage.PAGERS``, as on gs://), so footers are read while it goes on. The store's own side
(reading and listing its files) is done once before the runs and served from memory: it is not
the client's work, and done per call in this process it cost more CPU than discovery itself.
It prints the time and CPU at 0 ms and at that latency, the least the waits can cost, and what
the same calls would take one after another and on 16 threads (the threaded discovery this
replaced: two calls per footer). Target: <= 5 s for 20,000 shards at 20 ms.

The fake store does not charge what an HTTP request costs the client's CPU: ``--gcs-shards``
(1,000 by default) discovers that many shards through gcsfs against fake-gcs-server too and
prints the client's CPU per shard, so the figure for a real store is told, not assumed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import tool

PAGE = 1000  # names per listing call, as GCS pages them (gcsfs asks for 1,000 a page)


def slow_filesystem(latency: float, pool: int | None = None, hold: str | None = None) -> Any:
    """An async filesystem over local files that waits ``latency`` seconds per call, at most
    ``pool`` calls in flight (the connections of our gs:// client, ``gcs.POOL``), a new
    connection two more (TCP and TLS handshakes), and counts the calls (``calls``). What a
    store does on its side is not the client's work, so it is done at its cheapest: the files
    of folder ``hold`` are read and listed once, here, and served from memory."""
    import asyncio

    from airflow_curator.core.io import gcs

    pool = gcs.POOL if pool is None else pool

    from fsspec.asyn import AsyncFileSystem
    from fsspec.implementations.local import LocalFileSystem

    local = LocalFileSystem()
    gates: dict[Any, asyncio.Semaphore] = {}  # per event loop
    idle = [0]  # connections open and free
    held: dict[str, bytes] = {}  # path -> bytes
    listings: dict[str, list[tuple[str, int, float]]] = {}  # folder -> (name, size, mtime)
    if hold is not None:
        with os.scandir(hold) as it:
            files = sorted((d.name, d.stat()) for d in it if d.is_file())
        listings[hold] = [(name, st.st_size, st.st_mtime) for name, st in files]
        for name, _ in files:
            with open(os.path.join(hold, name), "rb") as f:
                held[os.path.join(hold, name)] = f.read()

    class SlowFileSystem(AsyncFileSystem):  # type: ignore[misc]
        protocol = "slowfile"
        calls = 0
        connections = 0

        async def _wait(self, n: int = 1) -> None:
            """``n`` calls one after another on one connection."""
            loop = asyncio.get_running_loop()
            gate = gates.setdefault(loop, asyncio.Semaphore(pool))
            async with gate:
                if idle[0]:
                    idle[0] -= 1
                else:
                    type(self).connections += 1
                    await asyncio.sleep(2 * latency)
                try:
                    for _ in range(n):
                        type(self).calls += 1
                        await asyncio.sleep(latency)
                finally:
                    idle[0] += 1

        async def _ls(self, path: str, detail: bool = True, **kw: Any) -> list[Any]:
            out = local.ls(path, detail=True)
            await self._wait(max(1, -(-len(out) // PAGE)))  # a page's token comes with it
            return out if detail else [o["name"] for o in out]

        async def _info(self, path: str, **kw: Any) -> dict[str, Any]:
            await self._wait()
            return local.info(path)

        async def _cat_file(
            self, path: str, start: int | None = None, end: int | None = None, **kw: Any
        ) -> bytes:
            await self._wait()
            data = held.get(path)
            if data is None:
                with open(path, "rb") as f:
                    data = f.read()
            size = len(data)
            lo = 0 if start is None else (start if start >= 0 else max(0, size + start))
            hi = size if end is None else (min(end, size) if end >= 0 else size + end)
            return data[lo:hi]

        @classmethod
        def _strip_protocol(cls, path: str) -> str:
            return path.removeprefix("slowfile://") or "/"

    def pages(fs: SlowFileSystem, path: str) -> Iterator[list[tuple[str, int, float]]]:
        """The folder listed as GCS lists it (``storage.PAGERS``): a page of ``PAGE`` names a
        call, each asked for when the last one came (its token is in it)."""
        from fsspec.asyn import sync

        names = listings.get(path)
        if names is None:
            with os.scandir(path) as it:
                names = sorted((d.name, d.stat().st_size, d.stat().st_mtime) for d in it)
        for k in range(0, max(1, len(names)), PAGE):
            sync(fs.loop, fs._wait)
            yield names[k : k + PAGE]

    import fsspec

    from airflow_curator.core.io import storage

    fsspec.register_implementation("slowfile", SlowFileSystem, clobber=True)
    storage.PAGERS["slowfile"] = pages
    return SlowFileSystem


def latency_mode(folder: str, shards: int, latency_ms: float, gcs_shards: int = 0) -> None:
    """Discover the folder in this process through ``slowfile://``, without latency and then
    with it (the difference is what the waits cost), beside the least the waits can cost."""
    from airflow_curator.core.dataset.discovery import discover
    from airflow_curator.core.io import gcs

    seconds, cpu = {}, {}
    for ms in (0.0, latency_ms):
        fs = slow_filesystem(ms / 1000, hold=folder)
        t0, c0 = time.perf_counter(), time.process_time()
        manifest = discover(f"slowfile://{folder}")
        seconds[ms], cpu[ms] = time.perf_counter() - t0, time.process_time() - c0
    calls, pages = fs.calls, -(-2 * shards // PAGE)
    latency = latency_ms / 1000
    floor = (pages + 2 + -(-shards // gcs.POOL)) * latency
    sequential = calls * latency
    threaded = (pages + 2 * shards / 16) * latency
    dt = seconds[latency_ms]
    print(
        f"{len(manifest.shards)} shards ({manifest.records} records): {calls} storage calls "
        f"({pages} listing pages, {calls - pages} footer reads) on {fs.connections} connections"
    )
    print(f"  at 0 ms per call: discover {seconds[0.0]:.2f} s (CPU {cpu[0.0]:.2f} s)")
    print(
        f"  at {latency_ms:g} ms per call: discover {dt:.2f} s (CPU {cpu[latency_ms]:.2f} s); "
        f"the waits alone at least {floor:.2f} s (the pages one after another, a connection's "
        f"handshakes, then the footers {gcs.POOL} at a time)"
    )
    print(
        f"  one call after another {sequential:.1f} s; 16 threads at 2 calls per footer "
        f"{threaded:.1f} s ({threaded / dt:.1f}x slower)"
    )
    if gcs_shards:
        user, kernel = gcs_client_cpu(folder, min(gcs_shards, shards))
        print(
            f"  through gcsfs against fake-gcs-server ({min(gcs_shards, shards)} shards): client "
            f"CPU {user * 1e6:.0f} us per shard in Python, {kernel * 1e6:.0f} us in the kernel "
            f"(loopback TCP, both ends); the fake store above: "
            f"{cpu[latency_ms] / shards * 1e6:.0f} us; {shards} shards through gcsfs need "
            f"{user * shards:.1f} s of Python CPU in this process, whatever the latency"
        )


def gcs_client_cpu(folder: str, shards: int) -> tuple[float, float]:
    """Discovery's CPU per shard in this process through gcsfs against fake-gcs-server (the
    emulator's own CPU is another process's): what an HTTP request costs the client, which the
    fake store does not charge. Seconds per shard: in Python, in the kernel."""
    import resource

    from airflow_curator.core.dataset.discovery import discover
    from airflow_curator.testing.gcs import Emulator

    def cpu() -> tuple[float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime, usage.ru_stime

    with tempfile.TemporaryDirectory(prefix="bench-discovery-gcs-") as part, Emulator() as emu:
        for i in range(shards):
            for ext in ("tar", "parquet"):
                os.link(
                    os.path.join(folder, f"{i:05d}.{ext}"), os.path.join(part, f"{i:05d}.{ext}")
                )
        before = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ.update(emu.env)
        try:
            url = emu.new_bucket("bench-discovery") + "/d"
            emu.upload(part, url)
            discover(url)  # the client made, its connections open
            u0, k0 = cpu()
            manifest = discover(url)
            u1, k1 = cpu()
        finally:
            os.environ.pop("STORAGE_EMULATOR_HOST")
            if before is not None:
                os.environ["STORAGE_EMULATOR_HOST"] = before
    assert len(manifest.shards) == shards
    return (u1 - u0) / shards, (k1 - k0) / shards


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=None, help="default 50000; 20000 with latency")
    p.add_argument("--latency-ms", type=float, default=None)
    p.add_argument(
        "--gcs-shards",
        type=int,
        default=1000,
        help="with --latency-ms: discover this many through gcsfs on fake-gcs-server too (0: not)",
    )
    args = p.parse_args()
    if args.shards is None:
        args.shards = 20000 if args.latency_ms else 50000

    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="bench-discovery-") as folder:
        buf = io.BytesIO()
        pq.write_table(pa.table({"key": [f"{i:09d}" for i in range(100)]}), buf)
        parquet = buf.getvalue()
        t0 = time.perf_counter()
        for i in range(args.shards):
            with open(os.path.join(folder, f"{i:05d}.tar"), "wb") as f:
                f.write(b"\0" * (1024 + i % 7 * 512))
            with open(os.path.join(folder, f"{i:05d}.parquet"), "wb") as f:
                f.write(parquet)
        print(f"made {args.shards} shards in {time.perf_counter() - t0:.1f}s")
        if args.latency_ms:
            latency_mode(folder, args.shards, args.latency_ms, args.gcs_shards)
            return 0
        for extra in ([], ["--no-count"]):
            out = os.path.join(folder, "_result.json")
            t0 = time.perf_counter()
            subprocess.run(
                [
                    tool("airflow-curator"),
                    "discover",
                    "--dataset",
                    folder,
                    "--result-json",
                    out,
                    "--manifest",
                    os.path.join(folder, "_work", "manifest.json"),
                    *extra,
                ],
                check=True,
                stderr=subprocess.DEVNULL,
            )
            dt = time.perf_counter() - t0
            with open(out) as f:
                result = json.load(f)
            sizes = [len(json.dumps(g)) for g in result["groups"]]
            print(
                f"discover {' '.join(extra) or '(with record counts)':22s} {dt:6.2f} s  "
                f"shards={result['shards']} records={result['records']} "
                f"groups={len(result['groups'])} largest group XCom={max(sizes)} B"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
