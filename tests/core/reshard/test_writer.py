from __future__ import annotations

import io
import json
import os
import random
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_curator.core.errors import CuratorError, ShardError
from airflow_curator.core.reshard.commit import commit
from airflow_curator.core.reshard.plan import load_plan, plan_reshard
from airflow_curator.core.reshard.writer import reshard
from airflow_curator.core.wds.index import build_index, index_dataset
from airflow_curator.core.wds.tarsource import TarSource
from airflow_curator.core.wds.tarwriter import TarWriter
from airflow_curator.testing.dataset import write_demo_dataset
from tests.dali_reader import dali_read


def add_filter(path: str, keep, shuffle_seed: int | None = None) -> dict[str, bool]:
    """Add a boolean ``keep`` column (``keep(id) -> bool``) to every shard's Parquet."""
    decided = {}
    for name in sorted(os.listdir(path)):
        if not name.endswith(".parquet"):
            continue
        t = pq.read_table(os.path.join(path, name))
        if "keep" in t.column_names:
            t = t.drop_columns(["keep"])
        if shuffle_seed is not None:  # Parquet row order differs from the tar's
            order = list(range(t.num_rows))
            random.Random(shuffle_seed).shuffle(order)
            t = t.take(pa.array(order))
        flags = [keep(i) for i in t["key"].to_pylist()]
        decided.update(zip(t["key"].to_pylist(), flags, strict=True))
        pq.write_table(t.append_column("keep", pa.array(flags)), os.path.join(path, name))
    return decided


def tar_members(path: str) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def run_all(src: str, out: str, outputs=None, workers=1, **kw) -> dict:
    planned = plan_reshard(src, out, "keep", **kw)
    for spec in outputs or [None]:
        reshard(planned["plan"], spec, workers=workers)
    commit(planned["plan"])
    return planned


def files_of(folder: str) -> dict[str, bytes]:
    return {
        n: Path(folder, n).read_bytes()
        for n in sorted(os.listdir(folder))
        if os.path.isfile(os.path.join(folder, n))
    }


@pytest.fixture
def src(tmp_path):
    path = str(tmp_path / "in")
    ids = write_demo_dataset(path, shards=3, records_per_shard=7, seed=3)
    rng = random.Random(5)
    decided = add_filter(path, lambda i: rng.random() < 0.6, shuffle_seed=1)
    return path, ids, decided


