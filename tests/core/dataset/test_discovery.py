from __future__ import annotations

import json
import os
import time

import pytest

from airflow_curator.core.dataset.discovery import (
    EmptyDatasetError,
    Manifest,
    Shard,
    discover,
    input_group,
    load_manifest,
    make_groups,
    save_manifest,
)
from airflow_curator.core.errors import CuratorError, ShardError


def touch(folder, name, size=10):
    path = folder / name
    path.write_bytes(b"x" * size)
    return path


def test_pairs_and_counts(demo_dataset):
    path, ids = demo_dataset
    m = discover(path)
    assert [s.stem for s in m.shards] == ["00000", "00001"]
    assert m.records == len(ids) == 12
    assert all(s.parquet.endswith(f"{s.stem}.parquet") and s.idx is None for s in m.shards)
    assert m.bytes == sum(os.path.getsize(s.tar) for s in m.shards)


def test_ignores_stats_hidden_and_underscored(demo_dataset):
    path, _ = demo_dataset
    for name in ("00000_stats.json", "report.html", "_SUCCESS", ".00000.tar.tmp-1-abc"):
        with open(os.path.join(path, name), "w") as f:
            f.write("{}")
    os.mkdir(os.path.join(path, "_work"))
    m = discover(path)
    assert len(m.shards) == 2
    assert sorted(m.ignored) == ["00000_stats.json", "report.html"]


def test_tar_without_parquet(tmp_path):
    touch(tmp_path, "00000.tar")
    with pytest.raises(ShardError, match=r"shard 00000: 00000.tar has no 00000.parquet"):
        discover(str(tmp_path), count_records=False)


def test_parquet_without_tar(tmp_path):
    touch(tmp_path, "00001.parquet")
    with pytest.raises(ShardError, match=r"00001.parquet has no 00001.tar"):
        discover(str(tmp_path), count_records=False)


def test_bad_name(tmp_path):
    touch(tmp_path, "shard-a.tar")
    with pytest.raises(ShardError, match=r"shard-a.tar is not named as a shard id"):
        discover(str(tmp_path), count_records=False)


def test_same_shard_twice(tmp_path):
    touch(tmp_path, "0001.tar")
    touch(tmp_path, "00001.tar")
    with pytest.raises(ShardError, match="are the same shard"):
        discover(str(tmp_path), count_records=False)


def test_skip_mode_reports_problems(demo_dataset):
    path, _ = demo_dataset
    os.remove(os.path.join(path, "00001.parquet"))
    m = discover(path, on_invalid="skip")
    assert [s.stem for s in m.shards] == ["00000"]
    assert m.skipped == [{"shard": "00001", "reason": "00001.tar has no 00001.parquet"}]


def test_missing_folder(tmp_path):
    with pytest.raises(CuratorError, match="does not exist"):
        discover(str(tmp_path / "nope"))


def test_bad_parquet_footer(tmp_path):
    touch(tmp_path, "00000.tar")
    touch(tmp_path, "00000.parquet")
    with pytest.raises(ShardError, match=r"shard 00000: .* is not readable Parquet"):
        discover(str(tmp_path))


def test_index_freshness(demo_dataset):
    path, _ = demo_dataset
    now = time.time()
    for stem, idx_age in (("00000", 0), ("00001", -100)):
        idx = os.path.join(path, f"{stem}.idx")
        with open(idx, "w") as f:
            f.write("v1.2 0\n")
        os.utime(os.path.join(path, f"{stem}.tar"), (now - 50, now - 50))
        os.utime(idx, (now + idx_age, now + idx_age))
    m = discover(path)
    assert [s.idx_fresh for s in m.shards] == [True, False]


def test_memory_filesystem():
    import fsspec

    from airflow_curator.testing.dataset import write_demo_dataset

    write_demo_dataset("memory://bucket/ds", shards=3, records_per_shard=2)
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/ds/00000_stats.json", b"{}")
    m = discover("memory://bucket/ds")
    assert [s.stem for s in m.shards] == ["00000", "00001", "00002"]
    assert m.records == 6 and m.shards[0].tar == "memory://bucket/ds/00000.tar"


