from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from airflow_curator.core.dataset.save_metadata import join_annotations
from airflow_curator.runtime.argv import build_argv
from airflow_curator.runtime.cli import main


def run_step(step: str, options: dict, result) -> dict:
    """The step's argv as an operator builds it, through the CLI entry point (in-process)."""
    assert main(build_argv(step, options, result_json=str(result))) == 0
    return json.loads(result.read_text())


def write_annotations(out, ids: list[str]) -> None:
    """Random embeddings; record 3 of shard 1 is a near copy of record 0 of shard 0."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((len(ids), 24)).astype(np.float32)
    x[9] = x[0] + 0.01 * rng.standard_normal(24)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    folder = out / "_work" / "annotations"
    folder.mkdir(parents=True)
    for s in range(2):
        rows = [i for i, rid in enumerate(ids) if rid.startswith(f"{s:05d}")]
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x[rows].reshape(-1)), 24)
        table = pa.table({
            "key": [ids[i] for i in rows],
            "image_embedding": emb,
            "aesthetic_score": pa.array([5.0] * len(rows), pa.float32()),
        })  # fmt: skip
        pq.write_table(table, folder / f"{s:05d}.parquet")


def test_dedup_stage_through_the_cli(demo_dataset, tmp_path):
    path, ids = demo_dataset
    out = tmp_path / "out"
    write_annotations(out, ids)
    o = str(out)
    fit = run_step(
        "dedup-fit",
        {"output": o, "n_clusters": 4, "cluster_groups": 2, "seed": 1, "device": "cpu"},
        tmp_path / "fit.json",
    )
    assert fit["n_clusters"] == 4 and len(fit["groups"]) == 2
    for spec in ("0", "1"):  # one task per discovery group
        a = run_step("dedup-assign", {"output": o, "shards": spec}, tmp_path / "a.json")
        assert a["shards"] == 1 and a["records"] == 6
        h = run_step(
            "dedup-hash", {"dataset": path, "output": o, "shards": spec}, tmp_path / "h.json"
        )
        assert h["records"] == 6
    dups = 0
    for group in fit["groups"]:  # one task per cluster group
        d = run_step(
            "dedup",
            {"output": o, "clusters": group["clusters"], "exact": "on"},
            tmp_path / "d.json",
        )
        dups += d["semantic"]
    assert dups == 1
    res = run_step("dedup-result", {"output": o, "shards": "0-1"}, tmp_path / "r.json")
    assert res["duplicates"] == 1 and res["records"] == 12
    assert res["examples"][0]["id"] == ids[9] and res["examples"][0]["duplicate_of"] == ids[0]

    # the result folder is an annotations folder: save-metadata's join takes it as is
    base = pq.read_table(f"{path}/00001.parquet")
    table = join_annotations(base, pq.read_table(f"{res['result']}/00001.parquet"), "key", "00001")
    assert table["key"].to_pylist() == ids[6:]
    assert table["is_unique"].to_pylist() == [True, True, True, False, True, True]
    assert table["duplicate_of"].to_pylist()[3] == ids[0]


def test_dedup_errors_are_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "airflow_curator.runtime.cli", "dedup", "--output", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2  # run the steps in order: the request is wrong
    assert proc.stderr.strip().splitlines() == [
        f"airflow-curator dedup: error: {tmp_path}/_work/dedup/centroids.parquet does not exist: "
        "run dedup-fit first"
    ]
