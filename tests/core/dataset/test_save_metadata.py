from __future__ import annotations

import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_curator.core.dataset.save_metadata import Thresholds, merge_shard, save_metadata
from airflow_curator.core.errors import ShardError
from airflow_curator.core.io import storage
from airflow_curator.testing.dataset import write_demo_dataset


def write_annotations(folder, dataset, seed=0, drop=(), extra=(), error_ids=()) -> dict:
    """Annotation Parquet per shard (rows shuffled: the join must be by id); returns id->scores."""
    rng = random.Random(seed)
    os.makedirs(folder, exist_ok=True)
    scores = {}
    for name in sorted(os.listdir(dataset)):
        if not name.endswith(".parquet"):
            continue
        ids = [i for i in pq.read_table(os.path.join(dataset, name))["key"].to_pylist()]
        ids = [i for i in ids if i not in drop] + [i for i in extra if i[:5] == name[:5]]
        rng.shuffle(ids)
        rows = {"key": [], "aesthetic_score": [], "nsfw_score": [], "clip_score": [], "error": []}
        for i in ids:
            failed = i in error_ids
            a, n, c = rng.uniform(3, 7), rng.random(), rng.uniform(0.1, 0.4)
            scores[i] = (a, n, c, failed)
            rows["key"].append(i)
            rows["aesthetic_score"].append(None if failed else a)
            rows["nsfw_score"].append(None if failed else n)
            rows["clip_score"].append(None if failed else c)
            rows["error"].append("decode failed" if failed else None)
        table = pa.table(
            {
                "key": pa.array(rows["key"]),
                "aesthetic_score": pa.array(rows["aesthetic_score"], pa.float32()),
                "nsfw_score": pa.array(rows["nsfw_score"], pa.float32()),
                "clip_score": pa.array(rows["clip_score"], pa.float32()),
                "error": pa.array(rows["error"], pa.string()),
                "image_embedding": pa.array(
                    [[float(len(k))] * 4 for k in rows["key"]], pa.list_(pa.float32(), 4)
                ),
            }
        )
        pq.write_table(table, os.path.join(folder, name))
    return scores


@pytest.fixture
def dataset(tmp_path):
    path = str(tmp_path / "ds")
    ids = write_demo_dataset(path, shards=2, records_per_shard=8, image_bytes=50)
    return path, ids


def test_join_by_id_thresholds_and_errors(dataset, tmp_path):
    path, ids = dataset
    ann = str(tmp_path / "ann")
    scores = write_annotations(ann, path, error_ids={ids[3]})
    out = str(tmp_path / "meta")
    t = Thresholds(min_aesthetic=4.5, max_nsfw=0.8, min_clip_score=0.2)
    result = save_metadata(path, annotations=ann, path=out, thresholds=t)
    table = pa.concat_tables(pq.read_table(os.path.join(out, f"{s:05d}.parquet")) for s in (0, 1))
    assert table["key"].to_pylist() == ids  # the dataset's row order, not the annotations'
    expected = []
    for i in ids:
        a, n, c, failed = scores[i]
        expected.append(not failed and a >= 4.5 and n <= 0.8 and c >= 0.2)
    assert table["passes_curation"].to_pylist() == expected
    assert result["passed"] == sum(expected) and result["records"] == len(ids)
    row = table.to_pylist()[5]
    assert row["caption"] and row["image_embedding"] == [float(len(ids[5]))] * 4
    assert abs(row["aesthetic_score"] - scores[ids[5]][0]) < 1e-5
    # the original Parquet is untouched when a path is given
    assert "aesthetic_score" not in pq.read_schema(os.path.join(path, "00000.parquet")).names


def test_default_replaces_in_place_and_rerun_gives_same_bytes(dataset, tmp_path):
    path, _ = dataset
    ann = str(tmp_path / "ann")
    write_annotations(ann, path)
    save_metadata(path, annotations=ann, thresholds=Thresholds(min_aesthetic=5))
    first = Path(path, "00001.parquet").read_bytes()
    assert "passes_curation" in pq.read_schema(os.path.join(path, "00001.parquet")).names
    save_metadata(path, annotations=ann, thresholds=Thresholds(min_aesthetic=5))
    assert Path(path, "00001.parquet").read_bytes() == first
    assert not [n for n in os.listdir(path) if storage.TMP_MARK in n]


