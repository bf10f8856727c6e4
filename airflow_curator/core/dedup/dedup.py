"""SemDedup within clusters: mark near-duplicate images, one part of the clusters per task.

Inside a cluster the records are ranked by the keep rule (``aesthetic``: highest aesthetic score,
then lowest id; or NeMo Curator's ``hard``, ``easy`` and ``random``, see ``rank_order``); a record
is a duplicate when its cosine similarity to a higher-ranked record of the same cluster exceeds
``1 - eps`` (NeMo Curator's SemDedup rule), so the top record of every near-duplicate set is kept.
Similarities are computed in square blocks, so memory is ``block**2`` floats whatever the cluster
size, plus the part's rows. The same task also settles exact duplicates whose hash falls in its
part. Writes ``dups/PPPPP.parquet`` (even when empty: its presence says the part is done).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from airflow_curator.core.dedup import store
from airflow_curator.core.dedup.fit import Centroids, load_centroids
from airflow_curator.core.dedup.hash import exact_duplicates, read_part_hashes
from airflow_curator.core.device import pick_device
from airflow_curator.core.errors import ShardError, UsageError
from airflow_curator.core.io import parquet
from airflow_curator.core.progress import Progress
from airflow_curator.core.stats import Result, Stats
from airflow_curator.core.wds.shardspec import format_spec

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

    from airflow_curator.core.dedup.store import Ints, Matrix

logger = logging.getLogger(__name__)

EXACT_MODES = ("auto", "on", "off")
KEEP_RULES = ("aesthetic", "hard", "easy", "random")


def near_duplicates(
    x: Matrix, eps: float | None, block: int = 2048, device: str = "cpu"
) -> tuple[Ints, Matrix]:
    """For rows of ``x`` in rank order (unit vectors): the index of the most similar
    higher-ranked row when that similarity is above ``1 - eps`` (any, for ``eps=None``), else
    -1; and the similarity."""
    import numpy as np
    import torch

    n = len(x)
    dup_of = np.full(n, -1, dtype=np.int64)
    sims = np.zeros(n, dtype=np.float32)
    if n < 2:
        return dup_of, sims
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    side = min(block, n)
    upper = torch.ones((side, side), dtype=torch.bool, device=device).triu_()
    for a in range(0, n, block):
        b = min(a + block, n)
        best = torch.full((b - a,), -np.inf, device=device)
        arg = torch.full((b - a,), -1, dtype=torch.int64, device=device)
        for c in range(0, b, block):
            d = min(c + block, b)
            s = xt[a:b] @ xt[c:d].T
            if c == a:  # the diagonal block: only strictly higher-ranked columns count
                s.masked_fill_(upper[: b - a, : d - c], -np.inf)
            m, am = s.max(dim=1)
            better = m > best
            best = torch.where(better, m, best)
            arg = torch.where(better, am + c, arg)
        best_np, arg_np = best.cpu().numpy(), arg.cpu().numpy()
        hit = arg_np >= 0 if eps is None else best_np > 1.0 - eps
        dup_of[a:b] = np.where(hit, arg_np, -1)
        sims[a:b] = np.where(hit, best_np, 0.0)
    return dup_of, sims


def rank_order(
    ids: npt.NDArray[np.str_],
    aesthetic: Matrix,
    keep: str = "aesthetic",
    distance: Matrix | None = None,
    seed: int = 0,
) -> Ints:
    """Positions in keep order (the first of a near-duplicate set is the one kept).

    ``aesthetic``: highest aesthetic score first (missing last), then lowest id. NeMo Curator's
    rules by ``distance`` to the cluster centroid: ``hard`` farthest first (then highest id),
    ``easy`` closest first (then lowest id); ``random``: by a seeded hash of the id, so the order
    does not depend on how records were split into tasks.
    """
    import numpy as np

    if keep == "aesthetic":
        neg = np.where(np.isnan(aesthetic), np.inf, -aesthetic.astype(np.float64))
        return np.lexsort((ids, neg))
    if keep in ("hard", "easy"):
        assert distance is not None, "hard and easy rank by the distance to the centroid"
        order: Ints = np.lexsort((ids, distance))
        return order[::-1] if keep == "hard" else order
    if keep == "random":
        draw = [hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8] for i in ids]
        return np.lexsort((ids, np.array([int.from_bytes(d, "big") for d in draw], np.uint64)))
    raise UsageError(f"keep must be one of {', '.join(KEEP_RULES)}, not {keep!r}")


def read_part(files: list[store.ShardFile], part: int, cent: Centroids) -> pa.Table | None:
    """The part's rows from every assign file (its row groups only), in shard order."""
    import pyarrow as pa

    tables = []
    for _, shard, url in files:
        with parquet.open_parquet(url, shard) as pf:
            meta = store.file_meta(pf.schema_arrow)
            if meta.get("centroids") != cent.digest or meta.get("parts") != cent.parts.count:
                raise ShardError(
                    shard, f"{url} was assigned with other centroids: rerun dedup-assign"
                )
            col = pf.schema_arrow.get_field_index("cluster")
            for rg in range(pf.num_row_groups):
                info = pf.metadata.row_group(rg)
                column_stats = info.column(col).statistics
                ours = info.num_rows and column_stats is not None and column_stats.has_min_max
                if ours and int(cent.parts.part_of([column_stats.min])[0]) == part:
                    tables.append(pf.read_row_group(rg))
    return pa.concat_tables(tables) if tables else None


