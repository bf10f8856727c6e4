"""The one Parquet layer: reads, the one writer, and the error contract, over a real HTTP store.

Remote reads go to a small HTTP server on 127.0.0.1 (fsspec's ``http`` filesystem, real
sockets): one that serves files with ranges, then answers 503, then is gone altogether."""

from __future__ import annotations

import http.server
import io
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_curator.core.errors import DataError, ShardError, TransientError, UsageError
from airflow_curator.core.io import parquet
from airflow_curator.runtime.cli import main


def _table(n: int = 50) -> pa.Table:
    emb = pa.FixedSizeListArray.from_arrays(pa.array([float(i % 7) for i in range(n * 8)]), 8)
    return pa.table({"key": [f"{i:09d}" for i in range(n)], "score": range(n), "emb": emb})


def _bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


class Store(http.server.ThreadingHTTPServer):
    """Files by path, ``Range`` requests, a log of (method, path), and an HTTP status to fail
    every request with."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.log: list[tuple[str, str]] = []
        self.fail: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Store

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, body: bool) -> None:
        self.server.log.append((self.command, self.path))
        data = self.server.files.get(self.path)
        if self.server.fail is not None or data is None:
            self.send_response(self.server.fail or 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = 0, len(data)
        ranged = self.headers.get("Range")
        if ranged:
            lo, _, hi = ranged.removeprefix("bytes=").partition("-")
            start, end = int(lo), min(int(hi) + 1 if hi else len(data), len(data))
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[start:end])

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)


@pytest.fixture
def store():
    server = Store()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_selected_columns_schema_check_and_optional_ones(tmp_path):
    path = str(tmp_path / "00000.parquet")
    pq.write_table(_table(), path)
    t = parquet.read_table(path, "00000", ["key"], optional=("score", "absent"))
    assert t.column_names == ["key", "score"]
    with pytest.raises(ShardError, match=r"shard 00000: .*00000\.parquet has no column 'nope' "):
        parquet.read_table(path, "00000", ["key", "nope"])
    assert parquet.num_rows(path, "00000") == 50
    assert parquet.read_schema(path, "00000").names == ["key", "score", "emb"]


@pytest.mark.parametrize("where", ["local", "memory"])
def test_bytes_that_are_not_parquet_are_a_data_error_naming_shard_and_uri(tmp_path, where):
    if where == "local":
        url = str(tmp_path / "00042.parquet")
        (tmp_path / "00042.parquet").write_bytes(b"PAR1 but not really" * 40)
    else:
        import fsspec

        url = "memory://parquet-layer/00042.parquet"
        fsspec.filesystem("memory").pipe(url, b"junk" * 100)
    with pytest.raises(ShardError, match=rf"^shard 00042: {url} is not readable Parquet") as e:
        parquet.read_table(url, "00042")
    assert e.value.exit_code == 1
    truncated = _bytes(_table())[:-40] + b"PAR1"
    (tmp_path / "t.parquet").write_bytes(truncated)  # pyarrow raises a plain OSError here
    with pytest.raises(ShardError, match="is not readable Parquet"):
        parquet.read_table(str(tmp_path / "t.parquet"), "00042")
    with pytest.raises(ShardError, match=r"^shard 00042: .*missing\.parquet does not exist$"):
        parquet.read_table(str(tmp_path / "missing.parquet"), "00042")


def test_remote_reads_use_the_size_from_the_manifest(store, monkeypatch):
    data = _bytes(_table())
    store.files["/d/00000.parquet"] = data
    url = f"{store.url}/d/00000.parquet"
    assert parquet.read_table(url, "00000", ["key"], size=len(data)).num_rows == 50
    assert store.log == [("GET", "/d/00000.parquet")]  # a small object: one request
    store.log.clear()
    big = _bytes(pa.concat_tables([_table(20_000)] * 3))
    store.files["/d/big.parquet"] = big
    monkeypatch.setattr(parquet, "WHOLE", 1024)
    got = parquet.read_table(f"{store.url}/d/big.parquet", "big", ["score"], size=len(big))
    assert got.num_rows == 60_000
    assert {m for m, _ in store.log} == {"GET"}  # ranges only: no lookup of the size first
    assert 1 < len(store.log) < 10


def test_storage_failures_are_transient_never_the_shards_fault(store, monkeypatch):
    store.files["/d/00003.parquet"] = b"x"
    url = f"{store.url}/d/00003.parquet"
    store.fail = 503
    with pytest.raises(TransientError) as e:
        parquet.read_table(url, "00003", size=100)
    assert str(e.value).startswith(f"storage unavailable reading {url}: ")
    assert str(e.value).endswith("(will retry)") and e.value.exit_code == 75
    assert not isinstance(e.value, DataError)
    store.fail = 403  # no permission: retrying cannot help, and it is not the data's fault
    with pytest.raises(Exception) as e:
        parquet.read_table(url, "00003", size=100)
    assert not isinstance(e.value, (TransientError, DataError))
    store.fail = None
    port = store.server_address[1]
    store.shutdown()
    store.server_close()  # nothing listens there any more: connection refused
    gone = f"http://127.0.0.1:{port}/d/00003.parquet"
    for size in (None, 100):  # a lookup of the size first, or the whole object
        with pytest.raises(TransientError, match=f"storage unavailable reading {gone}: "):
            parquet.read_table(gone, "00003", size=size)
    monkeypatch.setattr(parquet, "WHOLE", 10)  # ranged reads, from inside pyarrow's
    with pytest.raises(TransientError, match=f"storage unavailable reading {gone}: "):
        parquet.read_table(gone, "00003", size=100)


def test_the_cli_exits_75_on_unreachable_storage(store, tmp_path, capsys):
    from airflow_curator.testing.dataset import write_demo_dataset

    src = str(tmp_path / "in")
    write_demo_dataset(src, shards=1, records_per_shard=2, image_bytes=10)
    store.fail = 503
    argv = ["plan-reshard", "--dataset", src, "--output", str(tmp_path / "o")]
    assert main([*argv, "--metadata", f"{store.url}/meta"]) == 75
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(
        f"airflow-curator plan-reshard: error: storage unavailable reading {store.url}/meta/"
    )


def test_one_writer_deterministic_plain_embeddings_and_row_groups(tmp_path):
    table = _table(10)
    meta = {b"airflow_curator.x": b'{"a": 1}'}
    first = parquet.to_bytes(table, metadata=meta, row_groups=[4, 6])
    assert parquet.to_bytes(table, metadata=meta, row_groups=[4, 6]) == first
    pf = pq.ParquetFile(pa.BufferReader(first))
    assert [pf.metadata.row_group(i).num_rows for i in range(2)] == [4, 6]
    columns = {pf.metadata.row_group(0).column(i).path_in_schema: i for i in range(3)}
    emb = pf.metadata.row_group(0).column(columns["emb.list.element"])
    assert emb.compression == "UNCOMPRESSED" and emb.statistics is None
    key = pf.metadata.row_group(0).column(columns["key"])
    assert key.compression == "ZSTD" and key.statistics.has_min_max
    assert pf.schema_arrow.metadata == meta  # only what was given: no pandas or earlier notes
    url = str(tmp_path / "out.parquet")
    assert parquet.write_table(url, table) is True
    mtime = (tmp_path / "out.parquet").stat().st_mtime_ns
    assert parquet.write_table(url, table) is False  # unchanged: not rewritten
    assert (tmp_path / "out.parquet").stat().st_mtime_ns == mtime


def test_usage_errors_are_value_errors():
    assert issubclass(UsageError, ValueError) and UsageError("x").exit_code == 2