def test_columns_subset_keeps_id_and_filter(dataset, tmp_path):
    path, _ = dataset
    ann = str(tmp_path / "ann")
    write_annotations(ann, path)
    out = str(tmp_path / "meta")
    save_metadata(path, annotations=ann, path=out, columns=["caption", "clip_score"])
    names = pq.read_schema(os.path.join(out, "00000.parquet")).names
    assert names == ["key", "caption", "clip_score", "passes_curation"]
    with pytest.raises(ValueError, match="unknown columns nope"):
        save_metadata(path, annotations=ann, path=out, columns=["nope"])


def test_crash_mid_write_leaves_original_intact(dataset, tmp_path, monkeypatch):
    path, _ = dataset
    ann = str(tmp_path / "ann")
    write_annotations(ann, path)
    target = os.path.join(path, "00000.parquet")
    before = Path(target).read_bytes()

    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        save_metadata(path, annotations=ann, workers=1)
    assert Path(target).read_bytes() == before
    assert not [n for n in os.listdir(path) if storage.TMP_MARK in n]


@pytest.mark.parametrize("case", ["missing", "extra", "duplicate"])
def test_join_mismatch_names_shard_and_ids(dataset, tmp_path, case):
    path, ids = dataset
    ann = str(tmp_path / "ann")
    if case == "missing":
        write_annotations(ann, path, drop={ids[2]})
        match = f"shard 00000: 1 records have no annotation: {ids[2]}"
    elif case == "extra":
        write_annotations(ann, path, extra=["000009999"])
        match = "shard 00000: 1 annotations match no record: 000009999"
    else:
        write_annotations(ann, path, extra=[ids[9]])
        match = f"shard 00001: annotations has duplicate ids: {ids[9]}"
    with pytest.raises(ShardError, match=match):
        save_metadata(path, annotations=ann, path=str(tmp_path / "out"), workers=1)


def test_missing_annotation_file(dataset, tmp_path):
    path, _ = dataset
    with pytest.raises(ShardError, match=r"shard 00000: annotations .* do not exist"):
        save_metadata(path, annotations=str(tmp_path / "none"), path=str(tmp_path / "o"))


def test_thresholds_without_annotations_and_null_scores():
    base = pa.table(
        {"key": ["a", "b", "c", "d"], "aesthetic_score": pa.array([5.0, None, 4.0, 6.0])}
    )
    out = merge_shard(base, None, id_col="key", shard="0", thresholds=Thresholds(min_aesthetic=5))
    assert out["passes_curation"].to_pylist() == [True, False, False, True]
    plain = merge_shard(base, None, id_col="key", shard="0")
    assert "passes_curation" not in plain.column_names
    with pytest.raises(ShardError, match="no 'nsfw_score' column"):
        merge_shard(base, None, id_col="key", shard="0", thresholds=Thresholds(max_nsfw=0.5))


