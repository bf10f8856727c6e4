from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from airflow_curator.core.dedup.assign import assign_shards
from airflow_curator.core.dedup.dedup import dedup_clusters, near_duplicates, rank_order
from airflow_curator.core.dedup.fit import fit_centroids, normalise
from airflow_curator.core.dedup.result import write_results
from airflow_curator.core.errors import CuratorError, ShardError
from airflow_curator.testing.annotations import write_synthetic_annotations
from airflow_curator.testing.dedup import removed_ids, result_bytes, run_stage


def brute_force(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    sim = x.astype(np.float64) @ x.T.astype(np.float64)
    dup_of = np.full(len(x), -1)
    best = np.zeros(len(x))
    for i in range(1, len(x)):
        j = int(np.argmax(sim[i, :i]))
        if sim[i, j] > 1 - eps:
            dup_of[i], best[i] = j, sim[i, j]
    return dup_of, best


@pytest.mark.parametrize("block", [1, 3, 7, 64])
def test_blocked_similarity_matches_brute_force(block):
    rng = np.random.default_rng(5)
    base = normalise(rng.standard_normal((20, 8)).astype(np.float32))
    # near copies of a few rows, some of copies: chains and sets of three
    x = np.concatenate([base, base[[0, 3, 3, 7]] + 0.01 * rng.standard_normal((4, 8))])
    x = normalise(np.concatenate([x, x[[21]] + 0.001]).astype(np.float32))
    want_dup, want_sim = brute_force(x, 0.02)
    dup_of, sims = near_duplicates(x, 0.02, block=block)
    assert np.array_equal(dup_of, want_dup)
    assert np.allclose(sims, want_sim, atol=1e-5)
    assert (dup_of >= 0).sum() == 5  # the 4 copies and the copy of a copy


def test_only_higher_ranked_records_make_a_duplicate():
    x = normalise(np.array([[1, 0], [1, 0.001], [0, 1]], dtype=np.float32))
    dup_of, _ = near_duplicates(x, 0.01)
    assert list(dup_of) == [-1, 0, -1]
    dup_of, _ = near_duplicates(x[::-1].copy(), 0.01)
    assert list(dup_of) == [-1, -1, 1]
    assert list(near_duplicates(x, 0.0)[0]) == [-1, -1, -1]  # nothing is above 1.0


def test_rank_order_prefers_high_score_then_low_id():
    ids = np.array(["003", "001", "002", "004"])
    scores = np.array([5.0, np.nan, 5.0, 6.0], dtype=np.float32)
    assert [ids[i] for i in rank_order(ids, scores)] == ["004", "002", "003", "001"]


def test_nemo_keep_rules_rank_by_distance_to_the_centroid():
    """NeMo Curator's which_to_keep: hard keeps the farthest from the centroid (ties: higher
    id), easy the closest (ties: lower id), random a seeded draw that ignores row order."""
    ids = np.array(["003", "001", "002", "004"])
    distance = np.array([0.2, 0.5, 0.2, 0.1], dtype=np.float32)
    nan = np.full(4, np.nan, dtype=np.float32)

    def ranked(keep, order=slice(None), seed=0):
        return [ids[order][i] for i in rank_order(ids[order], nan, keep, distance[order], seed)]

    assert ranked("hard") == ["001", "003", "002", "004"]
    assert ranked("easy") == ["004", "002", "003", "001"]
    assert ranked("random") == ranked("random", slice(None, None, -1))
    assert sorted(ranked("random")) == sorted(ids)
    assert {tuple(ranked("random", seed=s)) for s in range(6)} != {tuple(ranked("random"))}
    with pytest.raises(ValueError, match="keep must be one of"):
        rank_order(ids, nan, "best")


def test_eps_none_marks_every_best_match():
    x = normalise(np.array([[1, 0], [1, 0.001], [0, 1]], dtype=np.float32))
    dup_of, sims = near_duplicates(x, None)
    assert list(dup_of) == [-1, 0, 1]  # the last one's best higher-ranked match, however far
    assert sims[2] == pytest.approx(float(x[2] @ x[1]), abs=1e-6)


def test_planted_pairs_recall_and_precision(tmp_path):
    out = str(tmp_path / "o")
    planted = write_synthetic_annotations(
        out + "/_work/annotations", shards=4, records_per_shard=150, dim=48, seed=11
    )
    assert len(planted.pairs) > 20
    r = run_stage(out, n_clusters=6, parts=3, eps=0.01)
    removed = removed_ids(out)
    expected = {b for _, b in planted.pairs}
    recall = len(removed & expected) / len(expected)
    precision = len(removed & expected) / len(removed)
    assert recall == 1.0 and precision == 1.0, (recall, precision)
    # the kept copy is the one the rule ranks first
    kept = {a for a, _ in planted.pairs}
    assert not kept & removed
    # failed records (no embedding) are kept and not in the assignments
    assert not set(planted.failed) & removed
    assert sum(res["records"] for res in r["results"]) == planted.records
    # examples name a planted pair
    ex = r["results"][0]["examples"][0]
    assert (ex["duplicate_of"], ex["id"]) in set(planted.pairs) and ex["similarity"] > 0.99


def test_wider_eps_finds_more(tmp_path):
    out = str(tmp_path / "o")
    write_synthetic_annotations(out + "/_work/annotations", shards=2, records_per_shard=120, seed=3)
    narrow = run_stage(out, eps=0.01)["results"][0]["duplicates"]
    wide = run_stage(out, eps=0.8)["results"][0]["duplicates"]
    assert wide > narrow > 0


def test_same_bytes_whatever_the_split_and_on_rerun(tmp_path):
    out = str(tmp_path / "o")
    write_synthetic_annotations(out + "/_work/annotations", shards=5, records_per_shard=80, seed=2)
    run_stage(out, n_clusters=8, parts=4)
    whole = result_bytes(out)
    assert len(whole) == 5
    run_stage(out, n_clusters=8, parts=4)
    assert result_bytes(out) == whole
    run_stage(out, shard_groups=["0-1", "2", "3-4"], cluster_groups=["0-1,4-5", "2-3,6-7"])
    assert result_bytes(out) == whole
    # a different cut into parts (a layout choice) changes nothing either
    run_stage(out, n_clusters=8, parts=8, shard_groups=["4,0", "1-3"])
    assert result_bytes(out) == whole
    # a smaller block only changes how similarities are computed
    run_stage(out, n_clusters=8, parts=2, block=5)
    assert result_bytes(out) == whole


def test_result_is_a_boolean_column_in_annotation_order(tmp_path):
    out = str(tmp_path / "o")
    write_synthetic_annotations(out + "/_work/annotations", shards=1, records_per_shard=50, seed=8)
    run_stage(out)
    ann = pq.read_table(out + "/_work/annotations/00000.parquet")
    res = pq.read_table(out + "/_work/dedup/result/00000.parquet")
    assert res.column_names == ["key", "is_unique", "duplicate_of"]
    assert str(res.schema.field("is_unique").type) == "bool"
    assert res["key"].to_pylist() == ann["key"].to_pylist()
    for unique, dup in zip(res["is_unique"].to_pylist(), res["duplicate_of"].to_pylist()):
        assert unique == (dup is None)


def test_incomplete_or_stale_stage_is_an_error(tmp_path):
    out = str(tmp_path / "o")
    write_synthetic_annotations(out + "/_work/annotations", shards=2, records_per_shard=40, seed=8)
    fit = fit_centroids(out, n_clusters=6, parts=3, device="cpu")
    assign_shards(out, device="cpu")
    dedup_clusters(out, fit["groups"][0]["clusters"], device="cpu")
    with pytest.raises(CuratorError, match="dedup has not run for 2 of 3 cluster groups"):
        write_results(out)
    with pytest.raises(ValueError, match="splits part"):
        dedup_clusters(out, "0", device="cpu")
    # new centroids: the old assignments must not be used
    fit_centroids(out, n_clusters=6, parts=3, seed=9, device="cpu")
    with pytest.raises(ShardError, match="other centroids: rerun dedup-assign"):
        dedup_clusters(out, device="cpu")
    assign_shards(out, device="cpu")
    with pytest.raises(CuratorError, match="other centroids: rerun dedup"):
        write_results(out)
    dedup_clusters(out, device="cpu")
    assert write_results(out)["shards"] == 2


def test_bad_annotations_name_the_shard(tmp_path):
    import pyarrow as pa

    out = str(tmp_path / "o")
    write_synthetic_annotations(out + "/_work/annotations", shards=2, records_per_shard=30, seed=8)
    fit_centroids(out, n_clusters=4, parts=2, device="cpu")
    path = out + "/_work/annotations/00001.parquet"
    pq.write_table(pa.table({"key": ["a"], "image_embedding": [[1.0, 0.0]]}), path)
    with pytest.raises(ShardError, match="shard 00001: embeddings have 2 dimensions"):
        assign_shards(out, device="cpu")
    os.remove(path)
    with pytest.raises(CuratorError, match="no annotations for shards 1"):
        assign_shards(out, "0-1", device="cpu")


@pytest.mark.gpu
def test_gpu_gives_the_cpu_result(tmp_path):
    rng = np.random.default_rng(1)
    x = normalise(rng.standard_normal((300, 16)).astype(np.float32))
    x = normalise(np.concatenate([x, x[:40] + 0.01 * rng.standard_normal((40, 16))]))
    cpu, gpu = near_duplicates(x, 0.01, 64, "cpu"), near_duplicates(x, 0.01, 64, "cuda")
    assert np.array_equal(cpu[0], gpu[0]) and (cpu[0] >= 0).sum() == 40
    out = str(tmp_path / "o")
    write_synthetic_annotations(out + "/_work/annotations", shards=2, records_per_shard=80, seed=2)
    r = fit_centroids(out, n_clusters=6, parts=2, device="cuda")
    assert r["n_clusters"] == 6


def test_dedup_refuses_a_stage_with_shards_not_assigned_or_hashed(tmp_path):
    out = str(tmp_path / "o")
    write_synthetic_annotations(out + "/_work/annotations", shards=3, records_per_shard=30, seed=8)
    fit_centroids(out, n_clusters=4, parts=2, device="cpu")
    assign_shards(out, "0-1", device="cpu")
    with pytest.raises(CuratorError, match="shards 2 have no assignments: run dedup-assign"):
        dedup_clusters(out, device="cpu")
    assign_shards(out, "2", device="cpu")
    os.makedirs(out + "/_work/dedup/hash")
    with pytest.raises(CuratorError, match=r"--exact on: .* has no hashes"):
        dedup_clusters(out, exact="on", device="cpu")
    # some hashes but not all: an error, not a silently partial exact pass
    os.link(out + "/_work/dedup/assign/00000.parquet", out + "/_work/dedup/hash/00000.parquet")
    with pytest.raises(CuratorError, match="shards 1-2 have no hashes: run dedup-hash"):
        dedup_clusters(out, device="cpu")
    assert dedup_clusters(out, exact="off", device="cpu")["exact_pass"] is False
