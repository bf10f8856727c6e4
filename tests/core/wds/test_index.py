from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from airflow_curator.core.errors import ShardError
from airflow_curator.core.wds.index import build_index, index_dataset, verify_index, write_index
from airflow_curator.testing.dataset import write_demo_dataset
from airflow_curator.testing.tars import make_tar, record_members
from tests.dali_reader import dali_read

WDS2IDX = os.path.join(os.path.dirname(sys.executable), "wds2idx")


def wds2idx(tar: str, idx: str) -> str:
    subprocess.run([WDS2IDX, tar, idx], check=True, capture_output=True)
    with open(idx) as f:
        return f.read()


@pytest.mark.skipif(
    not os.path.exists(WDS2IDX) or not shutil.which("tar"),
    reason="needs DALI's wds2idx and GNU tar",
)
@pytest.mark.parametrize("fmt", ["ustar", "gnu", "pax"])
def test_byte_identical_to_wds2idx(tmp_path, fmt):
    write_demo_dataset(
        str(tmp_path), shards=1, records_per_shard=30, image_bytes=3000, tar_format=fmt
    )
    tar = str(tmp_path / "00000.tar")
    text, samples = build_index(tar)
    assert samples == 30
    assert text == wds2idx(tar, str(tmp_path / "ref.idx"))


@pytest.mark.skipif(
    not os.path.exists(WDS2IDX) or not shutil.which("tar"),
    reason="needs DALI's wds2idx and GNU tar",
)
def test_byte_identical_on_webdataset_library_shard(tmp_path):
    webdataset = pytest.importorskip("webdataset")
    tar = str(tmp_path / "00000.tar")
    with webdataset.TarWriter(tar) as sink:
        for i in range(25):
            sink.write(
                {
                    "__key__": f"{i:09d}",
                    "jpg": b"j" * (i * 100 + 1),
                    "txt": "caption",
                    "json": {"key": f"{i:09d}"},
                }
            )
    assert build_index(tar)[0] == wds2idx(tar, str(tmp_path / "ref.idx"))


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_long_names_read_back_through_dali(tmp_path, fmt):
    members = record_members(4, prefix="very/long/folder/" * 8, exts=("jpg", "txt"))
    tar, idx = str(tmp_path / "00000.tar"), str(tmp_path / "00000.idx")
    with open(tar, "wb") as f:
        f.write(make_tar(members, fmt, mtime=1.5 if fmt == "pax" else 0))
    write_index(tar, idx)
    got = dali_read(tar, idx, ["jpg", "txt"])
    expected = [(members[2 * i][1], members[2 * i + 1][1]) for i in range(4)]
    assert got == expected


def test_white_space_in_name_is_refused(tmp_path):
    tar = tmp_path / "00000.tar"
    tar.write_bytes(make_tar([("a b.jpg", b"x")]))
    with pytest.raises(ShardError, match="white space"):
        build_index(str(tar), shard="00000")


def test_empty_tar_is_refused(tmp_path):
    tar = tmp_path / "00000.tar"
    tar.write_bytes(make_tar([]))
    with pytest.raises(ShardError, match="no samples"):
        build_index(str(tar), shard="00000")


def test_dataset_skips_fresh_and_forces(tmp_path):
    ds = str(tmp_path)
    write_demo_dataset(ds, shards=3, records_per_shard=4, image_bytes=100)
    first = index_dataset(ds)
    assert (first["written"], first["skipped"], first["records"]) == (3, 0, 12)
    again = index_dataset(ds)
    assert (again["written"], again["skipped"]) == (0, 3)
    forced = index_dataset(ds, "1", force=True)
    assert (forced["written"], forced["shards"]) == (1, 1)
    assert index_dataset(ds, verify=True)["verified"] == 3


