"""Where deduplication keeps its files under ``O/_work/dedup``, and how it reads and writes them.

One place for the layout the dedup steps hand to each other (so each step is only its algorithm);
the files are read and written through the Parquet layer (``core.io.parquet``):

```
centroids.parquet        k-means centroids + what made them (n_clusters, parts, seed, digest)
assign/NNNNN.parquet     per input shard: (shard, id, cluster, aesthetic, embedding), sorted by
                         cluster, one row group per *part* (a contiguous range of clusters)
hash/NNNNN.parquet       per input shard: (shard, id, sha256, aesthetic) of the image bytes
dups/PPPPP.parquet       per part: the records marked as duplicates, sorted by (shard, id)
result/NNNNN.parquet     per input shard: (id, is_unique, duplicate_of), the annotations' row order
```

Every file is written whole and deterministically (fixed schema, no timestamps), so a rerun
writes the same bytes and a different split into tasks gives the same files. Per-shard files
are named by the input shard's own stem, whatever its width.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow_curator.core.errors import ShardError, UsageError
from airflow_curator.core.groups import group_value
from airflow_curator.core.io import parquet, storage
from airflow_curator.core.layout import annotations_url, dedup_url
from airflow_curator.core.wds.naming import shard_id
from airflow_curator.core.wds.shardspec import format_spec, parse_spec

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

    Matrix = npt.NDArray[np.float32]  # (n, dim) float32 rows, e.g. embeddings
    Ints = npt.NDArray[np.int64]

logger = logging.getLogger(__name__)

META_KEY = b"airflow_curator.dedup"
EMBEDDING = "image_embedding"
AESTHETIC = "aesthetic_score"


def centroids_url(output: str) -> str:
    return storage.join(dedup_url(output), "centroids.parquet")


def folder_url(output: str, kind: str) -> str:
    """``assign``, ``hash``, ``dups`` or ``result`` folder of the job."""
    return storage.join(dedup_url(output), kind)


def file_url(output: str, kind: str, name: str) -> str:
    """``kind/<name>.parquet``: ``name`` is the input shard's own stem (any width, as discovery
    found it) for per-shard files, a part's ``part_name`` for ``dups``."""
    return storage.join(folder_url(output, kind), f"{name}.parquet")


def part_name(part: int) -> str:
    return f"{part:05d}"


class ShardFile(NamedTuple):
    """A per-shard work file: the shard's number, its stem as named (``000042``) and URL."""

    number: int
    stem: str
    url: str


def shard_files(folder: str, spec: str | None = None, what: str = "files") -> list[ShardFile]:
    """The ``<stem>.parquet`` files of a folder, by shard number; a selection naming a shard
    that has no file is an error."""
    if not storage.exists(folder):
        if spec is None:
            return []
        raise UsageError(f"{folder} does not exist (no {what})")
    found: dict[int, ShardFile] = {}
    for entry in storage.list_files(folder):
        if entry.name.startswith((".", "_")) or not entry.name.endswith(".parquet"):
            continue
        number = shard_id(entry.name)
        if number is not None:
            found[number] = ShardFile(number, entry.name[: -len(".parquet")], entry.url)
    wanted = parse_spec(spec)
    if wanted is None:
        return [found[n] for n in sorted(found)]
    missing = wanted - set(found)
    if missing:
        raise UsageError(f"{folder}: no {what} for shards {format_spec(missing)}")
    return [found[n] for n in sorted(wanted)]


def annotation_files(
    output: str, annotations: str | None = None, shards: str | None = None
) -> list[ShardFile]:
    """The annotation files the dedup steps read (default folder: the job's), at least one."""
    folder = annotations or annotations_url(output)
    files = shard_files(folder, shards, "annotations")
    if not files:
        raise UsageError(f"{folder}: no NNNNN.parquet annotation files: run annotate first")
    return files


def file_meta(schema: pa.Schema) -> dict[str, Any]:
    """What a dedup step recorded in one of its files (centroids digest, parts, eps, ...)."""
    raw = (schema.metadata or {}).get(META_KEY)
    return json.loads(raw) if raw else {}


def write_file(
    url: str,
    table: pa.Table,
    meta: dict[str, Any] | None = None,
    row_groups: list[int] | None = None,
) -> None:
    """A dedup work file through the Parquet layer, ``meta`` in its schema metadata;
    ``row_groups``: the row counts of consecutive row groups (default one)."""
    metadata = {META_KEY: json.dumps(meta, sort_keys=True).encode()} if meta else None
    parquet.write_table(url, table, metadata=metadata, row_groups=row_groups)


@dataclass(frozen=True)
class Parts:
    """Clusters ``0..n_clusters-1`` cut into ``count`` contiguous parts: the unit a dedup task
    owns, a row group of the assign files and one ``dups`` file."""

    n_clusters: int
    count: int

    def start(self, part: int) -> int:
        return part * self.n_clusters // self.count

    def clusters(self, part: int) -> range:
        return range(self.start(part), self.start(part + 1))

    def part_of(self, clusters: npt.ArrayLike) -> Ints:
        """Part of each cluster (numpy array in, numpy array out)."""
        import numpy as np

        starts = np.array([self.start(p) for p in range(self.count)], dtype=np.int64)
        return np.searchsorted(starts, np.asarray(clusters, dtype=np.int64), side="right") - 1

    def hash_part(self, digests: npt.NDArray[np.uint8]) -> Ints:
        """Part of each sha256 (numpy ``(n, 32)`` uint8): the first 4 bytes scaled to ``count``."""
        import numpy as np

        head = digests[:, :4].astype(np.uint64)
        h32 = (head[:, 0] << 24) | (head[:, 1] << 16) | (head[:, 2] << 8) | head[:, 3]
        return ((h32 * np.uint64(self.count)) >> np.uint64(32)).astype(np.int64)

    def select(self, spec: str | None) -> list[int]:
        """Parts of a ``--clusters`` spec, which must cover whole parts (its groups do)."""
        wanted = parse_spec(spec)
        if wanted is None:
            return list(range(self.count))
        bad = [c for c in wanted if c >= self.n_clusters]
        if bad:
            raise UsageError(f"--clusters {spec!r}: there are only {self.n_clusters} clusters")
        parts = sorted({int(p) for p in self.part_of(sorted(wanted))})
        for p in parts:
            whole = self.clusters(p)
            if not set(whole) <= wanted:
                raise UsageError(
                    f"--clusters {spec!r} splits part {p} "
                    f"(clusters {whole.start}-{whole.stop - 1}): "
                    "use the groups dedup-fit returned"
                )
        return parts

    def groups(self, records: int | None = None) -> list[dict[str, Any]]:
        """One value per part, for ``.expand`` over the dedup step; with the dataset's
        ``records``, each carries its share (what its pod's memory is sized from)."""
        out = []
        for p in range(self.count):
            r = self.clusters(p)
            extra = {} if records is None else {"records": -(-records * len(r) // self.n_clusters)}
            out.append(
                group_value("clusters", r, part_name(r.start), part_name(r.stop - 1), **extra)
            )
        return out


def fixed_list(values: npt.ArrayLike, dim: int) -> pa.FixedSizeListArray:
    """A ``fixed_size_list<float32>[dim]`` array from a ``(n, dim)`` float32 numpy array."""
    import numpy as np
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, dim)


def to_matrix(column: pa.Array | pa.ChunkedArray, shard: str) -> Matrix:
    """``(n, dim)`` float32 numpy array of a non-null fixed-size-list (or list) column."""
    import numpy as np
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if flat.size % n:
        raise ShardError(shard, "embeddings have different lengths")
    return flat.reshape(n, flat.size // n)