def test_new_ids_old_ids_json_and_bytes(src, tmp_path):
    path, _, decided = src
    out = str(tmp_path / "out")
    planned = run_all(path, out, samples_per_shard=4, old_id_col="old_key")
    kept = sum(decided.values())
    assert planned["records"] == kept and planned["output_shards"] == -(-kept // 4)
    # input members by old id, read with tarfile (independent of our reader)
    inputs = {}
    for s in range(3):
        for name, data in tar_members(os.path.join(path, f"{s:05d}.tar")):
            inputs[name] = data
    seen_old = []
    for o in range(planned["output_shards"]):
        stem = f"{o:05d}"
        table = pq.read_table(os.path.join(out, f"{stem}.parquet"))
        members = dict(tar_members(os.path.join(out, f"{stem}.tar")))
        new_ids = table["key"].to_pylist()
        assert new_ids == [f"{stem}{k}" for k in range(len(new_ids))]  # 5 + 1 digits
        for new, old, caption in zip(
            new_ids, table["old_key"].to_pylist(), table["caption"].to_pylist(), strict=True
        ):
            assert decided[old]
            assert members[f"{new}.jpg"] == inputs[f"{old}.jpg"]  # bytes unchanged
            assert members[f"{new}.txt"] == inputs[f"{old}.txt"] == caption.encode()
            meta = json.loads(members[f"{new}.json"])
            assert meta["key"] == new
            assert meta["url"] == json.loads(inputs[f"{old}.json"])["url"]
            seen_old.append(old)
        names = list(members)
        assert names == sorted(names)  # records in order, members sorted within a record
        assert (
            Path(out, f"{stem}.idx").read_text() == build_index(os.path.join(out, f"{stem}.tar"))[0]
        )
    # in id order within each input shard (NeMo Curator's order), whatever the Parquet row order
    assert seen_old == sorted(i for i, k in decided.items() if k)
    assert os.path.exists(os.path.join(out, "_SUCCESS"))


def test_same_bytes_whatever_grouping_order_or_index(src, tmp_path):
    path, _, _ = src
    a, b, c = (str(tmp_path / n) for n in "abc")
    run_all(path, a, samples_per_shard=3)
    n = len(load_plan(os.path.join(a, "_work", "reshard-plan.json")).outputs)
    assert n >= 3
    run_all(path, b, outputs=[str(i) for i in reversed(range(n))], samples_per_shard=3)
    index_dataset(path)  # now the inputs have .idx: ranges come from it instead of a scan
    run_all(path, c, outputs=[f"1-{n - 1}", "0"], workers=2, samples_per_shard=3)
    fa, fb, fc = files_of(a), files_of(b), files_of(c)
    assert len(fa) == 3 * n + 3  # shards + _manifest.json + sizes.json + _SUCCESS
    shards = {k: v for k, v in fa.items() if not k.startswith("_")}
    assert shards == {k: v for k, v in fb.items() if not k.startswith("_")}
    assert shards == {k: v for k, v in fc.items() if not k.startswith("_")}


@pytest.mark.parametrize("samples_per_shard", [10000, 4])
def test_records_read_into_the_buffer_equal_the_general_path(
    src, tmp_path, monkeypatch, samples_per_shard
):
    """Most records are read straight into the writer's buffer (members reordered there, the
    .json id patched in place); 4 per shard gives shorter ids, so every .json changes length
    and those records go the general way after all. Either way: the general path's bytes."""
    path, _, _ = src
    index_dataset(path)
    fast, general = str(tmp_path / "fast"), str(tmp_path / "general")
    committed = []
    real_commit = TarWriter.commit

    def counting_commit(self, key, exts):
        committed.append(real_commit(self, key, exts))
        return committed[-1]

    monkeypatch.setattr(TarWriter, "commit", counting_commit)
    run_all(path, fast, samples_per_shard=samples_per_shard, old_id_col="old_key")
    assert any(committed) == (samples_per_shard == 10000)
    monkeypatch.setattr(TarSource, "read_into", lambda self, locs, slots: False)
    committed.clear()
    run_all(path, general, samples_per_shard=samples_per_shard, old_id_col="old_key")
    assert not committed
    shards = {k: v for k, v in files_of(fast).items() if not k.startswith("_")}
    assert len(shards) >= 3
    assert shards == {k: v for k, v in files_of(general).items() if not k.startswith("_")}


def test_a_failure_midway_leaves_no_write_in_flight(tmp_path, monkeypatch):
    """Direct I/O writes from a background thread: when a record fails, the writes in flight
    finish before the temporary file is closed and removed (a late write could otherwise land
    in whatever file reuses the descriptor)."""
    import threading

    import airflow_curator.core.reshard.writer as reshard_module

    path = str(tmp_path / "in")
    write_demo_dataset(path, shards=1, records_per_shard=40, image_bytes=200_000)
    add_filter(path, lambda i: True)
    planned = plan_reshard(path, str(tmp_path / "out"), "keep")
    calls = []
    real = reshard_module.rewrite_json

    def fail_late(*args):
        calls.append(1)
        if len(calls) == 30:  # several megabytes are staged or in flight by now
            raise ShardError("00000", "record 29: planted failure")
        return real(*args)

    monkeypatch.setattr(reshard_module, "rewrite_json", fail_late)
    with pytest.raises(ShardError, match="planted failure"):
        reshard(planned["plan"], workers=1)
    assert not [t for t in threading.enumerate() if t.name.startswith("curator-write")]
    assert sorted(os.listdir(tmp_path / "out")) == ["_work"]  # no temporary left behind


def test_rewriting_a_shard_removes_only_its_own_debris(src, tmp_path):
    path, _, _ = src
    out = tmp_path / "out"
    planned = plan_reshard(path, str(out), "keep", samples_per_shard=3)
    markers = out / "_work" / "reshard"
    markers.mkdir(parents=True)
    mine = [out / ".00001.tar.tmp-999999-aaaa", markers / ".00001.json.tmp-999999-bbbb"]
    other = out / ".00000.parquet.tmp-999999-cccc"  # another group's: it may be writing now
    for f in [*mine, other]:
        f.write_bytes(b"half")
    reshard(planned["plan"], "1")
    assert not any(f.exists() for f in mine) and other.exists()
    assert (out / "00001.tar").exists() and not (out / "00000.tar").exists()


def test_read_back_by_webdataset_library(src, tmp_path):
    webdataset = pytest.importorskip("webdataset")
    path, _, decided = src
    out = str(tmp_path / "out")
    run_all(path, out, samples_per_shard=5)
    tars = sorted(os.path.join(out, n) for n in os.listdir(out) if n.endswith(".tar"))
    samples = list(webdataset.WebDataset(tars, shardshuffle=False))
    assert len(samples) == sum(decided.values())
    for s in samples:
        assert json.loads(s["json"])["key"] == s["__key__"]
        assert s["jpg"][:2] == b"\xff\xd8"


def test_read_back_by_dali_with_our_index(src, tmp_path):
    path, _, _ = src
    out = str(tmp_path / "out")
    run_all(path, out, samples_per_shard=100)
    tar, idx = os.path.join(out, "00000.tar"), os.path.join(out, "00000.idx")
    got = dali_read(tar, idx, ["jpg", "txt", "json"])
    members = dict(tar_members(tar))
    keys = sorted({n.split(".")[0] for n in members})
    assert len(got) == len(keys) > 1
    assert got == [tuple(members[f"{k}.{e}"] for e in ("jpg", "txt", "json")) for k in keys]


def test_all_filtered_shard_and_nothing_kept(tmp_path):
    path = str(tmp_path / "in")
    ids = write_demo_dataset(path, shards=3, records_per_shard=4, image_bytes=10)
    add_filter(path, lambda i: i[:5] != "00001")  # shard 1 keeps nothing
    planned = run_all(path, str(tmp_path / "out"), samples_per_shard=3)
    assert planned["empty_inputs"] == ["00001"] and planned["records"] == 8
    out = tmp_path / "out"
    keys = pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("*.parquet")))["key"]
    assert keys.to_pylist() == sorted(f"{o:05d}{k}" for o in range(3) for k in range(3))[:8]
    empty = str(tmp_path / "empty")
    add_filter(path, lambda i: False)
    planned = run_all(path, empty)
    assert planned["records"] == 0 and planned["groups"] == [] and "empty" in planned["message"]
    manifest = json.loads(Path(empty, "_manifest.json").read_text())
    assert manifest["records"] == 0 and manifest["shards"] == []
    assert os.path.exists(os.path.join(empty, "_SUCCESS"))
    assert ids  # the input is untouched
    assert len(os.listdir(path)) == 6