def test_stale_index_is_rewritten_and_verify_names_it(tmp_path):
    ds = str(tmp_path)
    write_demo_dataset(ds, shards=1, records_per_shard=4, image_bytes=100)
    index_dataset(ds)
    idx = tmp_path / "00000.idx"
    before = idx.read_bytes()
    # the tar is rewritten after its index: more records, newer mtime
    write_demo_dataset(ds, shards=1, records_per_shard=5, image_bytes=100)
    old = time.time() - 100
    os.utime(idx, (old, old))
    with pytest.raises(ShardError, match=r"shard 00000: index .* (is stale|has 5 lines)"):
        verify_index(str(tmp_path / "00000.tar"), str(idx), shard="00000")
    assert index_dataset(ds)["written"] == 1
    assert idx.read_bytes() != before
    assert index_dataset(ds, verify=True)["verified"] == 1


def test_index_on_memory_filesystem():
    write_demo_dataset("memory://idx/ds", shards=2, records_per_shard=3, image_bytes=10)
    result = index_dataset("memory://idx/ds", workers=2)
    assert result["written"] == 2
    import fsspec

    text = fsspec.filesystem("memory").cat_file("/idx/ds/00001.idx").decode()
    assert text.startswith("v1.2 3\n")


def test_truncated_tar_fails_with_shard(tmp_path):
    ds = str(tmp_path)
    write_demo_dataset(ds, shards=2, records_per_shard=4, image_bytes=1000)
    raw = (tmp_path / "00001.tar").read_bytes()
    (tmp_path / "00001.tar").write_bytes(raw[:3000])
    for workers in (1, 2):  # in a process pool too: the error must cross it whole
        with pytest.raises(ShardError, match=r"shard 00001: .*truncated"):
            index_dataset(ds, workers=workers)
    assert not (tmp_path / "00001.idx").exists()


def test_rerun_sweeps_debris_of_a_killed_attempt(tmp_path):
    ds = str(tmp_path)
    write_demo_dataset(ds, shards=2, records_per_shard=3, image_bytes=10)
    debris = tmp_path / ".00001.idx.tmp-999-abcdef12"
    debris.write_bytes(b"v1.2 1\njpg 512")
    assert index_dataset(ds)["written"] == 2
    assert not debris.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


AWKWARD = {
    "split record": [("000.jpg", b"a"), ("001.jpg", b"b"), ("000.txt", b"late")],
    "duplicate member": [("000.jpg", b"a"), ("000.jpg", b"again")],
    "one id in two folders": [("a/000.jpg", b"a"), ("b/000.jpg", b"b")],
}


@pytest.mark.parametrize("case", sorted(AWKWARD))
def test_the_indexer_and_the_readers_refuse_the_same_records(tmp_path, case):
    from airflow_curator.core.wds.records import iter_records
    from airflow_curator.core.wds.tarsource import scan_locations

    tar = tmp_path / "00000.tar"
    tar.write_bytes(make_tar(AWKWARD[case]))
    errors = set()
    for read in (
        lambda: build_index(str(tar), shard="00000"),
        lambda: list(iter_records(str(tar), "00000")),
        lambda: scan_locations(str(tar), tar.stat().st_size, "00000"),
    ):
        with pytest.raises(ShardError) as e:
            read()
        errors.add(str(e.value))
    assert len(errors) == 1, errors  # one grouping: one verdict, one message


def test_the_index_reads_back_as_the_scan_locates(tmp_path):
    from airflow_curator.core.wds.index import IndexLocations
    from airflow_curator.core.wds.tarsource import scan_locations

    members = record_members(5, prefix="x/") + [(".hidden", b"h"), ("README", b"r")]
    tar = tmp_path / "00000.tar"
    tar.write_bytes(make_tar(members, "pax", mtime=1.5))
    text, n = build_index(str(tar), shard="00000")
    assert n == 5
    located = IndexLocations(text, "00000", "idx")
    assert dict(located) == scan_locations(str(tar), tar.stat().st_size, "00000")
