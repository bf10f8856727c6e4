"""img2dataset-made datasets go through discovery, index and validation as they are."""

from __future__ import annotations

import tarfile

import pytest

from airflow_curator.core.dataset.discovery import discover
from airflow_curator.core.dataset.metadata import read_shard_ids, validate_shard
from airflow_curator.core.errors import ShardError
from airflow_curator.core.wds.index import index_dataset
from airflow_curator.core.wds.records import iter_records
from airflow_curator.testing.img2dataset import write_img2dataset_like


@pytest.fixture
def i2d(tmp_path):
    shards = write_img2dataset_like(str(tmp_path), shards=2, per_shard=100)
    return str(tmp_path), shards


def test_layout_is_what_img2dataset_writes(i2d):
    folder, _ = i2d
    with open(f"{folder}/00000.tar", "rb") as f:
        assert b"PaxHeader" in f.read(1024)
    with tarfile.open(f"{folder}/00000.tar") as t:
        names = [m.name for m in t]
    keys = [n.split(".")[0] for n in names[::3]]
    assert keys != sorted(keys)  # completion order, not id order
    assert all(len(k) == 7 for k in keys)


def test_discovery_ignores_stats_and_counts_rows(i2d):
    folder, _ = i2d
    m = discover(folder)
    assert [s.stem for s in m.shards] == ["00000", "00001"]
    assert sorted(m.ignored) == ["00000_stats.json", "00001_stats.json"]
    assert m.records == 24  # rows per input URL, failed ones included


def test_failed_rows_are_legitimate_and_missing_rows_are_not(i2d, tmp_path):
    folder, shards = i2d
    ids, failed = read_shard_ids(f"{folder}/00000.parquet", "key", "00000")
    assert failed == set(shards["00000"].failed) and len(ids) == 12
    n = validate_shard(f"{folder}/00000.tar", f"{folder}/00000.parquet", shard="00000")
    assert n == 12 - len(shards["00000"].failed)
    # a success row whose members are missing is still an error naming it
    import pyarrow.parquet as pq

    table = pq.read_table(f"{folder}/00001.parquet")
    rows = table.to_pylist()
    extra = dict(rows[0], key="0000199", status="success")
    pq.write_table(
        type(table).from_pylist(rows + [extra], schema=table.schema), f"{folder}/00001.parquet"
    )
    with pytest.raises(ShardError, match=r"shard 00001: 1 Parquet rows have no record .*0000199"):
        validate_shard(f"{folder}/00001.tar", f"{folder}/00001.parquet", shard="00001")


def test_index_and_records_on_pax_unsorted_tars(i2d):
    folder, shards = i2d
    assert index_dataset(folder)["written"] == 2
    records = {r.id: r for r in iter_records(f"{folder}/00000.tar", "00000")}
    info = shards["00000"]
    assert set(records) == set(info.images)
    assert all(records[k].data["jpg"] == img for k, img in info.images.items())
    with open(f"{folder}/00000.idx") as f:
        assert f.readline() == f"v1.2 {len(info.images)}\n"
