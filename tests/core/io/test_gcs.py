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