def test_several_annotation_folders_and_a_required_column(tmp_path):
    """The dedup result merges like any annotation, and ``require`` folds it into the filter."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from airflow_curator.core.dataset.save_metadata import Thresholds, save_metadata
    from airflow_curator.testing.dataset import write_demo_dataset

    ids = write_demo_dataset(str(tmp_path / "in"), shards=1, records_per_shard=4)
    (tmp_path / "scores").mkdir()
    (tmp_path / "dedup").mkdir()
    pq.write_table(
        pa.table(
            {"key": ids[::-1], "aesthetic_score": pa.array([6.0, 2.0, 7.0, 8.0], pa.float32())}
        ),
        tmp_path / "scores/00000.parquet",
    )
    pq.write_table(
        pa.table({"key": ids, "is_unique": [True, False, None, True]}),
        tmp_path / "dedup/00000.parquet",
    )
    result = save_metadata(
        str(tmp_path / "in"),
        annotations=[str(tmp_path / "scores"), str(tmp_path / "dedup")],
        path=str(tmp_path / "meta"),
        thresholds=Thresholds(min_aesthetic=5.0, require=("is_unique",)),
    )
    table = pq.read_table(tmp_path / "meta/00000.parquet")
    # ids reversed in the scores: 8.0, 7.0, 2.0, 6.0 by dataset order; unique: T, F, null, T
    assert table.column("passes_curation").to_pylist() == [True, False, False, True]
    assert result["passed"] == 2
    before = (tmp_path / "meta/00000.parquet").stat().st_mtime_ns
    save_metadata(
        str(tmp_path / "in"),
        annotations=[str(tmp_path / "scores"), str(tmp_path / "dedup")],
        path=str(tmp_path / "meta"),
        thresholds=Thresholds(min_aesthetic=5.0, require=("is_unique",)),
    )
    assert (tmp_path / "meta/00000.parquet").stat().st_mtime_ns == before  # not rewritten


def test_merging_a_result_without_error_column_or_thresholds(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from airflow_curator.core.dataset.save_metadata import save_metadata
    from airflow_curator.testing.dataset import write_demo_dataset

    ids = write_demo_dataset(str(tmp_path / "in"), shards=1, records_per_shard=3)
    (tmp_path / "dedup").mkdir()
    pq.write_table(
        pa.table({"key": ids, "is_unique": [True, False, True]}), tmp_path / "dedup/00000.parquet"
    )
    result = save_metadata(str(tmp_path / "in"), annotations=str(tmp_path / "dedup"))
    assert result["passed"] == 3  # no thresholds and no errors: every record passes


def _with_own_column(path: str, values_by_shard: dict[str, list]) -> None:
    """Give the dataset's Parquet a boolean column of the user's own, named like the filter."""
    for stem, values in values_by_shard.items():
        target = os.path.join(path, f"{stem}.parquet")
        table = pq.read_table(target)
        pq.write_table(table.append_column("passes_curation", pa.array(values, pa.bool_())), target)


def test_a_filter_column_the_input_brings_is_anded_never_replaced(dataset, tmp_path):
    path, ids = dataset
    ann = str(tmp_path / "ann")
    scores = write_annotations(ann, path)
    mine = [i % 3 != 0 for i in range(8)]
    _with_own_column(path, {"00000": mine})  # shard 00001 has none of its own
    out = str(tmp_path / "meta")
    result = save_metadata(path, annotations=ann, path=out, thresholds=Thresholds(min_aesthetic=4))
    first = pq.read_table(os.path.join(out, "00000.parquet"))
    by_threshold = [scores[i][0] >= 4 for i in ids[:8]]
    assert first["passes_curation"].to_pylist() == [a and b for a, b in zip(mine, by_threshold)]
    assert first["passes_curation_input"].to_pylist() == mine  # the user's labels, kept
    second = pq.read_table(os.path.join(out, "00001.parquet"))
    assert "passes_curation_input" not in second.column_names
    assert second["passes_curation"].to_pylist() == [scores[i][0] >= 4 for i in ids[8:]]
    assert result["input_filter"] == {"column": "passes_curation_input", "shards": 1}
    assert result["passed"] == sum(first["passes_curation"].to_pylist()) + sum(
        second["passes_curation"].to_pylist()
    )


def test_a_column_save_metadata_wrote_is_recomputed_not_inherited(dataset, tmp_path):
    """In place, twice: the looser second pass does not keep the first pass's cuts, and the
    user's own labels survive both passes."""
    path, ids = dataset
    ann = str(tmp_path / "ann")
    scores = write_annotations(ann, path)
    mine = [i % 2 == 0 for i in range(8)]
    _with_own_column(path, {"00000": mine})
    save_metadata(path, annotations=ann, thresholds=Thresholds(min_aesthetic=6))
    strict = pq.read_table(os.path.join(path, "00000.parquet"))
    assert strict["passes_curation"].to_pylist() == [
        m and scores[i][0] >= 6 for m, i in zip(mine, ids[:8])
    ]
    result = save_metadata(path, annotations=ann, thresholds=Thresholds(min_aesthetic=3.5))
    loose = pq.read_table(os.path.join(path, "00000.parquet"))
    assert loose["passes_curation"].to_pylist() == [
        m and scores[i][0] >= 3.5 for m, i in zip(mine, ids[:8])
    ]
    assert loose["passes_curation_input"].to_pylist() == mine
    other = pq.read_table(os.path.join(path, "00001.parquet"))  # no labels of its own
    assert other["passes_curation"].to_pylist() == [scores[i][0] >= 3.5 for i in ids[8:]]
    assert result["input_filter"] == {"column": "passes_curation_input", "shards": 1}


def test_an_own_filter_column_that_is_not_boolean_is_refused(dataset, tmp_path):
    path, _ = dataset
    ann = str(tmp_path / "ann")
    write_annotations(ann, path)
    target = os.path.join(path, "00000.parquet")
    table = pq.read_table(target)
    pq.write_table(table.append_column("passes_curation", pa.array(range(8))), target)
    with pytest.raises(ValueError, match="own column 'passes_curation' is int64, not bool"):
        save_metadata(path, annotations=ann, path=str(tmp_path / "o"), workers=1)
