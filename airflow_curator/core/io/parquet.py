"""The one Parquet layer: every Parquet the pipeline reads or writes goes through here.

Reading takes the columns a step needs, checks they are there, and costs few requests on an
object store, whatever pyarrow would do on its own (a plain remote ``pq.read_table`` costs about
11): a whole object in one request when all of it is wanted or it is small (its size from the
manifest); otherwise its footer in one ranged request (a positional range when the size is known,
else a suffix whose answer tells the size), then the chosen columns' chunks in merged ranges, all
in flight at once. ``load_many`` does that for a batch of files together (hundreds of requests
in flight), ``load`` and ``read_table`` for one.
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
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_curator.core.errors import DataError, ShardError, TransientError
from airflow_curator.core.io import storage
from airflow_curator.core.io.ranges import Got, Span, read_spans

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

WHOLE = 8 << 20  # objects up to this size are fetched in one request when their size is known
TAIL = 64 << 10  # the footer read: what pyarrow itself reads first
GAP = 1 << 20  # column chunks closer than this are read as one range
WINDOW = 256  # files per batch of ``load_many``: their requests are in flight together
MAGIC = b"PAR1"


def _fault(shard: str | None, reason: str) -> DataError:
    return ShardError(shard, reason) if shard is not None else DataError(reason)


@dataclass(frozen=True)
class Want:
    """One Parquet read: ``columns`` (None: all) plus those of ``optional`` the file has;
    ``size`` from the manifest when known."""

    url: str
    shard: str | None
    columns: Sequence[str] | None = None
    optional: tuple[str, ...] = ()
    size: int | None = None


@dataclass
class Loaded:
    """A read's table, the whole file's Arrow schema (its metadata included) and its size."""

    table: pa.Table
    schema: pa.Schema
    size: int | None


class Pieces(storage.Seekable):
    """A read-only file of ``size`` bytes of which some ranges were fetched: what pyarrow reads
    a remote file through. A read outside them is fetched (one ranged request) and logged."""

    def __init__(self, url: str, size: int, pieces: list[tuple[int, bytes]]) -> None:
        self.url, self.size, self.pos = url, size, 0
        self.pieces = sorted(pieces)
        self.closed = False

    def add(self, start: int, data: bytes) -> None:
        """Another fetched range; one that meets or overlaps a piece is joined to it, so a
        read across both is served whole."""
        for k, (at, old) in enumerate(self.pieces):
            if start <= at + len(old) and at <= start + len(data):
                lo = min(at, start)
                buf = bytearray(max(at + len(old), start + len(data)) - lo)
                buf[at - lo : at - lo + len(old)] = old
                buf[start - lo : start - lo + len(data)] = data
                del self.pieces[k]
                self.add(lo, bytes(buf))
                return
        self.pieces.append((start, data))
        self.pieces.sort()

    @property
    def whole(self) -> bool:
        (at, data), *rest = self.pieces
        return not rest and at == 0 and len(data) == self.size

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        start, self.pos = self.pos, end
        for at, data in self.pieces:
            if at <= start and end <= at + len(data):
                return data[start - at : end - at]
        logger.debug("%s: bytes %d-%d not fetched ahead: one more request", self.url, start, end)
        data = read_spans([Span(self.url, start, end)])[0].data  # type: ignore[union-attr]
        self.add(start, data)
        return data

    def close(self) -> None:
        self.closed = True


def _parquet_file(source: Any, url: str, shard: str | None) -> pq.ParquetFile:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(source)
    except (TransientError, DataError, FileNotFoundError):
        raise
    except (pa.ArrowException, OSError) as e:  # remote storage failures were raised above
        raise _fault(shard, f"{url} is not readable Parquet: {e}") from e


class _Guard:
    """pyarrow's errors inside are the file's fault, named as such. A class, not a generator:
    discovery enters one per footer, tens of thousands."""

    __slots__ = ("shard", "url")

    def __init__(self, url: str, shard: str | None) -> None:
        self.url, self.shard = url, shard

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        if error is None or isinstance(error, (TransientError, DataError)):
            return
        if isinstance(error, FileNotFoundError):
            raise _fault(self.shard, f"{self.url} does not exist") from None
        import pyarrow as pa

        if isinstance(error, (pa.ArrowException, OSError)):
            raise _fault(self.shard, f"{self.url} is not readable Parquet: {error}") from error


@contextlib.contextmanager
def open_parquet(
    url: str, shard: str | None, *, size: int | None = None
) -> Iterator[pq.ParquetFile]:
    """A ``pyarrow.parquet.ParquetFile`` (its footer read) for schema, metadata and row-group
    reads: a local file, or a remote one whose footer came in one request and whose other
    ranges are fetched as pyarrow asks (``load`` fetches the chosen columns in one go)."""
    if storage.is_local(url):
        with _Guard(url, shard):
            pf = _parquet_file(storage.local_path(url), url, shard)
            yield pf
        return
    (file,) = _tails([Want(url, shard, size=size)], small=WHOLE)
    assert file is not None
    with _Guard(url, shard):
        yield _parquet_file(file, url, shard)


def _tails(
    wants: Sequence[Want],
    *,
    small: int,
    all_whole: bool = False,
    missing_ok: bool = False,
    faults: bool = False,
) -> list[Any]:
    """Each remote file with its footer fetched, or all of it (when its size is known to be at
    most ``small``, or all its columns are wanted and ``all_whole``), in one batch of requests,
    plus one more for the footers longer than the first read. A missing file is None with
    ``missing_ok``; with ``faults`` a file's fault (missing, no footer) is its entry instead of
    raised, so one bad file does not stop the batch."""
    spans = []
    for w in wants:
        whole = (all_whole and w.columns is None) or (w.size is not None and w.size <= small)
        spans.append(Span(w.url) if whole else Span.tail(w.url, TAIL, w.size))
    got = read_spans(spans, missing_ok=True)
    files: list[Any] = []
    more: list[tuple[int, Span]] = []
    for i, (w, span, g) in enumerate(zip(wants, spans, got, strict=True)):
        if g is None:
            if missing_ok:
                files.append(None)
                continue
            fault = _fault(w.shard, f"{w.url} does not exist")
            if not faults:
                raise fault
            files.append(fault)
            continue
        size = w.size if w.size is not None else g.size
        if size is None:
            size = len(g.data) if span.start is None else storage.size(w.url)
        start = 0 if span.start is None else size - len(g.data)
        try:
            need = _footer_length(g, w) + 8
        except DataError as fault:
            if not faults:
                raise
            files.append(fault)
            continue
        files.append(Pieces(w.url, size, [(start, g.data)]))
        if start > 0 and need > len(g.data):
            more.append((i, Span(w.url, max(0, size - need), start)))
    for (i, span), g2 in zip(more, read_spans([s for _, s in more]), strict=True):
        file = files[i]
        assert isinstance(file, Pieces) and g2 is not None and span.start is not None
        file.add(span.start, g2.data)
    return files


def _footer_length(got: Got, want: Want) -> int:
    data = got.data
    if len(data) < 12 or data[-4:] != MAGIC:
        raise _fault(want.shard, f"{want.url} is not readable Parquet: no Parquet footer")
    return int.from_bytes(data[-8:-4], "little")


def _chunk_ranges(pf: pq.ParquetFile, columns: list[str] | None) -> list[tuple[int, int]]:
    """The byte ranges of the chosen top-level columns' chunks, merged across small gaps."""
    md = pf.metadata
    leaves = [
        j
        for j in range(md.num_columns)
        if columns is None or md.schema.column(j).path.split(".")[0] in columns
    ]
    spans = []
    for r in range(md.num_row_groups):
        group = md.row_group(r)
        for j in leaves:
            chunk = group.column(j)
            start = chunk.data_page_offset
            if chunk.has_dictionary_page and 0 < chunk.dictionary_page_offset < start:
                start = chunk.dictionary_page_offset
            spans.append((start, start + chunk.total_compressed_size + 100))  # pyarrow's pad
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start - merged[-1][1] <= GAP:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def load_many(
    wants: Iterable[Want], *, missing_ok: bool = False, window: int = WINDOW
) -> Iterator[Loaded | None]:
    """The reads, in order, a window of files at a time: per window one batch of footer (or
    whole-object) requests and one of column-chunk requests, all in flight together. A missing
    file is a ``ShardError`` (None with ``missing_ok``)."""
    for batch in _windows(wants, window):
        yield from _load_window(batch, missing_ok)