def dedup_part(
    table: pa.Table,
    eps: float | None,
    block: int,
    device: str,
    keep: str = "aesthetic",
    cent: Centroids | None = None,
) -> tuple[list[tuple], dict[str, int]]:
    """Semantic duplicates of a part as (shard, id, duplicate_of, similarity, kind, cluster);
    ``cent`` gives the distances to the centroids that ``hard`` and ``easy`` rank by."""
    import numpy as np

    clusters = table.column("cluster").to_numpy()
    ids = np.array(table.column("id").to_pylist(), dtype=str)
    shards = table.column("shard").to_numpy()
    aesthetic = table.column("aesthetic").to_numpy(zero_copy_only=False).astype(np.float32)
    x = store.to_matrix(table.column("embedding"), "part")
    by_cluster = np.argsort(clusters, kind="stable")
    bounds = np.flatnonzero(np.diff(clusters[by_cluster])) + 1
    rows: list[tuple] = []
    largest = 0
    for members in np.split(by_cluster, bounds):
        if not len(members):
            continue
        largest = max(largest, len(members))
        distance = None
        if keep in ("hard", "easy"):
            assert cent is not None
            distance = 1.0 - x[members] @ cent.vectors[clusters[members[0]]]
        seed = int(cent.meta.get("seed", 0)) if cent is not None else 0
        ranked = members[rank_order(ids[members], aesthetic[members], keep, distance, seed)]
        dup_of, sims = near_duplicates(x[ranked], eps, block, device)
        for i in np.flatnonzero(dup_of >= 0):
            r, k = ranked[i], ranked[dup_of[i]]
            rows.append((int(shards[r]), str(ids[r]), str(ids[k]), float(sims[i]), "semantic",
                         int(clusters[r])))  # fmt: skip
    return rows, {"largest_cluster": largest}


def dups_table(rows: list[tuple]) -> pa.Table:
    import pyarrow as pa

    rows = sorted(rows, key=lambda r: (r[0], r[1], r[4]))
    cols = list(zip(*rows)) if rows else [()] * 6
    return pa.table({
        "shard": pa.array(cols[0], pa.int32()),
        "id": pa.array(cols[1], pa.string()),
        "duplicate_of": pa.array(cols[2], pa.string()),
        "similarity": pa.array(cols[3], pa.float32()),
        "kind": pa.array(cols[4], pa.string()),
        "cluster": pa.array(cols[5], pa.int32()),
    })  # fmt: skip


def check_complete(shards: set[int], files: list[store.ShardFile], what: str, step: str) -> None:
    """Every annotated shard must have its file: a missing one would pass as all unique."""
    if not files:
        raise UsageError(f"no {what}: run {step} first")
    missing = shards - {f.number for f in files}
    if missing:
        spec = format_spec(missing)
        raise UsageError(f"shards {spec} have no {what}: run {step} --shards {spec}")


def dedup_clusters(
    output: str,
    clusters: str | None = None,
    *,
    annotations: str | None = None,
    eps: float | None = 0.01,
    block: int = 2048,
    exact: str = "auto",
    device: str = "auto",
    keep: str = "aesthetic",
) -> Result:
    """Write ``dups/PPPPP.parquet`` for the parts of the ``clusters`` spec. ``eps=None`` marks
    every record that has a higher-ranked one in its cluster, with the similarity, so that a
    caller can apply several thresholds later (the Python API's ``extract_dedup_data``)."""
    if keep not in KEEP_RULES:
        raise UsageError(f"--keep must be one of {', '.join(KEEP_RULES)}, not {keep!r}")
    if eps is not None and not 0 <= eps < 2:
        raise UsageError("--eps must be in [0, 2): duplicates have cosine similarity > 1 - eps")
    if block < 1:
        raise UsageError("--block must be >= 1")
    if exact not in EXACT_MODES:
        raise UsageError(f"--exact must be one of {', '.join(EXACT_MODES)}, not {exact!r}")
    stats = Stats()
    cent = load_centroids(output)
    parts = cent.parts.select(clusters)
    device = pick_device(device)
    shards = {f.number for f in store.annotation_files(output, annotations)}
    files = store.shard_files(store.folder_url(output, "assign"))
    check_complete(shards, files, "assignments", "dedup-assign")
    hash_files = store.shard_files(store.folder_url(output, "hash")) if exact != "off" else []
    if exact == "on" and not hash_files:
        raise UsageError(
            f"--exact on: {store.folder_url(output, 'hash')} has no hashes: run dedup-hash"
        )
    if hash_files:
        check_complete(shards, hash_files, "hashes", "dedup-hash")
    totals = {"records": 0, "semantic": 0, "exact": 0, "largest_cluster": 0}
    progress = Progress("dedup", len(parts), unit="parts", logger=logger)
    for part in parts:
        table = read_part(files, part, cent)
        rows: list[tuple] = []
        n = 0
        if table is not None:
            n = table.num_rows
            rows, found = dedup_part(table, eps, block, device, keep, cent)
            totals["largest_cluster"] = max(totals["largest_cluster"], found["largest_cluster"])
            del table
        semantic = len(rows)
        hashes = read_part_hashes(hash_files, part, cent.parts) if hash_files else None
        if hashes is not None:
            hshard, hid = hashes.column("shard").to_pylist(), hashes.column("id").to_pylist()
            for r, k in exact_duplicates(hashes):
                rows.append((hshard[r], hid[r], hid[k], 1.0, "exact", -1))
        meta = {"centroids": cent.digest, "parts": cent.parts.count, "eps": eps,
                "exact": bool(hash_files), "keep": keep}  # fmt: skip
        store.write_file(
            store.file_url(output, "dups", store.part_name(part)), dups_table(rows), meta
        )
        totals["records"] += n
        totals["semantic"] += semantic
        totals["exact"] += len(rows) - semantic
        progress.update(items=n)
    return stats.result(
        output=output,
        clusters=clusters or "all",
        parts=len(parts),
        eps=eps,
        keep=keep,
        exact_pass=bool(hash_files),
        device=device,
        **totals,
    )
