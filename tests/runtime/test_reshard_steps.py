from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_curator.runtime.argv import build_argv
from airflow_curator.testing.dataset import write_demo_dataset
from tests.core.dataset.test_save_metadata import write_annotations


def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow_curator.runtime.cli", *argv], capture_output=True, text=True
    )


def result_of(proc: subprocess.CompletedProcess, path) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(path.read_text())


def test_save_metadata_plan_reshard_commit_through_the_cli(tmp_path):
    src = str(tmp_path / "in")
    ids = write_demo_dataset(src, shards=3, records_per_shard=6, image_bytes=200)
    out = tmp_path / "out"
    work = out / "_work"
    write_annotations(str(work / "annotations"), src, seed=2, error_ids={ids[0]})
    res = tmp_path / "r.json"
    merged = result_of(
        cli(
            *build_argv(
                "save-metadata",
                {
                    "dataset": src,
                    "annotations": str(work / "annotations"),
                    "path": str(work / "metadata"),
                    "min_aesthetic": 4.0,
                    "columns": "caption,aesthetic_score",
                    "shards": "0-2",
                },
                result_json=str(res),
            )
        ),
        res,
    )
    assert merged["records"] == 18 and 0 < merged["passed"] < 18
    assert merged["columns"] == ["key", "caption", "aesthetic_score", "passes_curation"]
    plan = result_of(
        cli(
            *build_argv(
                "plan-reshard",
                {
                    "dataset": src,
                    "output": str(out),
                    "metadata": str(work / "metadata"),
                    "samples_per_shard": 2,
                    "old_id_col": "old_key",
                    "group_bytes": 1000,
                },
                result_json=str(res),
            )
        ),
        res,
    )
    assert plan["records"] == merged["passed"]
    groups = plan["groups"]
    assert len(groups) >= 2 and sum(g["count"] for g in groups) == plan["output_shards"]
    for g in reversed(groups):  # mapped tasks: any order
        argv = build_argv("reshard", {"plan": g["plan"], "outputs": g["outputs"]})
        done = result_of(cli(*argv, "--result-json", str(res)), res)
        assert done["shards"] == g["count"] and done["records"] == g["records"]
    committed = result_of(cli("commit", "--plan", plan["plan"], "--result-json", str(res)), res)
    assert committed["records"] == plan["records"] and (out / "_SUCCESS").exists()
    table = pq.read_table(out / "00000.parquet")
    assert table.column_names == ["key", "caption", "aesthetic_score", "passes_curation", "old_key"]
    assert all(table["passes_curation"].to_pylist())
    assert ids[0] not in table["old_key"].to_pylist()  # a failed annotation never passes


def test_to_webdataset_in_one_process_writes_what_the_three_steps_write(tmp_path):
    src = str(tmp_path / "in")
    write_demo_dataset(src, shards=3, records_per_shard=5, image_bytes=300)
    keep = {"keep": lambda i: i % 3 != 0}
    for n in sorted(os.listdir(src)):
        if n.endswith(".parquet"):
            t = pq.read_table(os.path.join(src, n))
            flags = [keep["keep"](int(k)) for k in t["key"].to_pylist()]
            pq.write_table(t.append_column("keep", pa.array(flags)), os.path.join(src, n))
    options = ["--filter-column", "keep", "--samples-per-shard", "4", "--old-id-col", "old"]
    one, three = tmp_path / "one", tmp_path / "three"
    res = tmp_path / "r.json"
    done = result_of(
        cli("to-webdataset", "--dataset", src, "--output", str(one), *options,
            "--workers", "2", "--no-direct-io", "--result-json", str(res)),
        res,
    )  # fmt: skip
    assert done["records"] == 10 and done["shards"] == 3 and done["input_records"] == 15
    assert (one / "_SUCCESS").exists()
    plan = result_of(
        cli("plan-reshard", "--dataset", src, "--output", str(three), *options,
            "--result-json", str(res)),
        res,
    )  # fmt: skip
    assert cli("reshard", "--plan", plan["plan"]).returncode == 0
    assert cli("commit", "--plan", plan["plan"]).returncode == 0
    shards = sorted(n for n in os.listdir(one) if n[0].isdigit())
    assert len(shards) == 9 and shards == sorted(n for n in os.listdir(three) if n[0].isdigit())
    for n in shards:
        assert (one / n).read_bytes() == (three / n).read_bytes(), n
    proc = cli("to-webdataset", "--dataset", src, "--output", str(tmp_path / "x"))
    assert proc.returncode == 1 and "no column 'passes_curation'" in proc.stderr


def test_errors_are_one_line_with_exit_codes(tmp_path):
    src = str(tmp_path / "in")
    write_demo_dataset(src, shards=1, records_per_shard=3, image_bytes=10)
    proc = cli("plan-reshard", "--dataset", src, "--output", str(tmp_path / "o"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "airflow-curator plan-reshard: error: shard 00000: "
        f"{os.path.join(src, '00000.parquet')} has no column 'passes_curation' "
        "(columns: key, caption, url, width, height)"
    )
    proc = cli("reshard", "--plan", str(tmp_path / "nope.json"))
    assert proc.returncode == 2 and "run plan-reshard first" in proc.stderr
    proc = cli("save-metadata", "--dataset", src, "--annotations", str(tmp_path / "none"))
    assert proc.returncode == 1 and "shard 00000: annotations" in proc.stderr
    proc = cli("plan-reshard", "--dataset", src, "--output", src)
    assert proc.returncode == 2 and "is the input dataset" in proc.stderr


@pytest.mark.slow
def test_benchmark_runs_tiny(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(root, "benchmarks", "bench_reshard.py"),
            *("--records", "40", "--image-bytes", "300", "--samples-per-shard", "7"),
            *("--repeat", "1", "--dir", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ours vs cp throughput" in proc.stdout
    assert "ours vs webdataset library" in proc.stdout
