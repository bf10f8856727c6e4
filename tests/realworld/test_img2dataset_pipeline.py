"""An img2dataset-made dataset through every step, as a new user would run it."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from airflow_curator.testing.img2dataset import SCHEMA, write_img2dataset_like
from tests.reliability.pipeline import cli, steps

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    from airflow_curator.testing.models import write_tiny_models

    root = tmp_path_factory.mktemp("i2d")
    shards = write_img2dataset_like(str(root / "in"), shards=2, per_shard=100)
    argv = steps(root, write_tiny_models(str(root / "models")))
    argv["save-metadata"] = argv["save-metadata"][:-2] + ["--max-nsfw", "1"]  # keep all images
    results = {name: json.loads(cli(*args).stdout) for name, args in argv.items()}
    results["dedup-hash"] = json.loads(
        cli("dedup-hash", "--dataset", str(root / "in"), "--output", str(root / "out")).stdout
    )
    return root, shards, results


def members(tar: Path) -> dict[str, bytes]:
    with tarfile.open(tar) as t:
        return {m.name: t.extractfile(m).read() for m in t if m.isfile()}  # type: ignore[union-attr]


def test_failed_rows_are_carried_with_an_error_and_null_scores(curated):
    root, shards, results = curated
    assert results["discover"]["records"] == 24 and results["discover"]["ignored"] == 2
    for stem, info in shards.items():
        ann = {
            r["key"]: r
            for r in pq.read_table(root / f"out/_work/annotations/{stem}.parquet").to_pylist()
        }
        assert len(ann) == 12
        for rid in info.failed:
            assert "download failed" in ann[rid]["error"] and ann[rid]["image_embedding"] is None
        for rid in info.ok + info.png_as_jpg + info.webp_as_jpg:  # decoded by content
            assert ann[rid]["error"] is None and ann[rid]["aesthetic_score"] is not None, rid
        for rid in info.truncated:  # img2dataset said success; the bytes say otherwise
            assert "truncated" in ann[rid]["error"]


def test_reshard_keeps_columns_and_bytes_and_never_writes_failed_rows(curated):
    root, shards, results = curated
    good = {
        rid: info.images[rid]
        for info in shards.values()
        for rid in info.ok + info.png_as_jpg + info.webp_as_jpg
    }
    out = [
        r
        for s in range(results["commit"]["shards"])
        for r in pq.read_table(root / f"out/{s:05d}.parquet").to_pylist()
    ]
    assert sorted(r["old_key"] for r in out) == sorted(good)
    assert results["commit"]["records"] == len(good)
    first = pq.read_table(root / "out/00000.parquet")
    assert set(SCHEMA.names) <= set(first.column_names)  # url, status, exif, sha256, ... kept
    for s in range(results["commit"]["shards"]):
        copied = members(root / f"out/{s:05d}.tar")
        for row in pq.read_table(root / f"out/{s:05d}.parquet").to_pylist():
            assert copied[f"{row['key']}.jpg"] == good[row["old_key"]]
            assert json.loads(copied[f"{row['key']}.json"])["key"] == row["key"]
            assert row["status"] == "success" and row["sha256"]


def test_output_reads_with_the_webdataset_library_and_dali(curated):
    webdataset = pytest.importorskip("webdataset")
    from tests.dali_reader import dali_read

    root, _, _ = curated
    tar = str(root / "out/00000.tar")
    keys = [s["__key__"] for s in webdataset.WebDataset(tar, shardshuffle=False)]
    rows = pq.read_table(root / "out/00000.parquet").column("key").to_pylist()
    assert keys == rows
    got = dali_read(tar, str(root / "out/00000.idx"), ["jpg", "txt"])
    stored = members(root / "out/00000.tar")
    assert [g[0] for g in got] == [stored[f"{k}.jpg"] for k in rows]


def test_exact_dedup_uses_the_sha256_column(curated):
    _, _, results = curated
    assert {s["source"] for s in results["dedup-hash"]["per_shard"]} == {"parquet"}