def _windows(wants: Iterable[Want], n: int) -> Iterator[list[Want]]:
    """``wants`` in consecutive lists of ``n`` (the last may be shorter)."""
    batch: list[Want] = []
    for w in wants:
        batch.append(w)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def _load_window(wants: list[Want], missing_ok: bool) -> list[Loaded | None]:
    out: list[Loaded | None] = [None] * len(wants)
    remote: list[int] = []
    for i, w in enumerate(wants):
        if storage.is_local(w.url):
            out[i] = _load_local(w, missing_ok)
        else:
            remote.append(i)
    files = _tails([wants[i] for i in remote], small=WHOLE, all_whole=True, missing_ok=missing_ok)
    opened: list[tuple[int, Pieces, pq.ParquetFile, list[str] | None]] = []
    spans: list[tuple[Pieces, Span]] = []
    for i, file in zip(remote, files, strict=True):
        if file is None:
            continue
        w = wants[i]
        with _Guard(w.url, w.shard):
            pf = _parquet_file(file, w.url, w.shard)
        columns = _columns(pf.schema_arrow, w)
        opened.append((i, file, pf, columns))
        if file.whole:
            continue
        spans += [(file, Span(w.url, a, b)) for a, b in _chunk_ranges(pf, columns)]
    for (file, span), got in zip(spans, read_spans([s for _, s in spans]), strict=True):
        assert got is not None and span.start is not None
        file.add(span.start, got.data)
    for i, file, pf, columns in opened:
        w = wants[i]
        with _Guard(w.url, w.shard):
            table = pf.read(columns=columns)
        out[i] = Loaded(table, pf.schema_arrow, file.size)
    return out


