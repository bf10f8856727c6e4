"""``ImageTextPairDataset``: Dask metadata built from the manifest, exact and atomic saves,
``to_webdataset`` from the in-memory filter column."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from airflow_curator import ImageTextPairDataset
from airflow_curator.core.errors import ShardError, UsageError
from airflow_curator.testing.pairs import read_tar, write_pairs_dataset

pytest.importorskip("dask.dataframe")

COLUMNS = ["key", "caption", "width", "source"]


@pytest.fixture
def data(tmp_path):
    return write_pairs_dataset(tmp_path / "ds", shards=3, records=6, seed=2)


def test_metadata_is_one_lazy_partition_per_shard_sorted_by_id(data):
    import pandas as pd

    ds = ImageTextPairDataset.from_webdataset(data.path, id_col="key")
    meta = ds.metadata
    assert meta.npartitions == 3 and len(ds) == 18
    assert meta.divisions == (0, 6, 12, 17)  # row numbers in the dataset: known divisions
    assert list(meta.columns) == COLUMNS  # no _shard column
    assert all(isinstance(t, pd.ArrowDtype) for t in meta.dtypes)
    assert ds.tar_files == [os.path.join(data.path, f"{s:05d}.tar") for s in range(3)]
    for s in range(3):
        part = meta.partitions[s].compute()
        assert list(part["key"]) == data.shard_ids(s)  # the Parquet rows are shuffled
        assert list(part.index) == list(range(6 * s, 6 * s + 6))
    assert list(meta.head(3)["key"]) == data.shard_ids(0)[:3]
    # NeMo users' DataFrame code
    meta["wide"] = meta["width"] > 60
    meta["keep"] = ~meta["key"].isin([data.ids[0], data.ids[7]]) & meta["source"].notnull()
    frame = ds.metadata.compute()
    assert list(frame.columns) == [*COLUMNS, "wide", "keep"]
    assert frame["wide"].tolist() == (frame["width"] > 60).tolist()
    assert not frame.loc[frame["key"].isin([data.ids[0], data.ids[7]]), "keep"].any()
    assert len(ds.metadata[ds.metadata["wide"]].compute()) == int(frame["wide"].sum())


def test_save_metadata_writes_exactly_the_columns_atomically(data, tmp_path):
    import pyarrow.parquet as pq

    ds = ImageTextPairDataset.from_webdataset(data.path)
    ds.metadata["score"] = ds.metadata["width"].astype("float32") / 10
    out = str(tmp_path / "meta")
    result = ds.save_metadata(out)
    for s in range(3):
        table = pq.read_table(os.path.join(out, f"{s:05d}.parquet"))
        assert table.column_names == [*COLUMNS, "score"]  # no passes_curation nobody asked for
        assert table.column("key").to_pylist() == data.shard_ids(s)
        assert table.schema.field("width").type == "int32"  # Arrow types kept
    assert result["filter_column"] is None and result["records"] == 18
    ds.save_metadata(out, columns=["key", "score"])
    assert pq.read_schema(os.path.join(out, "00001.parquet")).names == ["key", "score"]
    mtime = os.stat(os.path.join(out, "00001.parquet")).st_mtime_ns
    ds.save_metadata(out, columns=["key", "score"])  # unchanged: not rewritten
    assert os.stat(os.path.join(out, "00001.parquet")).st_mtime_ns == mtime
    ds.metadata["aesthetic_score"] = ds.metadata["score"]
    thresholded = ds.save_metadata(out, min_aesthetic=7.0, filter_column="good")
    table = pq.read_table(os.path.join(out, "00000.parquet"))
    assert table.column_names[-1] == "good"
    assert table.column("good").to_pylist() == [s >= 7.0 for s in table["score"].to_pylist()]
    assert thresholded["passed"] == sum(w >= 70 for w in ds.metadata["width"].compute())
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no temporaries left


def test_in_place_save_replaces_the_parquet_and_reads_it_back(data):
    import pyarrow.parquet as pq

    ds = ImageTextPairDataset.from_webdataset(data.path)
    ds.metadata["double"] = ds.metadata["width"] * 2
    ds.save_metadata()
    assert pq.read_schema(os.path.join(data.path, "00002.parquet")).names == [*COLUMNS, "double"]
    assert list(ds.metadata.columns) == [*COLUMNS, "double"]
    assert ds.metadata.npartitions == 3
    with pytest.raises(ValueError, match="id column 'key'"):
        ds.save_metadata(columns=["caption"])


def test_in_place_save_refuses_to_lose_records(data):
    ds = ImageTextPairDataset.from_webdataset(data.path)
    before = {n: Path(data.path, n).read_bytes() for n in os.listdir(data.path)}
    ds.metadata = ds.metadata[ds.metadata["width"] > 60]
    with pytest.raises(ShardError, match="replacing its Parquet would lose them"):
        ds.save_metadata()
    after = {n: Path(data.path, n).read_bytes() for n in os.listdir(data.path)}
    assert after == before


def test_to_webdataset_filters_on_the_column_in_memory(data, tmp_path):
    import pyarrow.parquet as pq

    ds = ImageTextPairDataset.from_webdataset(data.path)
    ds.metadata["keep"] = ds.metadata["width"] > 60
    kept = ds.metadata.compute().query("keep")["key"].tolist()
    out = ds.to_webdataset(str(tmp_path / "out"), "keep", samples_per_shard=4, old_id_col="old")
    frame = out.metadata.compute()
    assert frame["old"].tolist() == kept  # id order within each input shard
    assert frame["keep"].all() and list(frame.columns) == [*COLUMNS, "keep", "old"]
    assert pq.read_schema(os.path.join(data.path, "00000.parquet")).names == COLUMNS
    names = [n for n, _ in read_tar(os.path.join(tmp_path, "out", "00000.tar"))]
    assert names[:3] == ["000000.jpg", "000000.json", "000000.txt"]
    # rows the metadata no longer holds are not kept
    full = ds.metadata.compute().set_index("key")
    ds.metadata = ds.metadata[ds.metadata["source"].notnull()]
    fewer = ds.to_webdataset(str(tmp_path / "fewer"), "keep", old_id_col="old").metadata.compute()
    assert fewer["old"].tolist() == [k for k in kept if isinstance(full.loc[k, "source"], str)]


def test_to_webdataset_refuses_bad_filters(data, tmp_path):
    ds = ImageTextPairDataset.from_webdataset(data.path)
    with pytest.raises(ValueError, match="no filter column 'nope'"):
        ds.to_webdataset(str(tmp_path / "out"), "nope")
    ds.metadata["count"] = ds.metadata["width"] * 1
    with pytest.raises(ShardError, match="'count' is int64, not a boolean column"):
        ds.to_webdataset(str(tmp_path / "out"), "count")
    ds.metadata["keep"] = ds.metadata["width"] > 0
    with pytest.raises(ValueError, match="inside the input dataset"):
        ds.to_webdataset(os.path.join(data.path, "curated"), "keep")
    assert not os.path.exists(os.path.join(data.path, "curated"))


def test_nemo_constructor_and_one_partition_per_shard(data, tmp_path):
    opened = ImageTextPairDataset.from_webdataset(data.path)
    ds = ImageTextPairDataset(data.path, opened.metadata, opened.tar_files, "key")
    assert ds.save_metadata(str(tmp_path / "copy"))["records"] == 18
    ds.metadata = ds.metadata.repartition(npartitions=1)
    with pytest.raises(UsageError, match="1 partitions for 3 shards"):
        ds.save_metadata(str(tmp_path / "copy"))


def test_a_curated_output_that_kept_nothing_opens_empty(data, tmp_path):
    ds = ImageTextPairDataset.from_webdataset(data.path)
    ds.metadata["keep"] = ds.metadata["width"] < 0
    out = ds.to_webdataset(str(tmp_path / "out"), "keep")
    assert len(out) == 0 and out.tar_files == []
    assert list(out.metadata.compute().columns) == ["key"]
    assert out.save_metadata(str(tmp_path / "meta"))["shards"] == 0
    with pytest.raises(UsageError, match="no shards"):
        out.to_webdataset(str(tmp_path / "again"), "key")


def test_save_metadata_filter_keywords_preset_and_top_fraction(data, tmp_path):
    """The command line's filters as keywords: a preset with an override, and the top fraction
    of the whole dataset's clip_score (not of each shard), checked against numpy."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds = ImageTextPairDataset.from_webdataset(data.path)
    meta = ds.metadata
    ds.metadata["height"] = meta["width"] // 2 + 20
    ds.metadata["caption_words"] = (meta["caption"].str.count(" ") + 1).astype("int32")
    ds.metadata["caption_chars"] = meta["caption"].str.len().astype("int32")
    ds.metadata["caption_language"] = "en"
    ds.metadata["clip_score"] = (meta["width"] // 7).astype("float32") / 40  # ties across shards
    out = str(tmp_path / "meta")
    result = ds.save_metadata(
        out, preset="datacomp-basic", min_image_side=10, clip_score_top_fraction=0.4
    )
    table = pa.concat_tables(pq.read_table(os.path.join(out, f"{s:05d}.parquet")) for s in range(3))
    rows = table.to_pylist()
    scores = np.array([r["clip_score"] for r in rows], dtype=np.float64)
    threshold = float(-np.quantile(-scores, 0.4, method="inverted_cdf"))
    assert result["clip_threshold"]["threshold"] == threshold
    expected = [
        min(r["width"], r["height"]) >= 10  # the override, not the preset's 200
        and max(r["width"], r["height"]) <= 3 * min(r["width"], r["height"])
        and r["caption_words"] >= 3
        and r["caption_chars"] >= 6
        and r["clip_score"] >= threshold
        for r in rows
    ]
    assert [r["passes_curation"] for r in rows] == expected
    assert result["passed"] == sum(expected) and 0 < sum(expected) < len(rows)
    with pytest.raises(UsageError, match="unknown preset"):
        ds.save_metadata(out, preset="laion")
