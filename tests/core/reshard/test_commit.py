from __future__ import annotations

import hashlib
import json
import os

import pytest

from airflow_curator.core.errors import CuratorError, ShardError
from airflow_curator.core.reshard.commit import commit
from airflow_curator.core.reshard.plan import plan_reshard
from airflow_curator.core.reshard.writer import reshard
from airflow_curator.testing.dataset import write_demo_dataset
from tests.core.reshard.test_writer import add_filter


@pytest.fixture
def planned(tmp_path):
    src = str(tmp_path / "in")
    write_demo_dataset(src, shards=2, records_per_shard=5, image_bytes=300)
    add_filter(src, lambda i: int(i) % 2 == 0)
    out = tmp_path / "out"
    return src, out, plan_reshard(src, str(out), "keep", samples_per_shard=2)


def test_manifest_has_counts_sizes_and_sha256(planned):
    _, out, p = planned
    reshard(p["plan"])
    result = commit(p["plan"])
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["records"] == result["records"] == 6
    assert [s["shard"] for s in manifest["shards"]] == ["00000", "00001", "00002"]
    for s in manifest["shards"]:
        for f in s["files"].values():
            data = (out / f["name"]).read_bytes()
            assert f["size"] == len(data)
            assert f["sha256"] == hashlib.sha256(data).hexdigest()
    assert (out / "_SUCCESS").exists()
    # open_clip's loader sizes the dataset from sizes.json instead of --train-num-samples
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {"00000.tar": 2, "00001.tar": 2, "00002.tar": 2} and result["sizes"]
    before = (out / "_manifest.json").read_bytes(), (out / "sizes.json").read_bytes()
    commit(p["plan"], verify_hashes=True)
    assert ((out / "_manifest.json").read_bytes(), (out / "sizes.json").read_bytes()) == before


def test_missing_output_is_an_error_and_no_success(planned):
    _, out, p = planned
    reshard(p["plan"], "0,2")
    with pytest.raises(CuratorError, match="1 of 3 output shards were not written: 00001"):
        commit(p["plan"])
    assert not (out / "_SUCCESS").exists()


def test_size_and_hash_mismatch(planned):
    _, out, p = planned
    reshard(p["plan"])
    tar = out / "00001.tar"
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF  # same size, different bytes
    tar.write_bytes(bytes(data))
    commit(p["plan"])  # sizes agree: the quick check passes
    with pytest.raises(ShardError, match=r"shard 00001: 00001\.tar sha256 differs"):
        commit(p["plan"], verify_hashes=True)
    tar.write_bytes(bytes(data[:-512]))
    with pytest.raises(ShardError, match=r"shard 00001: 00001\.tar has"):
        commit(p["plan"])


def test_leftovers_swept_and_success_removed_by_a_new_plan(planned):
    src, out, p = planned
    reshard(p["plan"])
    commit(p["plan"])
    assert (out / "_SUCCESS").exists()
    # a later, smaller run: its plan drops _SUCCESS, commit sweeps what the old run left
    add_filter(src, lambda i: int(i) % 5 == 0)
    p2 = plan_reshard(src, str(out), "keep", samples_per_shard=2)
    assert not (out / "_SUCCESS").exists()
    assert p2["output_shards"] == 1
    (out / ".00000.tar.tmp-123-abcdef12").write_bytes(b"half")  # reshard sweeps its own
    (out / ".00007.tar.tmp-123-abcdef12").write_bytes(b"half")  # no shard of this plan
    reshard(p2["plan"])
    assert not (out / ".00000.tar.tmp-123-abcdef12").exists()
    result = commit(p2["plan"])
    assert result["removed"] == 9  # 2 stale shards x (3 files + marker) + the temporary
    names = sorted(os.listdir(out))
    assert names == [
        "00000.idx",
        "00000.parquet",
        "00000.tar",
        "_SUCCESS",
        "_manifest.json",
        "_work",
        "sizes.json",
    ]
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 2}  # the new plan's
    assert sorted(os.listdir(out / "_work" / "reshard")) == ["00000.json"]


def test_marker_from_another_plan_is_refused(planned):
    src, out, p = planned
    reshard(p["plan"])
    add_filter(src, lambda i: int(i) % 2 == 1)
    p2 = plan_reshard(src, str(out), "keep", samples_per_shard=2)
    with pytest.raises(ShardError, match="written for another plan"):
        commit(p2["plan"])


def test_rerun_skips_finished_shards_and_redoes_broken_ones(planned):
    _, out, p = planned
    first = reshard(p["plan"])
    assert (first["written"], first["skipped"]) == (3, 0)
    tar1 = out / "00001.tar"
    tar1.write_bytes(tar1.read_bytes()[:-1024])  # a broken file: redone on the next attempt
    mtime0 = (out / "00000.tar").stat().st_mtime_ns
    again = reshard(p["plan"])
    assert (again["written"], again["skipped"], again["records"]) == (1, 2, 6)
    assert (out / "00000.tar").stat().st_mtime_ns == mtime0
    commit(p["plan"], verify_hashes=True)
    assert reshard(p["plan"], "0", force=True)["written"] == 1
