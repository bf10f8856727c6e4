"""The one Parquet layer: every Parquet the pipeline reads or writes goes through here.

Reading takes the columns a step needs, checks they are there, and uses the object's size when
the caller knows it from the manifest: a small object is fetched whole in one request, a larger
one by ranged reads (its footer, then the column chunks) without a lookup of its size first.
Writing has one set of writer settings, so the same table always gives the same bytes: zstd,
statistics and dictionaries for ordinary columns; bulky float vectors (embeddings) stored plain,
since they do not compress; row groups as the caller cuts them; schema metadata only as given.
Files are written atomically and not rewritten when their bytes are unchanged.

Errors follow the contract (``core.errors``): a missing file or bytes that are not Parquet are
the data's fault (``ShardError`` naming the shard and the file's URI); a storage failure while
reading is ``TransientError`` ("storage unavailable reading <uri>: ... (will retry)").
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING

from airflow_curator.core.errors import DataError, ShardError, TransientError
from airflow_curator.core.io import storage

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

WHOLE = 8 << 20  # objects up to this size are fetched in one request when their size is known


def _fault(shard: str | None, reason: str) -> DataError:
    return ShardError(shard, reason) if shard is not None else DataError(reason)


class _Guarded:
    """A remote file whose storage failures become ``TransientError`` naming its URI. pyarrow
    re-raises a Python file's own exception, so the contract survives its reads."""

    def __init__(self, f: IO[bytes], url: str) -> None:
        self._f, self._url = f, url

    def read(self, n: int = -1) -> bytes:
        with storage.reading(self._url):
            return self._f.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._f.closed

    def close(self) -> None:
        self._f.close()


@contextlib.contextmanager
def _source(url: str, size: int | None) -> Iterator[str | pa.NativeFile | _Guarded]:
    """What pyarrow reads: a local path, the whole small object, or a guarded remote file."""
    if storage.is_local(url):
        yield storage.local_path(url)
        return
    import pyarrow as pa

    fs, path = storage.fs_and_path(url)
    if size is not None and size <= WHOLE:
        with storage.reading(url):
            data = fs.cat_file(path)
        yield pa.BufferReader(data)
        return
    with storage.reading(url):
        f = fs.open(path, "rb", size=size, cache_type="none")
    try:
        yield _Guarded(f, url)
    finally:
        f.close()


@contextlib.contextmanager
def open_parquet(
    url: str, shard: str | None, *, size: int | None = None
) -> Iterator[pq.ParquetFile]:
    """A ``pyarrow.parquet.ParquetFile`` (its footer read) for schema, metadata and row-group
    reads. Inside the block, pyarrow's errors are the file's fault, named as such."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with _source(url, size) as source:
            yield pq.ParquetFile(source)
    except FileNotFoundError:
        raise _fault(shard, f"{url} does not exist") from None
    except (TransientError, DataError):
        raise
    except (pa.ArrowException, OSError) as e:  # remote storage failures were raised above
        raise _fault(shard, f"{url} is not readable Parquet: {e}") from e


def columns_of(
    schema: pa.Schema,
    url: str,
    shard: str | None,
    columns: list[str],
    optional: tuple[str, ...] = (),
) -> list[str]:
    """``columns`` checked present in the file, then those of ``optional`` it has."""
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise _fault(
            shard, f"{url} has no column {missing[0]!r} (columns: {', '.join(schema.names)})"
        )
    return columns + [c for c in optional if c in schema.names and c not in columns]


def read_table(
    url: str,
    shard: str | None,
    columns: list[str] | None = None,
    *,
    optional: tuple[str, ...] = (),
    size: int | None = None,
) -> pa.Table:
    """The file (or its ``columns``, plus those of ``optional`` it has) as a Table."""
    with open_parquet(url, shard, size=size) as pf:
        if columns is not None:
            columns = columns_of(pf.schema_arrow, url, shard, columns, optional)
        return pf.read(columns=columns)


def read_schema(url: str, shard: str | None, *, size: int | None = None) -> pa.Schema:
    """The file's Arrow schema (its metadata included), from the footer alone."""
    with open_parquet(url, shard, size=size) as pf:
        return pf.schema_arrow


def num_rows(url: str, shard: str | None, *, size: int | None = None) -> int:
    with open_parquet(url, shard, size=size) as pf:
        return int(pf.metadata.num_rows)


def _bulky(field: pa.Field) -> bool:
    """A list of floats (an embedding): stored plain, without dictionary or statistics."""
    import pyarrow as pa

    t = field.type
    return (
        pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t)
    ) and pa.types.is_floating(t.value_type)


def to_bytes(
    table: pa.Table,
    *,
    metadata: dict[bytes, bytes] | None = None,
    row_groups: list[int] | None = None,
) -> bytes:
    """The table as Parquet with the one set of writer settings. ``metadata`` replaces the
    schema metadata (none by default, so a pandas or earlier tool's note never changes the
    bytes); ``row_groups`` are the row counts of consecutive row groups (default: one)."""
    import pyarrow.parquet as pq

    table = table.replace_schema_metadata(metadata or None).combine_chunks()
    plain = {f.name for f in table.schema if _bulky(f)}
    ordinary = [f.name for f in table.schema if f.name not in plain]
    buf = io.BytesIO()
    with pq.ParquetWriter(
        buf,
        table.schema,
        compression={f.name: "none" if f.name in plain else "zstd" for f in table.schema},
        use_dictionary=ordinary,
        write_statistics=ordinary,
    ) as writer:
        start = 0
        for n in [n for n in (row_groups or [table.num_rows]) if n] or [0]:
            writer.write_table(table.slice(start, n), row_group_size=max(n, 1))
            start += n
    return buf.getvalue()


def write_table(
    url: str,
    table: pa.Table,
    *,
    metadata: dict[bytes, bytes] | None = None,
    row_groups: list[int] | None = None,
) -> bool:
    """Write ``to_bytes(table)`` to ``url`` atomically, unless the file there already holds
    exactly those bytes (a rerun rewrites nothing). True when it wrote."""
    data = to_bytes(table, metadata=metadata, row_groups=row_groups)
    with storage.reading(url):
        if storage.same_bytes(url, data):
            return False
    with storage.reading(url, "writing"):
        storage.write_bytes(url, data)
    return True
