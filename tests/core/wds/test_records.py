from __future__ import annotations

import pytest

from airflow_curator.core.errors import ShardError
from airflow_curator.core.wds.records import iter_records
from airflow_curator.testing.tars import make_tar, record_members


def write(tmp_path, members, fmt="gnu"):
    path = tmp_path / "00000.tar"
    path.write_bytes(make_tar(members, fmt))
    return str(path)


@pytest.mark.parametrize("fmt", ["ustar", "gnu", "pax"])
def test_groups_members_by_key(tmp_path, fmt):
    records = list(iter_records(write(tmp_path, record_members(3), fmt), "00000"))
    assert [r.id for r in records] == ["000000000", "000000001", "000000002"]
    assert all(sorted(r.parts) == ["jpg", "json", "txt"] for r in records)
    assert records[1].data["json"].startswith(b"json-1-")


def test_extension_is_everything_after_first_dot_of_basename(tmp_path):
    path = write(tmp_path, [("a.b/000000001.seg.png", b"p"), ("a.b/000000001.txt", b"t")])
    (rec,) = iter_records(path, "00000")
    assert rec.key == "a.b/000000001" and rec.id == "000000001"
    assert sorted(rec.parts) == ["seg.png", "txt"]


def test_long_names_keep_ids(tmp_path):
    prefix = "sub/" * 40
    records = list(iter_records(write(tmp_path, record_members(2, prefix)), "00000"))
    assert [r.id for r in records] == ["000000000", "000000001"]
    assert records[0].key == prefix + "000000000"


def test_duplicate_member_is_an_error(tmp_path):
    members = record_members(1) + [("000000000.jpg", b"again")]
    with pytest.raises(ShardError, match=r"shard 00000: record 000000000: duplicate member"):
        list(iter_records(write(tmp_path, members), "00000"))


def test_record_split_in_two_places_is_an_error(tmp_path):
    members = record_members(2)
    members = members[:3] + members[3:] + [("000000000.extra", b"late")]
    with pytest.raises(ShardError, match="not contiguous"):
        list(iter_records(write(tmp_path, members), "00000"))


def test_handler_can_skip_bad_records(tmp_path):
    errors = []
    members = record_members(2) + [("000000001.jpg", b"dup")]
    recs = list(iter_records(write(tmp_path, members), "00000", handler=errors.append))
    assert [r.id for r in recs] == ["000000000", "000000001"]
    assert len(errors) == 1 and "duplicate member" in str(errors[0])


def test_without_data_gives_offsets_only(tmp_path):
    recs = list(iter_records(write(tmp_path, record_members(2)), "00000", with_data=False))
    assert recs[0].data == {} and recs[0].parts["jpg"].size > 0
    assert recs[0].parts["jpg"].offset == 0
    assert recs[1].parts["jpg"].offset == recs[0].parts["json"].end  # members back to back


def test_truncated_tar_names_the_shard(tmp_path):
    raw = make_tar(record_members(3))
    path = tmp_path / "00007.tar"
    path.write_bytes(raw[: raw.index(b"json-2-") + 5])  # inside the last member
    with pytest.raises(ShardError, match=r"shard 00007: .*truncated"):
        list(iter_records(str(path), "00007"))