def test_folder_without_shards_says_what_it_holds(tmp_path):
    """The drops root instead of a dated drop (a typo away): an error naming the subfolders
    that hold shards and the other files, unless an empty dataset is allowed."""
    from airflow_curator.testing.dataset import write_demo_dataset

    drops = tmp_path / "drops"
    write_demo_dataset(str(drops / "2026-11-20"), shards=1, records_per_shard=2)
    (drops / "notes").mkdir()
    for name in ("README.md", "index.json", "00000_stats.json"):
        touch(drops, name)
    with pytest.raises(EmptyDatasetError) as e:
        discover(str(drops), allow_empty=False)
    assert str(e.value) == (
        f"no shards in {drops}: 3 other files (00000_stats.json, README.md, index.json), "
        "1 folder that holds shards (2026-11-20/), 1 other folder; "
        "pass allow_empty to accept an empty dataset"
    )
    assert isinstance(e.value, ValueError)  # a usage error: exit 2
    assert discover(str(drops)).shards == []  # the library's callers opt in
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EmptyDatasetError, match=r"no shards in .*empty: the folder is empty"):
        discover(str(empty), allow_empty=False)


def test_folder_of_invalid_shards_only(tmp_path):
    touch(tmp_path, "00000.tar")
    with pytest.raises(EmptyDatasetError, match=r"1 invalid shard skipped \(00000.tar has no"):
        discover(str(tmp_path), on_invalid="skip", allow_empty=False)


def test_empty_memory_folder_lists_its_subfolders():
    from airflow_curator.testing.dataset import write_demo_dataset

    write_demo_dataset("memory://bucket/roots/2026-11-21", shards=1, records_per_shard=2)
    with pytest.raises(EmptyDatasetError) as e:
        discover("memory://bucket/roots", allow_empty=False)
    assert "memory://bucket/roots: 1 folder that holds shards (2026-11-21/);" in str(e.value)


def shards(sizes):
    return [
        Shard(i, f"{i:05d}", f"/d/{i:05d}.tar", n, f"/d/{i:05d}.parquet")
        for i, n in enumerate(sizes)
    ]


@pytest.mark.parametrize("n", [1, 2, 7, 100, 3000])
@pytest.mark.parametrize("max_groups", [1, 3, 16, 1024])
def test_groups_are_contiguous_capped_and_complete(n, max_groups):
    all_shards = shards([1000 + (i * 7919) % 5000 for i in range(n)])
    groups = make_groups(all_shards, max_groups=max_groups, group_bytes=1)
    assert [s.id for g in groups for s in g] == list(range(n))
    assert len(groups) == min(n, max_groups)
    assert all(g for g in groups)


def test_groups_balance_bytes():
    all_shards = shards([100] * 90 + [1000] * 10)
    groups = make_groups(all_shards, max_groups=4, group_bytes=1)
    totals = [sum(s.tar_bytes for s in g) for g in groups]
    assert len(groups) == 4
    assert max(totals) <= 2 * (sum(totals) / 4)


def test_group_bytes_sets_the_count():
    groups = make_groups(shards([10] * 20), max_groups=1024, group_bytes=50)
    assert len(groups) == 4 and [len(g) for g in groups] == [5, 5, 5, 5]


def test_group_value_is_small():
    groups = make_groups(shards([1 << 30] * 50000), max_groups=1024, group_bytes=1)
    value = input_group(
        groups[10], "gs://bucket/some/dataset/2026-11-24", "gs://bucket/out/_work/manifest.json"
    )
    assert value["label"] == f"{groups[10][0].stem}-{groups[10][-1].stem}"
    assert len(json.dumps(value)) < 400


def test_manifest_round_trip(demo_dataset, tmp_path):
    path, _ = demo_dataset
    m = discover(path)
    save_manifest(m, str(tmp_path / "m" / "manifest.json"))
    back = load_manifest(str(tmp_path / "m" / "manifest.json"))
    assert isinstance(back, Manifest) and back.shards == m.shards and back.records == 12
    assert [s.stem for s in back.select("1")] == ["00001"]
    with pytest.raises(CuratorError, match="shards 5-6 of --shards"):
        back.select("0,5-6")


def test_footers_of_parquet_files_that_do_not_pair_are_never_blamed(demo_dataset):
    """Footers are read while the folder is listed, before pairing: an unpaired Parquet that is
    not Parquet is skipped as unpaired, and a kept shard's bad footer is still its error."""
    path, _ = demo_dataset
    with open(os.path.join(path, "00007.parquet"), "wb") as f:
        f.write(b"not parquet at all")
    m = discover(path, on_invalid="skip")
    assert [s.records for s in m.shards] == [6, 6]
    assert m.skipped == [{"shard": "00007", "reason": "00007.parquet has no 00007.tar"}]
    with pytest.raises(ShardError, match=r"shard 00007: 00007.parquet has no 00007.tar$"):
        discover(path)
    for stem in ("00001", "00000"):
        with open(os.path.join(path, f"{stem}.parquet"), "wb") as f:
            f.write(b"PAR1 garbage")
    with pytest.raises(ShardError, match=r"shard 00000: .*00000.parquet is not readable Parquet"):
        discover(path, on_invalid="skip")
