"""The example DAG with a real Airflow: imports cleanly, curates a generated dataset end to end in
local mode over several mapped groups, reruns without redoing work, and backfills a dated drop."""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from airflow_curator.core.wds.naming import record_id
from tests.dags.dagrun import BACKFILL_DATE, REPO

DAG_FILE = os.path.join(REPO, "dags", "curate_image_text_pairs.py")
CLI_PARAMS = {
    "dataset",
    "output",
    "execution",
    "model",
    "weights",
    "aesthetic_weights",
    "nsfw_weights",
    "min_aesthetic",
    "max_nsfw",
    "min_clip_score",
    "require",
    "filter_column",
    "samples_per_shard",
    "gpus",
    "dedup",
}


@pytest.fixture(scope="session")
def report(tmp_path_factory):
    """One process, one migrated SQLite Airflow, three DAG runs (see dagrun.py)."""
    work = tmp_path_factory.mktemp("dagrun")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.dags.dagrun", str(work)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(work / "report.json") as f:
        return json.load(f)


def tasks(run: dict, task_id: str) -> list[list]:
    return [t for t in run["tasks"] if t[0] == task_id]


def load_dag_module():
    spec = importlib.util.spec_from_file_location("curate_dag", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = [pytest.mark.integration]


@pytest.mark.slow
def test_dag_imports_and_has_cli_named_params(report):
    assert report["import_errors"] == {}
    assert set(report["params"]) >= CLI_PARAMS


@pytest.mark.slow
def test_first_run_curates_over_mapped_groups(report):
    run = report["first"]
    assert run["state"] == "success", run["tasks"]
    assert all(t[2] == "success" for t in run["tasks"]), run["tasks"]
    for step in ("index", "annotate", "save_metadata"):
        mapped = tasks(run, step)
        assert [t[3] for t in mapped] == ["shards 00000", "shards 00001", "shards 00002"]
    plan = run["xcom"]["plan_reshard[-1].result"]
    kept = sum(run["xcom"][f"save_metadata[{i}].return_value"]["passed"] for i in range(3))
    assert 0 < plan["records"] == kept < len(report["ids"])
    assert len(tasks(run, "reshard")) == plan["output_shards"] >= 2
    commit = run["xcom"]["commit[-1].return_value"]
    assert commit["records"] == kept and commit["shards"] == plan["output_shards"]
    # the curated dataset on storage, not just what the XComs say
    out = run["output"]
    names = sorted(run["files"])
    stems = [f"{i:05d}" for i in range(commit["shards"])]
    assert names == sorted(
        [f"{s}.{e}" for s in stems for e in ("idx", "parquet", "tar")]
        + ["_SUCCESS", "_manifest.json", "report.html", "sizes.json"]
    )
    rows = sum(pq.read_metadata(os.path.join(out, f"{s}.parquet")).num_rows for s in stems)
    assert rows == kept
    with tarfile.open(os.path.join(out, f"{stems[0]}.tar")) as tar:
        keys = {m.name.split(".")[0] for m in tar.getmembers()}
    assert keys == {record_id(0, i, 2, 5) for i in range(len(keys))}  # samples_per_shard=2


@pytest.mark.slow
def test_dedup_stage_drops_the_planted_duplicate(report):
    run = report["first"]
    for step in ("dedup_fit", "dedup_assign", "dedup_hash", "dedup", "dedup_result"):
        assert tasks(run, step) and all(t[2] == "success" for t in tasks(run, step)), step
    meta = pq.read_table(os.path.join(run["output"], "_work", "metadata", "00002.parquet"))
    rows = {r["key"]: r for r in meta.to_pylist()}
    assert rows["000020001"]["is_unique"] is False
    assert rows["000020001"]["duplicate_of"] == "000000000"
    assert rows["000020001"]["passes_curation"] is False
    out = pq.read_table(os.path.join(run["output"], "_work", "metadata", "00000.parquet"))
    assert {r["key"]: r["is_unique"] for r in out.to_pylist()}["000000000"] is True


@pytest.mark.slow
def test_report_task_writes_and_links_the_page(report):
    run = report["first"]
    result = run["xcom"]["report[-1].return_value"]
    out = run["output"]
    assert result["report"] == os.path.join(out, "report.html")
    assert result["output_records"] == run["xcom"]["commit[-1].return_value"]["records"]
    assert result["records"] == len(report["ids"])
    with open(os.path.join(out, "_work", "run.json")) as f:
        record = json.load(f)
    assert record["params"]["min_clip_score"] == 0.0
    assert len(record["steps"]["annotate"]) == 3 and record["steps"]["commit"][0]["records"] > 0
    with open(result["report"], encoding="utf-8") as f:
        page = f.read()
    assert "min 0" in page and page.count('src="data:image/jpeg;base64,') >= 6
    assert "<td>annotate</td><td>3</td>" in page and "<td>save_metadata</td>" in page


@pytest.mark.slow
def test_run_emits_the_asset_event_with_counts(report):
    run = report["first"]
    (event,) = run["asset_events"]
    assert event["name"] == "curated_image_text_pairs"
    commit = run["xcom"]["commit[-1].return_value"]
    assert event["extra"]["records"] == commit["records"] > 0
    assert event["extra"]["shards"] == commit["shards"]
    assert event["extra"]["output"] == run["output"]


@pytest.mark.slow
def test_rerun_redoes_nothing_and_changes_no_byte(report):
    first, rerun = report["first"], report["rerun"]
    assert rerun["state"] == "success"
    for i in range(3):
        assert rerun["xcom"][f"index[{i}].return_value"]["written"] == 0
        annotated = rerun["xcom"][f"annotate[{i}].return_value"]
        assert annotated["annotated"] == 0 and annotated["skipped"] == 1
    # report.html describes each run (its task times and XComs); the dataset must not change,
    # not even its files' times: nothing that was done is redone
    same = {name: v for name, v in first["files"].items() if name != "report.html"}
    assert {n: v for n, v in rerun["files"].items() if n != "report.html"} == same
    assert rerun["xcom"]["plan_reshard[-1].result"]["records"] > 0
    assert (
        rerun["xcom"]["commit[-1].return_value"]["records"]
        == (first["xcom"]["commit[-1].return_value"]["records"])
    )


@pytest.mark.slow
def test_backfill_run_reads_the_dated_drop(report):
    run = report["backfill"]
    assert run["state"] == "success", run["tasks"]
    discovered = run["xcom"]["discover[-1].result"]
    assert discovered["dataset"].endswith(os.path.join("drops", BACKFILL_DATE))
    assert discovered["records"] == len(report["backfill_ids"])
    assert run["output"].endswith(os.path.join("curated", BACKFILL_DATE))
    assert "_SUCCESS" in run["files"]
    (event,) = run["asset_events"]
    assert event["extra"]["output"] == run["output"]


def test_dataset_falls_back_to_the_run_date_without_a_logical_date():
    module = load_dag_module()
    env = module.dag.get_template_env()
    params = {"dataset": "", "output": "", "drops": "gs://b/drops", "curated": "gs://b/cur"}
    run_after = datetime.datetime(2026, 4, 2, 6, 30, tzinfo=datetime.timezone.utc)
    manual = {"params": params, "dag_run": SimpleNamespace(run_after=run_after)}  # no ds
    assert env.from_string(module.DATASET).render(manual) == "gs://b/drops/2026-04-02"
    assert env.from_string(module.OUTPUT).render(manual) == "gs://b/cur/2026-04-02"
    scheduled = {**manual, "ds": "2026-03-01"}
    assert env.from_string(module.DATASET).render(scheduled) == "gs://b/drops/2026-03-01"
    chosen = {**manual, "params": {**params, "dataset": "/data/x", "output": "/data/y"}}
    assert env.from_string(module.DATASET).render(chosen) == "/data/x"
    assert env.from_string(module.OUTPUT).render(chosen) == "/data/y"


def test_params_validate_form_input():
    from airflow.sdk.definitions.param import ParamValidationError

    params = load_dag_module().dag.params
    for name, bad in (
        ("execution", "ray"),
        ("max_nsfw", 1.5),
        ("samples_per_shard", 0),
        ("filter_column", "drop table"),
        ("require", ["drop table"]),
    ):
        with pytest.raises(ParamValidationError):
            params.get_param(name).resolve(bad)
    assert params.get_param("min_clip_score").resolve(None) is None
    assert params.get_param("gpus").resolve(2) == 2
    assert params.get_param("require").resolve(["labelled"]) == ["labelled"]


def test_every_task_renders_a_valid_pod_in_kubernetes_mode():
    import kubernetes_validate
    from kubernetes.client import ApiClient

    from airflow_curator.operators.base import GPU_RESOURCE, XCOM_RESULT, CuratorOperator

    dag = load_dag_module().dag
    params = {k: dag.params[k] for k in dag.params}
    params.update(execution="kubernetes", model="ViT-B-32", gpus=2, min_clip_score=0.3)
    groups = (
        {"shards": "0-3", "label": "00000-00003"},
        {"outputs": "0", "label": "00000"},
        {"clusters": "0-9", "label": "00000-00009"},
    )
    context = {"params": params, "ds": "2026-03-01", "dag_run": SimpleNamespace(run_after=None)}
    steps = {}
    for task in dag.tasks:
        if hasattr(task, "unmap"):  # mapped: what the worker builds for one group
            group = {"reshard": groups[1], "dedup": groups[2]}.get(task.task_id, groups[0])
            task = task.unmap({"shard_group": group})
        assert isinstance(task, CuratorOperator)
        task.render_template_fields({**context, "task": task})
        assert task.execution_mode() == "kubernetes"
        pod = ApiClient().sanitize_for_serialization(task.build_pod_request_obj(dry_run=True))
        kubernetes_validate.validate(
            pod, desired_version=kubernetes_validate.latest_version(), strict=True
        )
        args = pod["spec"]["containers"][0]["args"]
        assert args[-2:] == ["--result-json", XCOM_RESULT]
        steps[args[0]] = (args, pod["spec"]["containers"][0].get("resources") or {})
    assert set(steps) == {
        "discover",
        "index",
        "annotate",
        "save-metadata",
        "plan-reshard",
        "reshard",
        "commit",
        "report",
        "dedup-fit",
        "dedup-assign",
        "dedup-hash",
        "dedup",
        "dedup-result",
    }
    annotate, resources = steps["annotate"]
    assert resources["limits"][GPU_RESOURCE] == "2"
    assert annotate[annotate.index("--dataset") + 1] == params["drops"] + "/2026-03-01"
    assert annotate[annotate.index("--shards") + 1] == "0-3"
    assert "--weights" not in annotate  # an empty form field: the model's pinned weights
    merge = steps["save-metadata"][0]
    assert merge[merge.index("--min-clip-score") + 1] == "0.3"
    assert "--min-aesthetic" not in merge
    assert steps["reshard"][0][steps["reshard"][0].index("--outputs") + 1] == "0"
