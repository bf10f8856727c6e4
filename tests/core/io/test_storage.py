from __future__ import annotations

import os

import fsspec
import pytest

from airflow_curator.core.io import storage


def test_atomic_writer_replaces_whole(tmp_path):
    target = tmp_path / "a" / "00000.parquet"
    storage.write_bytes(str(target), b"old")
    with storage.atomic_writer(str(target)) as f:
        f.write(b"new-")
        assert target.read_bytes() == b"old"  # not visible until closed
        f.write(b"bytes")
    assert target.read_bytes() == b"new-bytes"
    assert os.listdir(tmp_path / "a") == ["00000.parquet"]


def test_atomic_writer_failure_keeps_old_and_leaves_no_temp(tmp_path):
    target = tmp_path / "00000.idx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), storage.atomic_writer(str(target)) as f:
        f.write(b"half")
        raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["00000.idx"]


def test_object_store_gets_one_put():
    storage.write_bytes("memory://st/x/00001.idx", b"abc")
    fs = fsspec.filesystem("memory")
    assert fs.cat_file("/st/x/00001.idx") == b"abc"
    with pytest.raises(RuntimeError), storage.atomic_writer("memory://st/x/00002.idx") as f:
        f.write(b"half")
        raise RuntimeError("crash")
    assert not fs.exists("/st/x/00002.idx")


def test_listing_and_ranges(tmp_path):
    for name in ("b.tar", "a.tar"):
        (tmp_path / name).write_bytes(b"0123456789")
    (tmp_path / "sub").mkdir()
    entries = storage.list_files(str(tmp_path))
    assert [e.name for e in entries] == ["a.tar", "b.tar"]
    assert entries[0].size == 10 and entries[0].mtime is not None
    assert storage.read_range(entries[1].url, 2, 5) == b"234"
    storage.write_bytes("memory://ls/d/00000.tar", b"xyz")
    (entry,) = storage.list_files("memory://ls/d")
    assert (entry.url, entry.size) == ("memory://ls/d/00000.tar", 3)


def test_tmp_names_are_hidden():
    name = storage.tmp_name("00000.tar")
    assert name.startswith(".00000.tar" + storage.TMP_MARK)


def test_sweep_removes_only_own_debris(tmp_path):
    debris = tmp_path / (".00000.idx" + storage.TMP_MARK + "123-deadbeef")
    other = tmp_path / (".00001.idx" + storage.TMP_MARK + "123-deadbeef")
    debris.write_bytes(b"half")
    other.write_bytes(b"someone else's")
    storage.write_bytes(str(tmp_path / "00000.idx"), b"whole")
    entries = storage.list_files(str(tmp_path))
    assert storage.sweep_temporaries(entries, {"00000.idx"}) == 1
    assert sorted(os.listdir(tmp_path)) == [other.name, "00000.idx"]
    assert storage.temporary_target(other.name) == "00001.idx"
    assert storage.temporary_target("00001.idx") is None


def test_local_size_and_remove_without_fsspec(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"12345")
    d = tmp_path / "d"
    (d / "e").mkdir(parents=True)
    assert storage.size(str(f)) == 5 and storage.size(f"file://{f}") == 5
    assert storage.same_bytes(str(f), b"12345") and not storage.same_bytes(str(f), b"1234")
    storage.remove(str(f))
    storage.remove(str(f))  # already gone: nothing to do
    storage.remove(str(d))
    assert not f.exists() and not d.exists()
    with pytest.raises(FileNotFoundError):
        storage.size(str(f))
