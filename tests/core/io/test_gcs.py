"""gs:// through gcsfs against fake-gcs-server (the session's ``gcs_emulator``): the client
chosen for a custom endpoint, uploads in as few requests as their size allows."""

from __future__ import annotations

import pytest

from airflow_curator.core.io import gcs, storage


@pytest.mark.parametrize(
    ("env", "plain"),
    [
        ({"STORAGE_EMULATOR_HOST": "http://127.0.0.1:1"}, True),  # an emulator: no gRPC lookups
        ({"STORAGE_EMULATOR_HOST": "http://127.0.0.1:1", gcs.FLAG: "true"}, False),  # obeyed
        ({"STORAGE_EMULATOR_HOST": "http://127.0.0.1:1", gcs.FLAG: "false"}, True),
        ({}, False),  # Google's endpoint: gcsfs's default stays
        ({gcs.FLAG: "false"}, True),
    ],
)
def test_plain_client_for_a_custom_endpoint_unless_the_flag_says(monkeypatch, env, plain):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv(gcs.FLAG, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert gcs.plain_client_wanted({}) is plain


def test_emulator_gets_the_plain_client_and_anonymous_credentials(gcs_bucket, gcs_emulator):
    from gcsfs.core import GCSFileSystem

    fs, path = storage.fs_and_path(f"{gcs_bucket}/x")
    assert type(fs) is GCSFileSystem and path == f"{gcs_bucket.removeprefix('gs://')}/x"
    mark = gcs_emulator.mark()
    storage.write_bytes(f"{gcs_bucket}/x", b"abc")
    assert storage.read_bytes(f"{gcs_bucket}/x") == b"abc"
    assert [r.kind for r in gcs_emulator.requests(mark)] == ["write", "read"]


def test_uploads_one_request_small_one_per_chunk_large(gcs_bucket, gcs_emulator, monkeypatch):
    monkeypatch.setattr(storage, "UPLOAD_BLOCK", 256 << 10)  # gcsfs's smallest chunk
    small, large = f"{gcs_bucket}/small.tar", f"{gcs_bucket}/large.tar"
    mark = gcs_emulator.mark()
    with storage.atomic_writer(small) as f:
        for _ in range(10):
            f.write(b"s" * 1000)
    assert len(gcs_emulator.requests(mark)) == 1
    data = bytes(range(256)) * 2400  # 600 KB: two full chunks and a last one
    mark = gcs_emulator.mark()
    with storage.atomic_writer(large) as f:
        for i in range(0, len(data), 100_000):
            f.write(data[i : i + 100_000])
    writes = gcs_emulator.requests(mark)
    assert all(r.kind == "write" for r in writes) and len(writes) <= 1 + 3  # begin + chunks
    assert storage.read_bytes(large) == data and storage.read_bytes(small) == b"s" * 10_000


def test_a_failed_upload_leaves_nothing(gcs_bucket, monkeypatch):
    monkeypatch.setattr(storage, "UPLOAD_BLOCK", 256 << 10)
    for size in (1000, 700_000):  # before and after the resumable upload began
        url = f"{gcs_bucket}/half-{size}.tar"
        with pytest.raises(RuntimeError), storage.atomic_writer(url) as f:
            f.write(b"h" * size)
            raise RuntimeError("killed")
        assert not storage.exists(url)


def test_client_has_a_pool_for_the_ranges_in_flight(gcs_bucket):
    """aiohttp's default pool (100 connections) would queue most of a batch of ranges."""
    from airflow_curator.core.io import ranges

    urls = [f"{gcs_bucket}/pool/{i:03d}" for i in range(3)]
    for i, url in enumerate(urls):
        storage.write_bytes(url, bytes([i]) * 10)
    spans = [ranges.Span(urls[i % 3], 2, 5) for i in range(300)]
    got = ranges.read_spans(spans)
    assert [g.data for g in got if g] == [bytes([i % 3]) * 3 for i in range(300)]
    fs, _ = storage.fs_and_path(urls[0])
    assert fs.session.connector.limit == gcs.POOL == ranges.CONCURRENCY


def test_listing_comes_page_by_page_asking_only_for_names_sizes_and_times(
    gcs_bucket, gcs_emulator, monkeypatch
):
    monkeypatch.setattr(gcs, "PAGE", 3)
    folder = f"{gcs_bucket}/pages"
    for i in range(7):
        storage.write_bytes(f"{folder}/{i:05d}.tar", b"t" * (i + 1))
    storage.write_bytes(f"{folder}/sub/00000.tar", b"in a subfolder")
    mark = gcs_emulator.mark()
    pages = list(storage.list_pages(folder))
    listings = gcs_emulator.requests(mark)
    assert [len(p) for p in pages] == [3, 3, 1] and len(listings) == 3
    assert all(r.kind == "list" and "fields=" in r.query for r in listings)
    entries = [e for p in pages for e in p]
    assert [e.name for e in entries] == [f"{i:05d}.tar" for i in range(7)]
    assert [e.size for e in entries] == list(range(1, 8))
    assert all(e.url == f"{folder}/{e.name}" and e.mtime and e.mtime > 1e9 for e in entries)
    assert storage.list_files(folder) == entries
    with pytest.raises(FileNotFoundError):
        storage.list_files(f"{gcs_bucket}/nothing-here")
    assert storage.list_files(f"{gcs_bucket}/nothing-here", missing_ok=True) == []


def test_discovery_reads_footers_while_the_listing_goes_on(gcs_bucket, gcs_emulator, monkeypatch):
    from airflow_curator.core.dataset import discovery
    from airflow_curator.testing.dataset import write_demo_dataset

    monkeypatch.setattr(gcs, "PAGE", 2)
    monkeypatch.setattr(discovery, "FOOTER_WINDOW", 2)
    url = f"{gcs_bucket}/d"
    write_demo_dataset(url, shards=6, records_per_shard=2, seed=3)
    mark = gcs_emulator.mark()
    m = discovery.discover(url)
    assert [s.records for s in m.shards] == [2] * 6
    kinds = [r.kind for r in gcs_emulator.requests(mark)]
    assert kinds.count("list") == 6 and kinds.count("read") == 6
    assert kinds.index("read") < len(kinds) - 1 - kinds[::-1].index("list")  # before the last page


class _Flaky:
    """A GCS media endpoint on 127.0.0.1 whose first ``fail`` answers are ``status``."""

    def __init__(self, data: bytes, fail: int, status: int = 503) -> None:
        import http.server
        import threading

        flaky = self
        self.data, self.fail, self.status, self.seen = data, fail, status, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                flaky.seen.append((self.path, self.headers.get("Range")))
                if len(flaky.seen) <= flaky.fail:
                    self.send_response(flaky.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                lo, _, hi = self.headers["Range"].removeprefix("bytes=").partition("-")
                body = flaky.data[int(lo) : int(hi) + 1]
                self.send_response(206)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Range", f"bytes {lo}-{hi}/{len(flaky.data)}")
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def read(self, path: str) -> object:
        from gcsfs.core import GCSFileSystem

        from airflow_curator.core.io import ranges

        fs = GCSFileSystem(endpoint_url=self.url, token="anon", skip_instance_cache=True)
        try:
            return ranges._run_async(fs, [(path, ranges.Span(f"gs://{path}", 2, 6))])[0]
        finally:
            self.server.shutdown()


def test_range_reads_retry_what_gcsfs_retries_and_map_its_errors(monkeypatch):
    from airflow_curator.core.io import ranges

    monkeypatch.setattr(ranges, "BACKOFF", 0.001)
    flaky = _Flaky(b"0123456789", fail=2)
    got = flaky.read("bkt/dir/my obj")
    assert got.data == b"2345" and got.size == 10
    assert [s[1] for s in flaky.seen] == ["bytes=2-5"] * 3
    assert flaky.seen[0][0] == "/download/storage/v1/b/bkt/o/dir%2Fmy%20obj?alt=media"
    down = _Flaky(b"x", fail=99)
    error = down.read("bkt/o")
    assert len(down.seen) == ranges.RETRIES and storage.unavailable(error)
    missing = _Flaky(b"x", fail=99, status=404)
    assert isinstance(missing.read("bkt/o"), FileNotFoundError) and len(missing.seen) == 1
