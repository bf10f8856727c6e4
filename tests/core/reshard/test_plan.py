"""Planning: which kept rows can be written, and what the plan says about the others."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_curator.core.errors import ShardError
from airflow_curator.core.reshard.plan import FAILED_DOWNLOAD, plan_reshard
from airflow_curator.core.reshard.writer import reshard_dataset
from airflow_curator.testing.img2dataset import write_img2dataset_like


def _user_column(folder: str, name: str, keep=lambda row: True) -> None:
    """A boolean column of the user's own in every shard's Parquet."""
    for f in sorted(os.listdir(folder)):
        if f.endswith(".parquet"):
            table = pq.read_table(os.path.join(folder, f))
            values = [keep(r) for r in table.to_pylist()]
            pq.write_table(
                table.append_column(name, pa.array(values, pa.bool_())), os.path.join(folder, f)
            )


def test_failed_downloads_a_user_column_keeps_are_skipped_and_counted(tmp_path):
    src = str(tmp_path / "in")
    shards = write_img2dataset_like(src, shards=2, per_shard=100)
    _user_column(src, "mine")  # true for every row, failed downloads included
    failed = sum(len(s.failed) for s in shards.values())
    written = sum(len(s.images) for s in shards.values())
    result = reshard_dataset(src, str(tmp_path / "out"), "mine", samples_per_shard=5)
    assert result["records"] == written
    assert result["not_written"] == {FAILED_DOWNLOAD: failed}
    out_ids = {
        k
        for f in sorted(os.listdir(tmp_path / "out"))
        if f.endswith(".parquet")
        for k in pq.read_table(tmp_path / "out" / f)["key"].to_pylist()
    }
    assert len(out_ids) == written

    from airflow_curator.core import layout
    from airflow_curator.core.dataset.discovery import discover, save_manifest
    from airflow_curator.core.report.page import write_report

    save_manifest(discover(src), layout.manifest_url(str(tmp_path / "out")))
    report = write_report(str(tmp_path / "out"), metadata=src)
    assert f"{failed} kept records not written: {FAILED_DOWNLOAD}" in report["notes"]


def test_a_kept_row_missing_from_the_tar_without_a_failed_status_is_an_error(tmp_path):
    src = str(tmp_path / "in")
    shards = write_img2dataset_like(src, shards=1, per_shard=100)
    lost = shards["00000"].failed[0]
    _user_column(src, "mine")
    target = os.path.join(src, "00000.parquet")
    table = pq.read_table(target)
    status = [
        "success" if k == lost else s
        for k, s in zip(table["key"].to_pylist(), table["status"].to_pylist())
    ]
    table = table.set_column(table.schema.get_field_index("status"), "status", pa.array(status))
    pq.write_table(table, target)
    plan = plan_reshard(src, str(tmp_path / "out"), "mine")
    assert plan["not_written"] == {FAILED_DOWNLOAD: len(shards["00000"].failed) - 1}
    with pytest.raises(ShardError, match=f"shard 00000: 1 kept records are not in the tar: {lost}"):
        reshard_dataset(src, str(tmp_path / "out"), "mine")
