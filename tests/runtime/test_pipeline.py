"""Every step of the command line in job order, on shards named with more than five digits.

Discovery takes shard names of any width; every later step must name its work files by the
shard's own stem (a dedup step that assumed ``00000`` once failed save-metadata there, and made
exact dedup keep the lowest id instead of the best-scored copy)."""

from __future__ import annotations

import hashlib
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_curator.core import layout
from airflow_curator.runtime.argv import build_argv
from airflow_curator.runtime.cli import main
from airflow_curator.testing.dataset import write_demo_dataset

pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from airflow_curator.testing.models import write_tiny_models

    return write_tiny_models(str(tmp_path_factory.mktemp("tiny")))


def step(name: str, tmp_path, **options) -> dict:
    """One step through the CLI entry point, its argv built as the operators build it."""
    result = tmp_path / f"{name}.json"
    assert main(build_argv(name, options, result_json=str(result))) == 0, name
    out = json.loads(result.read_text())
    assert out["seconds"] >= 0, name  # every step's result has one shape (core.stats)
    assert isinstance(out.get("records"), int) == ("records_per_s" in out), name
    return out


def plant_exact_duplicate(dataset: str, annotations: str, stems: list[str]) -> tuple[str, str]:
    """Give two records of different shards the same ``sha256`` (img2dataset's column), the
    lower id the lower aesthetic score: exact dedup must keep the higher-scored one."""
    scores: dict[str, float] = {}
    for stem in stems:
        t = pq.read_table(os.path.join(annotations, f"{stem}.parquet"))
        scores.update(zip(t["key"].to_pylist(), t["aesthetic_score"].to_pylist()))
    first = sorted(k for k in scores if k.startswith(stems[0]))
    second = sorted(k for k in scores if k.startswith(stems[1]))
    low, high = next((a, b) for a in first for b in second if scores[b] > scores[a])
    for stem in stems:
        target = os.path.join(dataset, f"{stem}.parquet")
        t = pq.read_table(target)
        digests = [
            hashlib.sha256((high if k == low else k).encode()).hexdigest()
            for k in t["key"].to_pylist()
        ]
        pq.write_table(t.append_column("sha256", pa.array(digests)), target)
    return low, high


@pytest.mark.parametrize("digits", [6, 7])
def test_every_step_on_wide_shard_names(tmp_path, tiny, digits):
    dataset, out = str(tmp_path / "in"), str(tmp_path / "out")
    ids = write_demo_dataset(dataset, shards=2, records_per_shard=5, max_shards=digits, seed=2)
    stems = sorted({i[:digits] for i in ids})
    assert [len(s) for s in stems] == [digits, digits]
    manifest = layout.manifest_url(out)
    found = step("discover", tmp_path, dataset=dataset, manifest=manifest)
    assert [g["label"] for g in found["groups"]] == [f"{stems[0]}-{stems[1]}"]
    assert step("index", tmp_path, dataset=dataset)["written"] == 2
    annotated = step(
        "annotate", tmp_path, dataset=dataset, output=out, model=tiny["model"],
        weights=tiny["weights"], aesthetic_weights=tiny["aesthetic_weights"],
        nsfw_weights=tiny["nsfw_weights"], device="cpu", batch_size=4,
    )  # fmt: skip
    assert annotated["records"] == 10 and annotated["failed"] == 0
    low, high = plant_exact_duplicate(dataset, layout.annotations_url(out), stems)

    fit = step("dedup-fit", tmp_path, output=out, n_clusters=2, cluster_groups=2, device="cpu")
    step("dedup-assign", tmp_path, output=out, shards="0-1", device="cpu")
    hashed = step("dedup-hash", tmp_path, dataset=dataset, output=out, shards="0-1")
    assert {s["source"] for s in hashed["per_shard"]} == {"parquet"}
    for group in fit["groups"]:
        step("dedup", tmp_path, output=out, clusters=group["clusters"], eps=0, exact="on")
    result = step("dedup-result", tmp_path, output=out, shards="0-1")
    assert result["exact"] == 1
    dedup_files = sorted(os.listdir(layout.dedup_result_url(out)))
    assert dedup_files == [f"{s}.parquet" for s in stems]
    marks = pq.read_table(os.path.join(layout.dedup_result_url(out), f"{stems[0]}.parquet"))
    unique = dict(zip(marks["key"].to_pylist(), marks["is_unique"].to_pylist()))
    assert unique[low] is False  # the best-scored copy is kept, not the lowest id
    assert dict(zip(marks["key"].to_pylist(), marks["duplicate_of"].to_pylist()))[low] == high

    merged = step(
        "save-metadata", tmp_path, dataset=dataset, path=layout.metadata_url(out),
        annotations=[layout.annotations_url(out), layout.dedup_result_url(out)],
        require=["is_unique"],
    )  # fmt: skip
    kept = 10 - result["duplicates"]
    assert merged["passed"] == kept and merged["shards"] == 2
    plan = step(
        "plan-reshard", tmp_path, dataset=dataset, output=out, metadata=layout.metadata_url(out),
        samples_per_shard=4, max_shards=digits, old_id_col="old_key",
    )  # fmt: skip
    assert plan["records"] == kept
    for group in plan["groups"]:
        step("reshard", tmp_path, plan=plan["plan"], outputs=group["outputs"])
    committed = step("commit", tmp_path, plan=plan["plan"])
    assert committed["records"] == kept
    names = sorted(n for n in os.listdir(out) if n.endswith(".tar"))
    assert names == [f"{i:0{digits}d}.tar" for i in range(plan["output_shards"])]
    old = {
        k
        for n in names
        for k in pq.read_table(os.path.join(out, n[:-4] + ".parquet"))["old_key"].to_pylist()
    }
    assert low not in old and high in old
    report = step("report", tmp_path, output=out)
    assert report["kept"] == kept and os.path.exists(report["report"])
