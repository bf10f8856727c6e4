"""The clip-threshold step: the run's exact CLIP-score threshold for keeping a top fraction.

DataComp's strongest simple baseline keeps the top 30% of the whole pool by CLIP score, so the
threshold is a quantile over every shard, not per shard. This step reads only the ``clip_score``
column of every annotation file of the manifest (through the Parquet layer, a few files at a
time) and finds the exact value by radix selection: each pass counts the next 16 bits of the
scores' order-preserving integer keys (2^20 counters) among the scores still in the running,
until the bucket that holds the wanted rank has at most ``COLLECT`` scores, which the last pass
collects and sorts (two passes for CLIP scores in practice: 20 bits of a float64 key resolve a
score's first 8 mantissa bits). Memory is bounded by the counters, ``COLLECT`` and a few files'
columns, and the result depends only on the multiset of scores: not on the files, their order or
grouping.

Rules:
- null and NaN scores (a failed record, a model without a text tower) are not counted and never
  pass; ``n`` is the number of scores;
- the threshold ``T`` is the ``k``-th largest score, ``k = ceil(F * n)`` (at least 1), with F
  read as the decimal it is written as (0.3 * 10 is 3, not 3.0000000000000004);
- a record passes when ``clip_score >= T``: every score tied with ``T`` passes, so ``kept`` can
  exceed ``k`` by the ties (it is reported). DataComp keeps ``floor(F * n) + 1`` scores before
  ties; the two differ by one record at most.
- no score at all: ``T`` is null and no record passes.

The result goes to ``<output>/_work/clip-threshold.json`` (``core.layout``), written only when it
changed, which save-metadata reads for ``--clip-score-top-fraction``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from airflow_curator.core import layout
from airflow_curator.core.dataset.discovery import load_manifest
from airflow_curator.core.errors import UsageError
from airflow_curator.core.io import parquet, storage
from airflow_curator.core.progress import Progress
from airflow_curator.core.stats import Result, Stats

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

logger = logging.getLogger(__name__)

COLUMN = "clip_score"
DIGIT = 20  # bits counted per pass: 2^20 counters (8 MB)
COLLECT = 1 << 20  # a bucket this small is collected and sorted (8 MB of float64)
READ_AHEAD = 8  # files read concurrently


@dataclass(frozen=True)
class TopThreshold:
    fraction: float
    threshold: float | None
    scores: int  # non-null scores
    nulls: int
    rank: int  # k: the threshold is the k-th largest score
    kept: int  # scores >= threshold (k plus the ties below rank k)
    passes: int

    def to_json(self) -> bytes:
        return json.dumps({"column": COLUMN, **asdict(self)}, indent=1, sort_keys=True).encode()


def rank_of(fraction: float, n: int) -> int:
    """``ceil(F * n)``, at least 1, with F as the decimal it is written as."""
    return max(1, math.ceil(Fraction(repr(fraction)) * n)) if n else 0


def _keys(values: npt.NDArray[Any]) -> tuple[npt.NDArray[np.uint64], int]:
    """Order-preserving uint64 keys of the non-null float scores, and how many were NaN."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    nan = np.isnan(x)
    x = x[~nan] + 0.0  # -0.0 becomes 0.0: equal scores, equal keys
    bits = x.view(np.uint64)
    sign = np.uint64(1 << 63)
    return np.where(bits & sign, ~bits, bits | sign), int(nan.sum())


def _value(key: int) -> float:
    import numpy as np

    sign = 1 << 63
    bits = key ^ sign if key & sign else ~key & ((1 << 64) - 1)
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


