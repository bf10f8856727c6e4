"""The example DAG in local mode on gs:// (the session's fake-gcs-server) writes the bytes a local
run writes (issue 20). ``airflow dags test`` runs every task, mapped groups and XComs included,
in one process against a fresh metadata database: no deployment, the steps as local
subprocesses that reach the emulator through STORAGE_EMULATOR_HOST."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from airflow_curator.testing.gcs import download_tree
from tests.dags.deployment import DAG_ID, Deployment
from tests.runtime.test_gcs import comparable

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def dags_test(dep: Deployment, date: str, conf: dict[str, object]) -> None:
    proc = dep.airflow("dags", "test", DAG_ID, date, "--conf", json.dumps(conf), timeout=1200)
    log = proc.stdout + proc.stderr
    # the run's final state, as the command logs it when the run ends
    assert "DagRun Finished" in log and "state=success" in log.split("DagRun Finished")[-1], log[
        -5000:
    ]


def untimed(doc: Any) -> Any:
    """A run record without the run's id and what each step's timing says."""
    if isinstance(doc, dict):
        drop = ("run_id", "seconds", "started", "ended")
        return {k: untimed(v) for k, v in doc.items() if k not in drop and "per_s" not in k}
    if isinstance(doc, list):
        return [untimed(v) for v in doc]
    return doc


def parquet_named(path: Path, where: str) -> tuple[object, dict[bytes, bytes]]:
    """A Parquet file's rows and its metadata with the root it names as ROOT (dedup's
    provenance names the annotation file it read)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = {k: v.replace(where.encode(), b"ROOT") for k, v in (table.schema.metadata or {}).items()}
    return table.replace_schema_metadata(None).to_pylist(), meta


def test_dag_in_local_mode_on_gs_writes_the_bytes_of_a_local_run(gcs_emulator, tmp_path):
    from airflow_curator.core.report.data import gather
    from airflow_curator.testing.dataset import write_demo_dataset
    from airflow_curator.testing.models import write_tiny_models

    local = tmp_path / "local"
    write_demo_dataset(str(local / "in"), shards=2, records_per_shard=6, seed=3)
    models = write_tiny_models(str(tmp_path / "models"))
    bucket = gcs_emulator.new_bucket("dag")
    gcs_emulator.upload(str(local / "in"), f"{bucket}/in")
    dep = Deployment(str(tmp_path / "airflow-work"))  # its environment: STORAGE_EMULATOR_HOST
    dep.airflow("db", "migrate")
    params = {
        **{k: models[k] for k in ("model", "weights", "aesthetic_weights", "nsfw_weights")},
        "execution": "local",
        "device": "cpu",
        "min_clip_score": 0.0,
        "clip_score_top_fraction": 0.75,  # the clip_threshold task
        "min_caption_words": 3,
        "samples_per_shard": 4,
        "dedup_clusters": 2,
        "dedup_eps": 1e-6,
    }
    for date, where in (("2026-03-02", str(local)), ("2026-03-03", bucket)):
        dags_test(dep, date, {**params, "dataset": f"{where}/in", "output": f"{where}/out"})
    remote = tmp_path / "remote"
    download_tree(bucket, str(remote))
    want = comparable(local, str(local))
    got = comparable(remote, bucket)
    assert "out/_SUCCESS" in want and "out/_work/dedup/result/00000.parquet" in want
    assert sorted(got) == sorted(want)
    differ = [p for p in want if want[p] != got[p]]
    for rel in [p for p in differ if p.endswith(".parquet")]:
        assert parquet_named(local / rel, str(local)) == parquet_named(remote / rel, bucket), rel
    run = "out/_work/run.json"
    assert untimed(got[run]) == untimed(want[run])
    # the report page shows each step's time: its figures are compared, read back from each
    assert sorted(p for p in differ if not p.endswith(".parquet")) == [run, "out/report.html"]
    a, b = gather(f"{local}/out"), gather(f"{bucket}/out")
    assert (a.totals, a.funnel, a.languages) == (b.totals, b.funnel, b.languages)
    assert a.totals["kept"] and a.totals["duplicates"] is not None
    for hists in ("histograms", "pair_histograms"):
        totals = [{k: h.total for k, h in getattr(d, hists).items()} for d in (a, b)]
        assert totals[0] == totals[1] and any(totals[0].values()), hists
