"""The exact top-fraction CLIP-score threshold: numpy's quantile, any grouping, ties, nulls."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_curator.core import layout
from airflow_curator.core.dataset import clip_threshold as ct
from airflow_curator.core.dataset.clip_threshold import clip_threshold, rank_of, top_threshold
from airflow_curator.core.dataset.discovery import discover, save_manifest
from airflow_curator.core.errors import UsageError
from airflow_curator.testing.dataset import write_demo_dataset


def numpy_threshold(scores: np.ndarray, fraction: float) -> float:
    """The k-th largest non-null score, k = ceil(F n), as numpy's inverted-CDF quantile of the
    negated scores (the smallest x with P(-s <= x) >= F)."""
    s = scores[~np.isnan(scores)].astype(np.float64)
    return float(-np.quantile(-s, fraction, method="inverted_cdf"))


def groupings(scores: np.ndarray, rng: np.random.Generator) -> list[list[np.ndarray]]:
    """The same scores as one file, many files of uneven sizes, and shuffled into others."""
    cuts = np.sort(rng.choice(len(scores), size=min(9, len(scores) - 1), replace=False))
    shuffled = rng.permutation(scores)
    return [
        [scores],
        np.split(scores, cuts),
        np.array_split(shuffled, 4),
        [scores[i : i + 1] for i in range(min(len(scores), 50))] + [scores[50:]],
    ]


@pytest.mark.parametrize("collect", [ct.COLLECT, 7])  # 7: radix passes down to single values
@pytest.mark.parametrize("fraction", [0.3, 0.01, 0.5, 0.999, 1.0])
def test_matches_numpy_whatever_the_grouping(monkeypatch, collect, fraction):
    monkeypatch.setattr(ct, "COLLECT", collect)
    rng = np.random.default_rng(int(fraction * 1000) + collect)
    for trial in range(4):
        n = int(rng.integers(2, 3000))
        scores = rng.normal(0.28, 0.06, n).astype(np.float32)
        if trial % 2:
            scores = np.round(scores, 2).astype(np.float32)  # many ties
        scores[rng.random(n) < 0.05] = np.nan  # failed records
        if np.isnan(scores).all():
            continue
        expected = numpy_threshold(scores, fraction)
        valid = scores[~np.isnan(scores)].astype(np.float64)
        results = {top_threshold(lambda g=g: iter(g), fraction) for g in groupings(scores, rng)}
        assert len(results) == 1  # one result whatever the grouping
        (found,) = results
        assert found.threshold == expected
        assert found.scores == len(valid) and found.nulls == n - len(valid)
        assert found.rank == rank_of(fraction, len(valid))
        assert found.kept == int((valid >= expected).sum()) >= found.rank


def test_ties_at_the_threshold_all_pass_and_negative_zero():
    found = top_threshold(lambda: iter([np.array([0.5, 0.2, 0.2, 0.2, 0.1])]), 0.4)
    assert (found.rank, found.threshold, found.kept) == (2, 0.2, 4)
    zeros = top_threshold(lambda: iter([np.array([-0.0, 0.0, -1.0])]), 0.5)
    assert zeros.threshold == 0.0 and zeros.kept == 2


def test_rank_reads_the_fraction_as_written():
    assert rank_of(0.3, 10) == 3  # 0.3 * 10 == 3.0000000000000004 in floats
    assert rank_of(0.3, 11) == 4 and rank_of(0.001, 5) == 1 and rank_of(1.0, 7) == 7
    assert rank_of(0.5, 0) == 0


def test_no_scores_gives_no_threshold():
    found = top_threshold(lambda: iter([np.array([np.nan, np.nan]), np.array([])]), 0.3)
    assert found.threshold is None and found.kept == 0 and found.nulls == 2
    with pytest.raises(UsageError):
        top_threshold(lambda: iter([]), 0)


def test_bounded_passes_on_float32_scores():
    rng = np.random.default_rng(0)
    parts = [rng.random(10_000).astype(np.float32) for _ in range(30)]
    found = top_threshold(lambda: iter(parts), 0.3)
    assert found.passes == 2  # one count pass, one collect pass
    assert found.threshold == numpy_threshold(np.concatenate(parts), 0.3)


def _job(tmp_path, shards: int, per_shard: int, scores: np.ndarray) -> str:
    """A job folder whose manifest has ``shards`` shards and whose annotations hold ``scores``."""
    data = str(tmp_path / f"ds{shards}")
    write_demo_dataset(data, shards=shards, records_per_shard=per_shard, image_bytes=10)
    out = str(tmp_path / f"out{shards}")
    manifest = discover(data, count_records=False)
    save_manifest(manifest, layout.manifest_url(out))
    folder = layout.annotations_url(out)
    os.makedirs(folder)
    parts = np.split(scores, shards)
    for s, part in zip(manifest.shards, parts, strict=True):
        ids = [f"{s.stem}{i:04d}" for i in range(len(part))]
        pq.write_table(
            pa.table({"key": ids, "clip_score": pa.array(part, pa.float32(), mask=np.isnan(part))}),
            os.path.join(folder, f"{s.stem}.parquet"),
        )
    return out


def test_step_writes_the_same_threshold_for_any_shard_layout(tmp_path):
    rng = np.random.default_rng(4)
    scores = np.round(rng.normal(0.3, 0.05, 240), 3).astype(np.float32)
    scores[::17] = np.nan
    files = {}
    for shards in (1, 3, 8):
        out = _job(tmp_path, shards, 240 // shards, scores)
        result = clip_threshold(out, 0.3)
        assert result["threshold"] == numpy_threshold(scores, 0.3)
        assert result["shards"] == shards and result["written"]
        with open(layout.clip_threshold_url(out), "rb") as f:
            files[shards] = f.read()
        assert not clip_threshold(out, 0.3)["written"]  # a rerun rewrites nothing
    assert len(set(files.values())) == 1
    saved = json.loads(files[1])
    assert saved["fraction"] == 0.3 and saved["column"] == "clip_score"


def test_step_names_what_is_missing(tmp_path):
    out = _job(tmp_path, 2, 5, np.arange(10, dtype=np.float32))
    os.remove(os.path.join(layout.annotations_url(out), "00001.parquet"))
    with pytest.raises(UsageError, match="shard 00001: no annotations"):
        clip_threshold(out, 0.5)
    pq.write_table(
        pa.table({"key": ["x"]}), os.path.join(layout.annotations_url(out), "00001.parquet")
    )
    with pytest.raises(UsageError, match="no 'clip_score' column"):
        clip_threshold(out, 0.5)
    with pytest.raises(UsageError, match="run discover first"):
        clip_threshold(str(tmp_path / "nothing"), 0.5)