def test_too_many_output_shards_fails_before_writing(src, tmp_path):
    path, _, _ = src
    add_filter(path, lambda i: True)  # 21 records in shards of 1: 21 > 10 one-digit shards
    out = tmp_path / "out"
    with pytest.raises(CuratorError, match="need 21 output shards of 1, more than max_shards=1"):
        plan_reshard(path, str(out), "keep", samples_per_shard=1, max_shards=1)
    assert not out.exists()


def test_metadata_changed_after_planning(src, tmp_path):
    path, _, _ = src
    planned = plan_reshard(path, str(tmp_path / "out"), "keep", samples_per_shard=100)
    add_filter(path, lambda i: True)
    with pytest.raises(ShardError, match="changed after planning"):
        reshard(planned["plan"])


def test_kept_record_missing_from_tar(tmp_path):
    path = str(tmp_path / "in")
    write_demo_dataset(path, shards=1, records_per_shard=3, image_bytes=10)
    add_filter(path, lambda i: True)
    t = pq.read_table(os.path.join(path, "00000.parquet"))
    extra = pa.table({c: [t[c][0].as_py()] for c in t.column_names}).set_column(
        0, "key", pa.array(["000000999"])
    )
    pq.write_table(pa.concat_tables([t, extra]), os.path.join(path, "00000.parquet"))
    planned = plan_reshard(path, str(tmp_path / "out"), "keep")
    with pytest.raises(
        ShardError, match="shard 00000: 1 kept records are not in the tar: 000000999"
    ):
        reshard(planned["plan"])


def test_bad_filter_column(src, tmp_path):
    path, _, _ = src
    with pytest.raises(ShardError, match="has no column 'nope'"):
        plan_reshard(path, str(tmp_path / "o"), "nope")
    with pytest.raises(ShardError, match="not a boolean column"):
        plan_reshard(path, str(tmp_path / "o"), "caption")
    with pytest.raises(ValueError, match="is the input dataset"):
        plan_reshard(path, path, "keep")


def test_pax_input_gives_the_same_ustar_output(tmp_path):
    path = str(tmp_path / "in")
    write_demo_dataset(path, shards=2, records_per_shard=3, image_bytes=700, tar_format="pax")
    add_filter(path, lambda i: i.endswith(("0", "2")))
    out = str(tmp_path / "out")
    run_all(path, out)
    members = tar_members(os.path.join(out, "00000.tar"))
    assert [n for n, _ in members][:3] == ["000000000.jpg", "000000000.json", "000000000.txt"]
    with tarfile.open(os.path.join(out, "00000.tar")) as tar:
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    data = Path(out, "00000.tar").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as stream:  # readable as a stream
        assert len([m.name for m in stream]) == 12  # 2 records kept of each shard


