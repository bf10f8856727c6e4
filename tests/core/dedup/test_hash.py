from __future__ import annotations

import hashlib
import io
import random
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_curator.core.dedup.assign import assign_shards
from airflow_curator.core.dedup.dedup import dedup_clusters
from airflow_curator.core.dedup.fit import fit_centroids, normalise
from airflow_curator.core.dedup.hash import exact_duplicates, hash_shards
from airflow_curator.core.dedup.result import write_results
from airflow_curator.core.errors import ShardError
from airflow_curator.testing.dataset import add_member, make_jpeg
from airflow_curator.testing.dedup import removed_ids

# image of each record: same letter, same bytes
LAYOUT = {0: "ABCDE", 1: "AFBGA"}


def image(letter: str) -> bytes:
    return make_jpeg(random.Random(letter), (16, 16))


def write_dataset(folder, sha_column: dict[str, str] | None = None) -> list[str]:
    ids = []
    for s, letters in LAYOUT.items():
        buf = io.BytesIO()
        keys = [f"{s:05d}{i:04d}" for i in range(len(letters))]
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for key, letter in zip(keys, letters):
                add_member(tar, f"{key}.jpg", image(letter))
                add_member(tar, f"{key}.txt", b"a caption")
        (folder / f"{s:05d}.tar").write_bytes(buf.getvalue())
        cols = {"key": keys}
        if sha_column is not None:
            cols["sha256"] = [sha_column.get(k) for k in keys]
            cols["key"] = keys + [f"{s:05d}9999"]  # img2dataset: a URL that failed, no record
            cols["sha256"].append(None)
        pq.write_table(pa.table(cols), folder / f"{s:05d}.parquet")
        ids += keys
    return ids


def write_annotations(out, ids, scores, null_embedding=()):
    rng = np.random.default_rng(0)
    folder = out / "_work" / "annotations"
    folder.mkdir(parents=True)
    for s in LAYOUT:
        keys = [k for k in ids if k.startswith(f"{s:05d}")]
        x = normalise(rng.standard_normal((len(keys), 16)).astype(np.float32))
        mask = pa.array([k in null_embedding for k in keys])
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 16, mask=mask)
        score = pa.array([scores.get(k) for k in keys], pa.float32())
        pq.write_table(
            pa.table({"key": keys, "image_embedding": emb, "aesthetic_score": score}),
            folder / f"{s:05d}.parquet",
        )


def test_hashes_from_the_tar(tmp_path):
    ds_path = tmp_path / "ds"
    ds_path.mkdir()
    ids = write_dataset(ds_path)
    r = hash_shards(str(ds_path), str(tmp_path / "o"))
    assert r["records"] == len(ids) and {s["source"] for s in r["per_shard"]} == {"tar"}
    t = pq.read_table(tmp_path / "o/_work/dedup/hash/00001.parquet")
    assert t["id"].to_pylist() == ids[5:]
    assert t["sha256"][1].as_py() == hashlib.sha256(image("F")).digest()
    assert t["aesthetic"].null_count == 5  # no annotations: the lowest id is kept


def test_exact_duplicates_keep_best_score_then_lowest_id():
    digests = [b"a" * 32, b"b" * 32, b"a" * 32, b"a" * 32, b"b" * 32]
    table = pa.table({
        "id": ["1", "2", "3", "4", "5"],
        "sha256": pa.array(digests, pa.binary(32)),
        "aesthetic": pa.array([None, 2.0, 5.0, 5.0, None], pa.float32()),
    })  # fmt: skip
    assert sorted(exact_duplicates(table)) == [(0, 2), (3, 2), (4, 1)]


def test_exact_stage_end_to_end(tmp_path):
    ds_path = tmp_path / "ds"
    ds_path.mkdir()
    ids = write_dataset(ds_path)
    out = tmp_path / "o"
    # the third copy of A scores best; one copy of B failed annotation (no embedding)
    write_annotations(out, ids, {"000010004": 9.0, "000000001": 4.0}, null_embedding={"000010002"})
    hash_shards(str(ds_path), str(out))
    fit = fit_centroids(str(out), n_clusters=3, parts=2, device="cpu")
    assign_shards(str(out), device="cpu")
    for g in fit["groups"]:
        r = dedup_clusters(str(out), g["clusters"], device="cpu")
        assert r["exact_pass"] is True
    res = write_results(str(out))
    # A: 000000000, 000010000, 000010004 (kept: score 9); B: 000000001 (kept), 000010002
    assert removed_ids(str(out)) == {"000000000", "000010000", "000010002"}
    assert res["exact"] == 3 and res["semantic"] == 0
    t = pq.read_table(out / "_work/dedup/result/00000.parquet")
    assert t["duplicate_of"][0].as_py() == "000010004"
    # --exact off ignores the hashes
    for g in fit["groups"]:
        dedup_clusters(str(out), g["clusters"], exact="off", device="cpu")
    assert write_results(str(out))["duplicates"] == 0


def test_hashes_from_img2dataset_sha256_column(tmp_path):
    ds_path = tmp_path / "ds"
    ds_path.mkdir()
    # the column says records 00000 0002 and 00001 0003 (C and G) are the same image
    sha = {}
    for s, letters in LAYOUT.items():
        for i, letter in enumerate(letters):
            sha[f"{s:05d}{i:04d}"] = hashlib.sha256(image(letter)).hexdigest()
    sha["000010003"] = sha["000000002"]
    write_dataset(ds_path, sha_column=sha)
    r = hash_shards(str(ds_path), str(tmp_path / "o"))
    assert {s["source"] for s in r["per_shard"]} == {"parquet"} and r["records"] == 10
    t = pa.concat_tables(
        [pq.read_table(tmp_path / f"o/_work/dedup/hash/{s:05d}.parquet") for s in LAYOUT]
    )
    pairs = {(t["id"][r].as_py(), t["id"][k].as_py()) for r, k in exact_duplicates(t)}
    assert ("000010003", "000000002") in pairs and len(pairs) == 4
    r = hash_shards(str(ds_path), str(tmp_path / "o2"), source="tar")
    assert {s["source"] for s in r["per_shard"]} == {"tar"}


def test_hash_source_parquet_needs_the_column(tmp_path):
    ds_path = tmp_path / "ds"
    ds_path.mkdir()
    write_dataset(ds_path)
    with pytest.raises(ShardError, match=r"shard 00000: .* has no 'sha256' column"):
        hash_shards(str(ds_path), str(tmp_path / "o"), source="parquet")


def test_bad_sha256_value_names_the_shard(tmp_path):
    ds_path = tmp_path / "ds"
    ds_path.mkdir()
    write_dataset(ds_path, sha_column={"000000000": "not-hex"})
    with pytest.raises(ShardError, match="shard 00000: record 000000000: sha256"):
        hash_shards(str(ds_path), str(tmp_path / "o"))
