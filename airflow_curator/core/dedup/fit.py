"""K-means centroids of the image embeddings, fitted on a sample: the first step of SemDedup.

Spherical k-means (the embeddings are L2-normalised, so the nearest centroid is the one with
the highest dot product) on a seeded sample read one annotation file at a time. The matrix
products run on the GPU when there is one; the sums that move centroids run on the CPU in a
fixed order, so a seed gives the same centroids on every run. The centroids file also fixes
how clusters are cut into *parts*, the unit of the dedup fan-out.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_curator.core.dedup import store
from airflow_curator.core.device import pick_device
from airflow_curator.core.errors import DataError, UsageError
from airflow_curator.core.io import parquet, storage
from airflow_curator.core.progress import Progress
from airflow_curator.core.stats import Result, Stats

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from airflow_curator.core.dedup.store import Matrix

logger = logging.getLogger(__name__)

OVERSAMPLE = 4  # read at least this many times the sample size of rows, from random shards
ASSIGN_BATCH = 65536
INIT_POOL = 16  # k-means++ draws initial centroids from this many rows per cluster


def normalise(x: Matrix) -> Matrix:
    """Rows scaled to unit length (a zero row stays zero)."""
    import numpy as np

    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def nearest(
    x: Matrix, centroids: Matrix, device: str = "cpu", batch: int = ASSIGN_BATCH
) -> tuple[npt.NDArray[np.int32], Matrix]:
    """Index of the nearest centroid of each row, and its cosine similarity (numpy arrays)."""
    import numpy as np
    import torch

    c = torch.from_numpy(np.array(centroids, dtype=np.float32)).to(device)
    labels = np.empty(len(x), dtype=np.int32)
    sims = np.empty(len(x), dtype=np.float32)
    for a in range(0, len(x), batch):
        xb = torch.from_numpy(np.ascontiguousarray(x[a : a + batch])).to(device)
        best, arg = (xb @ c.T).max(dim=1)
        labels[a : a + batch] = arg.cpu().numpy()
        sims[a : a + batch] = best.cpu().numpy()
    return labels, sims


def plus_plus(x: Matrix, k: int, seed: int, device: str = "cpu") -> Matrix:
    """k-means++ initial centroids: each next one drawn with probability proportional to the
    squared distance to the nearest one so far (spreads them over the clusters)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    xd = torch.from_numpy(x).to(device)
    chosen = [int(rng.integers(len(x)))]
    dist = None
    for _ in range(1, k):
        d = (2.0 - 2.0 * (xd @ xd[chosen[-1]])).clamp_(min=0.0)
        dist = d if dist is None else torch.minimum(dist, d)
        weights = dist.double().cpu().numpy()
        total = weights.sum()
        if total <= 0:  # fewer distinct rows than clusters: take unused ones in order
            unused = np.setdiff1d(np.arange(len(x)), chosen)
            chosen.append(int(unused[0]))
            continue
        pick = int(np.searchsorted(np.cumsum(weights), rng.random() * total, side="right"))
        chosen.append(min(pick, len(x) - 1))
    return x[chosen].copy()


def kmeans(x: Matrix, k: int, iterations: int = 20, seed: int = 0, device: str = "cpu") -> Matrix:
    """``(k, dim)`` unit centroids of ``x`` (unit rows). Seeded k-means++ initial centroids; an
    emptied cluster takes the row farthest from its centroid, so none stays empty."""
    import numpy as np
    import torch

    n = len(x)
    if not 1 <= k <= n:
        raise UsageError(f"k-means needs 1 <= n_clusters <= rows, got {k} clusters, {n} rows")
    pool = np.sort(np.random.default_rng([seed, 1]).permutation(n)[: max(k, INIT_POOL * k)])
    centroids = plus_plus(np.ascontiguousarray(x[pool]), k, seed, device)
    xt = torch.from_numpy(x)
    labels = None
    for it in range(iterations):
        new_labels, sims = nearest(x, centroids, device)
        if labels is not None and np.array_equal(labels, new_labels):
            logger.info("k-means converged after %d iterations", it)
            break
        labels = new_labels
        sums = torch.zeros((k, x.shape[1]), dtype=torch.float32)
        sums.index_add_(0, torch.from_numpy(labels.astype(np.int64)), xt)
        counts = np.bincount(labels, minlength=k)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            far = np.argsort(sims, kind="stable")[: len(empty)]
            sums[torch.from_numpy(empty)] = xt[torch.from_numpy(far)]
            logger.info("k-means iteration %d: %d empty clusters re-seeded", it, len(empty))
        centroids = normalise(sums.numpy().astype(np.float32))
    return centroids


