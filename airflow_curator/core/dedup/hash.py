"""Exact duplicates: records whose image bytes are identical, found by sha256 without embeddings.

Per input shard, ``dedup-hash`` writes ``hash/NNNNN.parquet`` (shard, id, sha256, aesthetic):
the hash comes from img2dataset's ``sha256`` column when the shard's Parquet has one, otherwise
from a single streaming read of the tar. The dedup task of part ``p`` then takes the hashes whose
first bytes fall in ``p`` from every shard, so identical images meet in one task wherever they
are. Within a set of identical images the one kept follows the semantic rule (highest aesthetic
score, then lowest id), so both passes agree on which copy survives.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from airflow_curator.core import layout
from airflow_curator.core.dataset.discovery import Manifest, Shard, shards_of
from airflow_curator.core.dedup import store
from airflow_curator.core.errors import ShardError, UsageError
from airflow_curator.core.io import parquet, storage
from airflow_curator.core.progress import Progress
from airflow_curator.core.stats import Result, Stats
from airflow_curator.core.wds.records import iter_records

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_curator.core.dedup.store import Matrix

logger = logging.getLogger(__name__)

SOURCES = ("auto", "tar", "parquet")
SHA_COLUMN = "sha256"  # img2dataset's hash of the image bytes, hex


def tar_hashes(shard: Shard) -> tuple[list[str], list[bytes]]:
    """Ids and sha256 digests of the records with an image, in tar order."""
    ids, digests = [], []
    for rec in iter_records(shard.tar, shard.stem, size=shard.tar_bytes):
        ext = rec.image_ext()
        if ext is not None:
            ids.append(rec.id)
            digests.append(hashlib.sha256(rec.data[ext]).digest())
    return ids, digests


def parquet_hashes(shard: Shard, id_col: str) -> tuple[list[str], list[bytes]] | None:
    """Ids and digests from the shard's ``sha256`` column, or None when it has none."""
    read = parquet.load(
        shard.parquet, shard.stem, [id_col], optional=(SHA_COLUMN,), size=shard.parquet_bytes
    )
    if SHA_COLUMN not in read.schema.names:
        return None
    table = read.table
    ids, digests = [], []
    for rid, hexdigest in zip(
        table.column(id_col).to_pylist(), table.column(SHA_COLUMN).to_pylist()
    ):
        if hexdigest is None:
            continue  # img2dataset: a URL that was not downloaded has no record in the tar
        try:
            digest = bytes.fromhex(hexdigest)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ShardError(
                shard.stem, f"record {rid}: {SHA_COLUMN} {hexdigest!r} is not a sha256"
            )
        ids.append(str(rid))
        digests.append(digest)
    return ids, digests


def aesthetic_of(annotations: str, shard: str, id_col: str, ids: list[str]) -> Matrix:
    """The records' aesthetic scores from the shard's annotation file (NaN when absent)."""
    import numpy as np

    out = np.full(len(ids), np.nan, dtype=np.float32)
    url = storage.join(annotations, f"{shard}.parquet")
    want = parquet.Want(url, shard, [], optional=(id_col, store.AESTHETIC))
    read = next(parquet.load_many([want], missing_ok=True))
    if read is None:
        return out
    table = read.table
    if table.num_columns < 2:
        return out
    score = dict(zip(table.column(id_col).to_pylist(), table.column(store.AESTHETIC).to_pylist()))
    for i, rid in enumerate(ids):
        value = score.get(rid)
        if value is not None:
            out[i] = value
    return out


def hash_shards(
    dataset: str,
    output: str,
    shards: str | None = None,
    *,
    id_col: str = "key",
    annotations: str | None = None,
    source: str = "auto",
    manifest: Manifest | str | None = None,
) -> Result:
    """Write ``hash/NNNNN.parquet`` for the selected shards of the dataset (``manifest``:
    discover's, object or URI, so no listing)."""
    import pyarrow as pa

    if source not in SOURCES:
        raise UsageError(f"--source must be one of {', '.join(SOURCES)}, not {source!r}")
    stats = Stats()
    selected = shards_of(dataset, manifest, on_invalid="skip").select(shards)
    annotations = annotations or layout.annotations_url(output)
    progress = Progress("dedup-hash", len(selected), logger=logger)
    per_shard: list[Result] = []
    for shard in selected:
        found = parquet_hashes(shard, id_col) if source != "tar" else None
        if found is None and source == "parquet":
            raise ShardError(shard.stem, f"{shard.parquet} has no {SHA_COLUMN!r} column")
        ids, digests = found if found is not None else tar_hashes(shard)
        used = "parquet" if found is not None else "tar"
        table = pa.table({
            "shard": pa.array([shard.id] * len(ids), pa.int32()),
            "id": pa.array(ids, pa.string()),
            "sha256": pa.array(digests, pa.binary(32)),
            "aesthetic": pa.array(aesthetic_of(annotations, shard.stem, id_col, ids), pa.float32(),
                                  from_pandas=True),
        })  # fmt: skip
        store.write_file(store.file_url(output, "hash", shard.stem), table, {"source": used})
        per_shard.append({"shard": shard.stem, "records": len(ids), "source": used})
        progress.update(items=len(ids), nbytes=shard.tar_bytes if used == "tar" else 0)
    return stats.result(
        dataset=dataset,
        output=output,
        hash=store.folder_url(output, "hash"),
        shards=len(per_shard),
        records=sum(s["records"] for s in per_shard),
        per_shard=per_shard,
    )


def read_part_hashes(
    files: list[store.ShardFile], part: int, parts: store.Parts
) -> pa.Table | None:
    """Rows of the hash files whose sha256 falls in ``part`` (None when there are none)."""
    import numpy as np
    import pyarrow as pa

    tables = []
    for _, shard, url in files:
        table = parquet.read_table(url, shard)
        if not table.num_rows:
            continue
        raw = b"".join(table.column("sha256").to_pylist())
        digests = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 32)
        tables.append(table.filter(pa.array(parts.hash_part(digests) == part)))
    return pa.concat_tables(tables) if tables else None


def exact_duplicates(table: pa.Table) -> list[tuple[int, int]]:
    """``(row, kept row)`` for every row whose bytes equal a row ranked higher (highest
    aesthetic score, then lowest id)."""
    import math

    ids = table.column("id").to_pylist()
    digests = table.column("sha256").to_pylist()
    scores = table.column("aesthetic").to_pylist()

    def rank(i: int) -> tuple[bytes, float, str]:
        s = scores[i]
        return digests[i], -s if s is not None and not math.isnan(s) else math.inf, ids[i]

    out: list[tuple[int, int]] = []
    order = sorted(range(len(ids)), key=rank)
    keep = -1  # the first of each run of equal digests: set before any duplicate
    for pos, i in enumerate(order):
        if pos and digests[i] == digests[order[pos - 1]]:
            out.append((i, keep))
        else:
            keep = i
    return out
