from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_curator.core.dataset.metadata import compare_ids, read_shard_ids, validate_shard
from airflow_curator.core.errors import ShardError
from airflow_curator.testing.tars import make_tar


def shard(tmp_path, ids, parquet_ids=None, json_ids=None, id_col="key", raw_json=None):
    members = []
    for i, rid in enumerate(ids):
        meta = {id_col: (json_ids or ids)[i]}
        members += [(f"{rid}.jpg", b"img"), (f"{rid}.txt", b"cap")]
        members.append(
            (f"{rid}.json", raw_json if raw_json is not None else json.dumps(meta).encode())
        )
    (tmp_path / "00003.tar").write_bytes(make_tar(members))
    table = pa.table({id_col: parquet_ids if parquet_ids is not None else ids})
    pq.write_table(table, tmp_path / "00003.parquet")
    return str(tmp_path / "00003.tar"), str(tmp_path / "00003.parquet")


def test_valid_shard_in_any_row_order(tmp_path):
    tar, parquet = shard(
        tmp_path,
        ["000030000", "000030001", "000030002"],
        parquet_ids=["000030002", "000030000", "000030001"],
    )
    assert validate_shard(tar, parquet, shard="00003") == 3


def test_missing_id_column(tmp_path):
    _, parquet = shard(tmp_path, ["a"], id_col="sample_id")
    with pytest.raises(
        ShardError, match=r"shard 00003: .* no id column 'key' \(columns: sample_id\)"
    ):
        read_shard_ids(parquet, "key", "00003")


def test_duplicate_ids(tmp_path):
    _, parquet = shard(tmp_path, ["a", "b"], parquet_ids=["a", "a", "b"])
    with pytest.raises(ShardError, match="duplicate ids: a"):
        read_shard_ids(parquet, "key", "00003")


def test_null_ids(tmp_path):
    _, parquet = shard(tmp_path, ["a"], parquet_ids=["a", None])
    with pytest.raises(ShardError, match="null ids"):
        read_shard_ids(parquet, "key", "00003")


def test_parquet_and_tar_differ(tmp_path):
    tar, parquet = shard(tmp_path, ["a", "b", "c"], parquet_ids=["a", "b", "x", "y"])
    with pytest.raises(
        ShardError, match=r"shard 00003: 1 records in the tar are not in the Parquet: c"
    ):
        validate_shard(tar, parquet, shard="00003")


def test_parquet_row_without_record(tmp_path):
    tar, parquet = shard(tmp_path, ["a", "b"], parquet_ids=["a", "b", "z"])
    with pytest.raises(ShardError, match="1 Parquet rows have no record in the tar: z"):
        validate_shard(tar, parquet, shard="00003")


def test_allowed_missing_rows():
    compare_ids(["a", "b", "z"], ["a", "b"], "00003", allowed_missing=["z"])


def test_json_id_mismatch(tmp_path):
    tar, parquet = shard(tmp_path, ["a", "b"], json_ids=["a", "stale"])
    with pytest.raises(ShardError, match=r"record b: .json says key='stale'"):
        validate_shard(tar, parquet, shard="00003")


def test_json_not_json(tmp_path):
    tar, parquet = shard(tmp_path, ["a"], raw_json=b"{not json")
    with pytest.raises(ShardError, match=r"record a: .json is not valid JSON"):
        validate_shard(tar, parquet, shard="00003")


def test_json_without_id(tmp_path):
    tar, parquet = shard(tmp_path, ["a"], raw_json=b'{"caption": "x"}')
    with pytest.raises(ShardError, match="has no 'key' field"):
        validate_shard(tar, parquet, shard="00003")


def test_error_lists_first_ids_only(tmp_path):
    ids = [f"{i:04d}" for i in range(20)]
    tar, parquet = shard(tmp_path, ids, parquet_ids=ids[:2])
    with pytest.raises(
        ShardError, match=r"18 records .*: 0002, 0003, 0004, 0005, 0006 \(\+13 more\)"
    ):
        validate_shard(tar, parquet, shard="00003")
