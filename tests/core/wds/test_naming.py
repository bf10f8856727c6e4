from __future__ import annotations

import pytest

from airflow_curator.core.wds.naming import (
    offset_digits,
    record_id,
    record_ids,
    shard_id,
    shard_name,
    split_member,
)


def test_record_id_follows_the_seed_convention():
    assert record_id(42, 31) == "000420031"
    assert record_id(42, 31, samples_per_shard=100) == "0004231"
    assert record_id(3, 7, samples_per_shard=1500, max_shards=3) == "0030007"


@pytest.mark.parametrize(
    ("n", "digits"), [(1, 1), (10, 1), (11, 2), (100, 2), (1500, 4), (10000, 4)]
)
def test_offset_digits(n, digits):
    assert offset_digits(n) == digits


def test_limits_are_errors():
    with pytest.raises(ValueError, match="max_shards"):
        shard_name(100000, 5)
    with pytest.raises(ValueError, match="offset"):
        record_id(0, 10000)
    with pytest.raises(ValueError):
        offset_digits(0)


def test_shard_id_and_split_member():
    assert shard_id("gs://b/ds/00042.tar") == 42
    assert shard_id("00042_stats.json") is None
    assert shard_id("abc.tar") is None
    assert split_member("a/b.c/000.jpg") == ("a/b.c/000", "jpg")
    assert split_member("000.seg.png") == ("000", "seg.png")
    assert split_member("README") == ("README", "")


def test_record_ids_are_record_id_in_bulk():
    assert record_ids(3, 12, 250, 4) == [record_id(3, i, 250, 4) for i in range(12)]
    assert record_ids(0, 0) == []
    with pytest.raises(ValueError, match="do not fit"):
        record_ids(0, 11, 10)
