from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from airflow_curator.core.dedup.fit import fit_centroids, kmeans, load_centroids, nearest, normalise
from airflow_curator.core.dedup.store import Parts, centroids_url
from airflow_curator.core.errors import CuratorError
from airflow_curator.testing.annotations import write_synthetic_annotations


def blobs(seed: int, k: int = 5, per: int = 40, dim: int = 16):
    rng = np.random.default_rng(seed)
    centers = normalise(rng.standard_normal((k, dim)).astype(np.float32))
    x = np.repeat(centers, per, axis=0) + 0.05 * rng.standard_normal((k * per, dim))
    return centers, normalise(x.astype(np.float32)), np.repeat(np.arange(k), per)


def test_kmeans_finds_separated_clusters():
    _, x, truth = blobs(1)
    cent = kmeans(x, 5, iterations=30, seed=3)
    labels, sims = nearest(x, cent)
    # every true cluster maps to exactly one fitted cluster and back
    pairs = set(zip(truth.tolist(), labels.tolist()))
    assert len(pairs) == 5 and len({fitted for _, fitted in pairs}) == 5
    assert np.allclose(np.linalg.norm(cent, axis=1), 1, atol=1e-5)
    assert sims.min() > 0.9


def test_kmeans_is_deterministic_for_a_seed_and_differs_across_seeds():
    _, x, _ = blobs(2, k=12, per=10)
    a = kmeans(x, 6, seed=7)
    assert np.array_equal(a, kmeans(x, 6, seed=7))
    assert not np.array_equal(a, kmeans(x, 6, seed=8))


def test_kmeans_never_leaves_a_cluster_empty():
    # 3 distinct points, 3 copies each; 3 clusters must each own one distinct point
    x = normalise(np.repeat(np.eye(3, 8, dtype=np.float32), 3, axis=0))
    cent = kmeans(x, 3, seed=0)
    labels, _ = nearest(x, cent)
    assert sorted(np.bincount(labels, minlength=3)) == [3, 3, 3]


def test_kmeans_rejects_more_clusters_than_rows():
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans(np.eye(2, 4, dtype=np.float32), 3)


def test_fit_writes_centroids_and_groups_same_bytes_on_rerun(tmp_path):
    out = str(tmp_path / "o")
    write_synthetic_annotations(out + "/_work/annotations", shards=3, records_per_shard=60, seed=4)
    r = fit_centroids(out, n_clusters=10, parts=3, sample=100, seed=1, device="cpu")
    first = Path(centroids_url(out)).read_bytes()
    assert r["n_clusters"] == 10 and r["sample"] <= 100
    assert [g["clusters"] for g in r["groups"]] == ["0-2", "3-5", "6-9"]
    assert sum(g["count"] for g in r["groups"]) == 10
    # each cluster group's share of the 180 records: what its dedup pod's memory is sized from
    assert [g["records"] for g in r["groups"]] == [54, 54, 72]
    cent = load_centroids(out)
    assert cent.vectors.shape == (10, 32) and cent.parts == Parts(10, 3)
    fit_centroids(out, n_clusters=10, parts=3, sample=100, seed=1, device="cpu")
    assert Path(centroids_url(out)).read_bytes() == first
    fit_centroids(out, n_clusters=10, parts=3, sample=100, seed=2, device="cpu")
    assert Path(centroids_url(out)).read_bytes() != first


def test_fit_clamps_clusters_to_the_sample(tmp_path):
    out = str(tmp_path / "o")
    write_synthetic_annotations(out + "/_work/annotations", shards=1, records_per_shard=20, seed=4)
    r = fit_centroids(out, n_clusters=1000, parts=16, device="cpu")
    assert r["n_clusters"] == r["sample"] <= 20
    assert len(r["groups"]) == 16


def test_fit_without_annotations_is_a_clear_error(tmp_path):
    with pytest.raises(CuratorError, match=r"no NNNNN\.parquet annotation files"):
        fit_centroids(str(tmp_path), device="cpu")


def test_parts_cover_clusters_and_reject_split_groups():
    parts = Parts(10, 4)
    assert [list(parts.clusters(p)) for p in range(4)] == [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]
    assert list(parts.part_of([0, 1, 2, 4, 5, 9])) == [0, 0, 1, 1, 2, 3]
    assert parts.select("2-6") == [1, 2]
    assert parts.select(None) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="splits part 1"):
        parts.select("0-3")
    with pytest.raises(ValueError, match="only 10 clusters"):
        parts.select("9-10")
    digests = np.zeros((3, 32), dtype=np.uint8)
    digests[1, 0], digests[2, :4] = 0x80, 0xFF
    assert list(parts.hash_part(digests)) == [0, 2, 3]