def _load_local(w: Want, missing_ok: bool) -> Loaded | None:
    import os

    path = storage.local_path(w.url)
    if missing_ok and not os.path.isfile(path):
        return None
    with _Guard(w.url, w.shard):
        pf = _parquet_file(path, w.url, w.shard)
        columns = _columns(pf.schema_arrow, w)
        return Loaded(pf.read(columns=columns), pf.schema_arrow, os.path.getsize(path))


def _columns(schema: pa.Schema, w: Want) -> list[str] | None:
    if w.columns is None:
        return None
    return columns_of(schema, w.url, w.shard, list(w.columns), w.optional)


def load(
    url: str,
    shard: str | None,
    columns: Sequence[str] | None = None,
    *,
    optional: tuple[str, ...] = (),
    size: int | None = None,
) -> Loaded:
    """One read (see ``load_many``)."""
    got = next(load_many([Want(url, shard, columns, optional, size)]))
    assert got is not None
    return got


def footers(
    wants: Iterable[Want], *, window: int = 4 * WINDOW, faults: bool = False
) -> Iterator[Any]:
    """The files' footers (schema, row counts), in order: one request per file, a window of
    files in flight at once, the next window's requests going out while this one's footers are
    parsed (discovery reads tens of thousands: the waits and the parsing overlap). ``wants``
    may be a generator that waits (on listing pages): each window goes out once it is full.
    With ``faults``, a file that is missing or not Parquet gives its ``DataError`` in its
    place instead of raising it (discovery reads footers before it knows which files pair)."""

    def fetch(batch: list[Want]) -> list[Any]:
        return _tails([w for w in batch if not storage.is_local(w.url)], small=TAIL, faults=True)

    def parse(batch: list[Want], fetched: Future[list[Any]]) -> Iterator[Any]:
        files = iter(fetched.result())
        for w in batch:
            file = storage.local_path(w.url) if storage.is_local(w.url) else next(files)
            try:
                if isinstance(file, DataError):
                    raise file
                source = _footer_buffer(file) if isinstance(file, Pieces) else file
                footer = _metadata(source, w.url, w.shard)
            except DataError as fault:
                if not faults:
                    raise
                footer = fault
            yield footer

    footer_only = (Want(w.url, w.shard, (), size=w.size) for w in wants)
    with ThreadPoolExecutor(1, thread_name_prefix="footers") as ahead:
        pending = None
        for batch in _windows(footer_only, window):
            fetching = (batch, ahead.submit(fetch, batch))
            if pending is not None:
                yield from parse(*pending)
            pending = fetching
        if pending is not None:
            yield from parse(*pending)


def _footer_buffer(file: Pieces) -> Any:
    """The fetched bytes that end the file (its footer among them, ``_tails`` saw to that)
    as a buffer pyarrow reads the footer from: no Python file object in between."""
    import pyarrow as pa

    return pa.BufferReader(file.pieces[-1][1])


def _metadata(source: Any, url: str, shard: str | None) -> pq.FileMetaData:
    """A file's footer, parsed by the reader ``pq.ParquetFile`` wraps, without its Python
    set-up (schema paths, a Python file object): about a third of the CPU per footer."""
    from pyarrow._parquet import ParquetReader

    with _Guard(url, shard):
        reader = ParquetReader()
        reader.open(source)
        return reader.metadata


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
    columns: Sequence[str] | None = None,
    *,
    optional: tuple[str, ...] = (),
    size: int | None = None,
) -> pa.Table:
    """The file (or its ``columns``, plus those of ``optional`` it has) as a Table."""
    return load(url, shard, columns, optional=optional, size=size).table


def read_schema(url: str, shard: str | None, *, size: int | None = None) -> pa.Schema:
    """The file's Arrow schema (its metadata included), from the footer alone."""
    return next(footers([Want(url, shard, size=size)])).schema.to_arrow_schema()


def num_rows(url: str, shard: str | None, *, size: int | None = None) -> int:
    return int(next(footers([Want(url, shard, size=size)])).num_rows)


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