def file_rows(files: list[store.ShardFile]) -> dict[int, int]:
    """Rows of each annotation file (its footer), by shard number."""
    return {number: parquet.num_rows(url, shard) for number, shard, url in files}


def sample_embeddings(
    files: list[store.ShardFile], size: int, seed: int, rows: dict[int, int] | None = None
) -> Matrix:
    """Up to ``size`` non-null embeddings, drawn evenly from a seeded random subset of the
    annotation files holding about ``OVERSAMPLE * size`` rows; one file in memory at a time."""
    import numpy as np
    import pyarrow.compute as pc

    rows = file_rows(files) if rows is None else rows
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))
    chosen, total = [], 0
    for i in order:
        chosen.append(files[i])
        total += rows[files[i].number]
        if total >= OVERSAMPLE * size:
            break
    chosen.sort()
    parts = []
    progress = Progress("dedup-fit sample", len(chosen), logger=logger)
    for number, shard, url in chosen:
        table = parquet.read_table(url, shard, [store.EMBEDDING])
        col = table.column(store.EMBEDDING)
        col = col.filter(pc.is_valid(col))
        quota = min(len(col), math.ceil(size * rows[number] / max(total, 1)))
        if quota:
            pick = np.sort(
                np.random.default_rng([seed, number]).choice(len(col), quota, replace=False)
            )
            parts.append(store.to_matrix(col.take(pick), shard))
        progress.update(items=len(col))
    if not parts:
        raise DataError("no image embeddings to fit centroids to (all null or no annotations)")
    dims = {p.shape[1] for p in parts}
    if len(dims) != 1:
        raise DataError(f"image embeddings of different sizes: {sorted(dims)}")
    return normalise(np.concatenate(parts)[:size])


@dataclass(frozen=True)
class Centroids:
    """The fitted centroids and the parameters a later step must agree with."""

    vectors: Matrix  # (n_clusters, dim)
    parts: store.Parts
    meta: dict[str, Any]

    @property
    def digest(self) -> str:
        return self.meta["digest"]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def save_centroids(url: str, vectors: Matrix, parts: int, meta: dict[str, Any]) -> Centroids:
    import numpy as np
    import pyarrow as pa

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    meta = dict(meta, n_clusters=len(vectors), dim=vectors.shape[1], parts=parts,
                digest=hashlib.sha256(vectors.tobytes()).hexdigest()[:16])  # fmt: skip
    table = pa.table({"centroid": store.fixed_list(vectors, vectors.shape[1])})
    store.write_file(url, table, meta)
    return Centroids(vectors, store.Parts(len(vectors), parts), meta)


def load_centroids(output: str) -> Centroids:
    url = store.centroids_url(output)
    if not storage.exists(url):
        raise UsageError(f"{url} does not exist: run dedup-fit first")
    table = parquet.read_table(url, None)
    meta = store.file_meta(table.schema)
    vectors = store.to_matrix(table.column("centroid"), "centroids")
    return Centroids(vectors, store.Parts(meta["n_clusters"], meta["parts"]), meta)


def fit_centroids(
    output: str,
    *,
    annotations: str | None = None,
    n_clusters: int = 1000,
    parts: int = 16,
    iterations: int = 20,
    sample: int = 100_000,
    seed: int = 0,
    device: str = "auto",
) -> Result:
    """Fit and write ``centroids.parquet``; the result lists the cluster groups to expand over."""
    if n_clusters < 1 or parts < 1 or iterations < 1 or sample < 1:
        raise UsageError("--n-clusters, --cluster-groups, --iterations and --sample must be >= 1")
    stats = Stats()
    files = store.annotation_files(output, annotations)
    device = pick_device(device)
    rows = file_rows(files)
    x = sample_embeddings(files, sample, seed, rows)
    k = min(n_clusters, len(x))
    if k < n_clusters:
        logger.warning(
            "only %d embeddings sampled: fitting %d clusters, not %d", len(x), k, n_clusters
        )
    logger.info(
        "k-means: %d clusters of %d embeddings (dim %d) on %s", k, len(x), x.shape[1], device
    )
    vectors = kmeans(x, k, iterations, seed, device)
    meta = {
        "seed": seed,
        "iterations": iterations,
        "sample": len(x),
        "device": device.split(":")[0],
    }
    cent = save_centroids(store.centroids_url(output), vectors, min(parts, k), meta)
    return stats.result(
        output=output,
        centroids=store.centroids_url(output),
        n_clusters=k,
        dim=cent.dim,
        sample=len(x),
        digest=cent.digest,
        groups=cent.parts.groups(records=sum(rows.values())),
    )