def top_threshold(
    chunks: Callable[[], Iterable[npt.NDArray[Any]]], fraction: float
) -> TopThreshold:
    """The exact top-``fraction`` threshold of the scores ``chunks()`` yields (float arrays,
    NaN for null); ``chunks`` is called once per pass."""
    import numpy as np

    if not 0 < fraction <= 1:
        raise UsageError(f"the top fraction must be in (0, 1], not {fraction}")
    prefix, bits = 0, 0  # the top ``bits`` bits of the wanted key, found so far
    above = 0  # scores whose key is above the current bucket
    in_bucket: int | None = None  # scores in the current bucket (None: not yet counted)
    n = nulls = rank = need = passes = 0
    while True:
        passes += 1
        collect = in_bucket is not None and in_bucket <= COLLECT
        width = min(DIGIT, 64 - bits)
        counts = np.zeros(1 << width, dtype=np.int64)
        kept: list[npt.NDArray[np.uint64]] = []
        for chunk in chunks():
            keys, nan = _keys(chunk)
            if passes == 1:
                n, nulls = n + len(keys), nulls + nan
            if bits:
                keys = keys[(keys >> np.uint64(64 - bits)) == np.uint64(prefix)]
            if collect:
                kept.append(keys)
            else:
                shift = np.uint64(64 - bits - width)
                digits = ((keys >> shift) & np.uint64((1 << width) - 1)).astype(np.int64)
                counts += np.bincount(digits, minlength=1 << width)
        if passes == 1:
            rank = need = rank_of(fraction, n)
            if n == 0:
                return TopThreshold(fraction, None, 0, nulls, 0, 0, passes)
        if collect:
            desc = np.sort(np.concatenate(kept) if kept else np.zeros(0, np.uint64))[::-1]
            key = int(desc[need - 1])
            ties = int(np.count_nonzero(desc >= np.uint64(key)))
            return TopThreshold(fraction, _value(key), n, nulls, rank, above + ties, passes)
        # the digit whose bucket holds the need-th largest of the bucket
        from_top = np.cumsum(counts[::-1])
        j = int(np.searchsorted(from_top, need))
        digit = (1 << width) - 1 - j
        before = int(from_top[j - 1]) if j else 0
        above, need = above + before, need - before
        prefix, bits = (prefix << width) | digit, bits + width
        in_bucket = int(counts[digit])
        if bits == 64:  # every bit known: the bucket is one value
            return TopThreshold(fraction, _value(prefix), n, nulls, rank, above + in_bucket, passes)


def annotation_urls(output: str, annotations: str | None = None) -> list[tuple[str, str]]:
    """(shard stem, annotation file URL) for every shard of the job's manifest."""
    man_url = layout.manifest_url(output)
    if not storage.exists(man_url):
        raise UsageError(f"no dataset manifest at {man_url}: run discover first")
    folder = annotations or layout.annotations_url(output)
    return [
        (s.stem, storage.join(folder, f"{s.stem}.parquet")) for s in load_manifest(man_url).shards
    ]


def read_scores(files: list[tuple[str, str]], workers: int = READ_AHEAD) -> Iterator[Any]:
    """The ``clip_score`` column of each file as a float64 array (NaN for null), a few files
    read at a time; a file without the column is a wrong request (a model without text)."""
    import numpy as np

    def one(item: tuple[str, str]) -> Any:
        stem, url = item
        if not storage.exists(url):
            raise UsageError(f"shard {stem}: no annotations at {url}: run annotate first")
        table = parquet.read_table(url, stem, [], optional=(COLUMN,))
        if COLUMN not in table.column_names:
            raise UsageError(
                f"shard {stem}: {url} has no {COLUMN!r} column (a model without a text tower "
                "scores no caption): drop --clip-score-top-fraction"
            )
        column = table.column(COLUMN).cast("float64")
        return column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(files), workers):
            yield from pool.map(one, files[start : start + workers])


def clip_threshold(
    output: str, fraction: float, *, annotations: str | None = None, workers: int = READ_AHEAD
) -> Result:
    """Compute the run's top-``fraction`` CLIP-score threshold and write it to the work folder."""
    stats = Stats()
    files = annotation_urls(output, annotations)
    passes = 0

    def chunks() -> Iterator[Any]:
        nonlocal passes
        passes += 1
        progress = Progress(f"clip-threshold pass {passes}", len(files), logger=logger)
        for scores in read_scores(files, workers):
            progress.update(items=len(scores))
            yield scores

    found = top_threshold(chunks, fraction)
    url = layout.clip_threshold_url(output)
    data = found.to_json()
    written = not storage.same_bytes(url, data)
    if written:
        storage.write_bytes(url, data)
    logger.info(
        "top %s of %d CLIP scores: threshold %s keeps %d (%d null) in %d passes",
        fraction, found.scores, found.threshold, found.kept, found.nulls, found.passes,
    )  # fmt: skip
    return stats.result(
        output=output, threshold_file=url, shards=len(files), written=written, **asdict(found)
    )