@pytest.mark.parametrize("store", ["local", "memory"])
def test_stale_input_index_falls_back_to_a_scan(tmp_path, caplog, store):
    import shutil

    other = str(tmp_path / "other")
    path = str(tmp_path / "in")
    write_demo_dataset(other, shards=1, records_per_shard=4, image_bytes=900)
    write_demo_dataset(path, shards=1, records_per_shard=4, image_bytes=100)  # same ids
    index_dataset(other)
    shutil.copy(os.path.join(other, "00000.idx"), os.path.join(path, "00000.idx"))  # newer
    add_filter(path, lambda i: True)
    out = str(tmp_path / "out")
    dataset = path
    if store == "memory":  # an object store: the headers are checked in one batched read
        fsspec = pytest.importorskip("fsspec")
        fs = fsspec.filesystem("memory")
        dataset = f"memory://stale-index-{os.getpid()}/in"
        for n in sorted(os.listdir(path), key=lambda n: n.endswith(".idx")):  # .idx last: fresh
            fs.pipe(f"{dataset[len('memory://') :]}/{n}", Path(path, n).read_bytes())
    try:
        planned = run_all(dataset, out)
        assert load_plan(planned["plan"]).inputs[0].idx  # discovery took the index as fresh
        assert "does not match the tar" in caplog.text
        assert [d for _, d in tar_members(os.path.join(out, "00000.tar"))][0::3] == [
            d for _, d in tar_members(os.path.join(path, "00000.tar"))
        ][0::3]
    finally:
        if store == "memory":
            fs.rm(dataset[len("memory://") :].rsplit("/", 1)[0], recursive=True)


@pytest.mark.parametrize("samples_per_shard", [4, 10000])
def test_object_store_gives_the_same_bytes_as_local(src, tmp_path, monkeypatch, samples_per_shard):
    fsspec = pytest.importorskip("fsspec")
    path, _, _ = src
    fs = fsspec.filesystem("memory")
    root = f"/reshard-test-{os.getpid()}"
    reads, ranges = [], []  # memory's cat_ranges calls cat_file once per range
    real_cat_file, real_cat_ranges = type(fs).cat_file, type(fs).cat_ranges
    monkeypatch.setattr(
        type(fs), "cat_file", lambda *a, **k: reads.append(a) or real_cat_file(*a, **k)
    )
    monkeypatch.setattr(
        type(fs),
        "cat_ranges",
        lambda s, p, *a, **k: ranges.extend(p) or real_cat_ranges(s, p, *a, **k),
    )
    try:
        for n in os.listdir(path):
            fs.pipe(f"{root}/in/{n}", Path(path, n).read_bytes())
        index_dataset(f"memory://{root}/in")  # ranged reads through the index
        local = str(tmp_path / "out")
        run_all(path, local, samples_per_shard=samples_per_shard, old_id_col="old")
        reads.clear()
        run_all(
            f"memory://{root}/in",
            f"memory://{root}/out",
            workers=2,
            samples_per_shard=samples_per_shard,
            old_id_col="old",
        )
        tar_reads = [r for r in reads if r[1].endswith(".tar")]  # a small Parquet: one read
        assert len(tar_reads) == len(ranges) > 0  # every record came out of the batched reads
        names = [n for n in sorted(os.listdir(local)) if n[0].isdigit()]
        assert len(names) >= 3
        for n in names:
            assert fs.cat(f"{root}/out/{n}") == Path(local, n).read_bytes(), n
        assert fs.exists(f"{root}/out/_SUCCESS")
    finally:
        fs.rm(root, recursive=True)


def test_one_output_from_many_inputs_in_input_order(tmp_path):
    path = str(tmp_path / "in")
    ids = write_demo_dataset(path, shards=5, records_per_shard=3, image_bytes=20)
    add_filter(path, lambda i: not i.endswith("1"))
    out = str(tmp_path / "out")
    planned = run_all(path, out, samples_per_shard=100, old_id_col="old")
    assert planned["output_shards"] == 1
    table = pq.read_table(os.path.join(out, "00000.parquet"))
    assert table["old"].to_pylist() == [i for i in ids if not i.endswith("1")]
    assert table["key"].to_pylist() == [f"00000{k:02d}" for k in range(10)]


def test_metadata_folder_and_input_subset(src, tmp_path):
    import shutil

    path, _, decided = src
    meta = tmp_path / "meta"
    meta.mkdir()
    shutil.copy(os.path.join(path, "00001.parquet"), meta / "00001.parquet")
    with pytest.raises(ShardError, match=r"shard 00000: .*00000\.parquet does not exist"):
        plan_reshard(path, str(tmp_path / "o"), "keep", metadata=str(meta))
    planned = plan_reshard(path, str(tmp_path / "o"), "keep", metadata=str(meta), shards="1")
    assert planned["input_shards"] == 1
    assert planned["records"] == sum(k for i, k in decided.items() if i[:5] == "00001")
