"""The example DAG on a real Airflow deployment (tests/dags/curation.py): a REST trigger with an
empty conf curates the dated drop over mapped groups, a rerun redoes nothing, a REST backfill
curates two drops and fails the date without a drop at once; plus the DAG file's own checks."""

from __future__ import annotations

import datetime
import importlib.util
import os
import re
import tarfile
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from airflow_curator.core.wds.naming import record_id
from tests.dags.curation import BACKFILL_DATES, MISSING_DATE, TRIGGER_DATE, report_url
from tests.dags.deployment import REPO

DAG_FILE = os.path.join(REPO, "dags", "curate_image_text_pairs.py")
CLI_PARAMS = {
    "dataset",
    "output",
    "execution",
    "model",
    "weights",
    "weights_sha256",
    "aesthetic_weights",
    "aesthetic_sha256",
    "nsfw_weights",
    "nsfw_sha256",
    "min_aesthetic",
    "max_nsfw",
    "min_clip_score",
    "require",
    "filter_column",
    "samples_per_shard",
    "gpus",
    "dedup",
    "allow_empty",
    "clip_score_top_fraction",
    "preset",
    "min_image_side",
    "max_aspect_ratio",
    "min_caption_words",
    "min_caption_chars",
    "caption_languages",
    "min_language_score",
}


def load_dag_module():
    spec = importlib.util.spec_from_file_location("curate_dag", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def states(run) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for t in run.tasks:
        out.setdefault(t["task_id"], []).append(t["state"])
    return out


@pytest.mark.integration
@pytest.mark.slow
def test_empty_conf_trigger_curates_the_dated_drop(curation):
    run = curation.trigger
    assert run.state == "success", states(run)
    assert all(t["state"] == "success" for t in run.tasks), states(run)
    discovered = curation.xcom(run, "discover", "result")
    assert discovered["dataset"] == f"{curation.drops}/{TRIGGER_DATE}"
    assert discovered["records"] == len(curation.ids[TRIGGER_DATE])
    assert run.output == f"{curation.curated}/{TRIGGER_DATE}"
    conf = curation.deployment.run(run.run_id)["conf"]
    assert conf == {}  # the roots and models came from CURATOR_DROPS/_CURATED/_PARAMS
    for step in ("index", "annotate", "save_metadata"):
        assert [t["rendered_map_index"] for t in run.of(step)] == ["shards 00000", "shards 00001"]


@pytest.mark.integration
@pytest.mark.slow
def test_mapped_groups_make_the_curated_dataset(curation):
    run = curation.trigger
    plan = curation.xcom(run, "plan_reshard", "result")
    kept = sum(curation.xcom(run, "save_metadata", map_index=i)["passed"] for i in range(2))
    assert 0 < plan["records"] == kept < len(curation.ids[TRIGGER_DATE])
    assert len(run.of("reshard")) == plan["output_shards"] >= 2
    commit = curation.xcom(run, "commit")
    assert commit["records"] == kept and commit["shards"] == plan["output_shards"]
    stems = [f"{i:05d}" for i in range(commit["shards"])]
    assert sorted(run.files) == sorted(
        [f"{s}.{e}" for s in stems for e in ("idx", "parquet", "tar")]
        + ["_SUCCESS", "_manifest.json", "report.html", "sizes.json"]
    )
    rows = sum(pq.read_metadata(os.path.join(run.output, f"{s}.parquet")).num_rows for s in stems)
    assert rows == kept
    with tarfile.open(os.path.join(run.output, f"{stems[0]}.tar")) as tar:
        keys = {m.name.split(".")[0] for m in tar.getmembers()}
    assert keys == {record_id(0, i, 6, 5) for i in range(len(keys))}  # samples_per_shard=6


@pytest.mark.integration
@pytest.mark.slow
def test_dedup_stage_drops_the_planted_duplicate(curation):
    run = curation.trigger
    meta = pq.read_table(os.path.join(run.output, "_work", "metadata", "00001.parquet"))
    rows = {r["key"]: r for r in meta.to_pylist()}
    assert rows["000010001"]["is_unique"] is False
    assert rows["000010001"]["duplicate_of"] == "000000000"
    assert rows["000010001"]["passes_curation"] is False


@pytest.mark.integration
@pytest.mark.slow
def test_report_task_records_and_links_the_page(curation):
    run = curation.trigger
    result = curation.xcom(run, "report")
    assert result["report"] == os.path.join(run.output, "report.html")
    assert curation.xcom(run, "report", "curation_report") == result["report"]
    assert result["records"] == len(curation.ids[TRIGGER_DATE])
    link = report_url(curation.deployment, run.run_id)
    assert link.startswith("/curator/reports/curate_image_text_pairs/")  # same origin as the UI


@pytest.mark.integration
@pytest.mark.slow
def test_run_emits_the_asset_event_with_counts(curation):
    dep, run = curation.deployment, curation.trigger
    events = dep.api("GET", "/assets/events?limit=100")["asset_events"]
    mine = [e for e in events if e["source_run_id"] == run.run_id]
    assert len(mine) == 2  # the run's commit, and the rerun's (the same dataset again)
    commit = curation.xcom(run, "commit")
    for event in mine:
        assert event["extra"]["records"] == commit["records"] > 0
        assert event["extra"]["output"] == run.output


@pytest.mark.integration
@pytest.mark.slow
def test_rerun_redoes_nothing_and_changes_no_byte(curation):
    first, rerun = curation.trigger, curation.rerun
    assert rerun.state == "success", states(rerun)
    assert {t["try_number"] for t in rerun.of("annotate")} == {2}  # the cleared tasks ran again
    for i in range(2):
        assert curation.xcom(rerun, "index", map_index=i)["written"] == 0
        annotated = curation.xcom(rerun, "annotate", map_index=i)
        assert annotated["annotated"] == 0 and annotated["skipped"] == 1
    # report.html describes each run (its task times); the dataset does not change, not even
    # its files' times: nothing that was done is redone
    same = {n: v for n, v in first.files.items() if n != "report.html"}
    assert {n: v for n, v in rerun.files.items() if n != "report.html"} == same
    assert curation.xcom(rerun, "commit")["records"] == curation.xcom(first, "commit")["records"]


@pytest.mark.integration
@pytest.mark.slow
def test_report_counts_the_latest_try_of_each_mapped_task(curation):
    """After the clear, each annotate task found its shard done: the steps table still counts
    every record, as the header does (the run's first report agrees too)."""
    with open(os.path.join(curation.rerun.output, "report.html"), encoding="utf-8") as f:
        page = f.read()
    records = len(curation.ids[TRIGGER_DATE])
    assert f"<b>{records}</b>annotated" in page
    for step in ("index", "annotate", "save_metadata"):
        row = re.search(rf"<tr><td>{step}</td><td>(\d+)</td><td>(\d+)</td>", page)
        assert row and row.groups() == ("2", str(records)), step


@pytest.mark.integration
@pytest.mark.slow
def test_backfill_curates_the_drops_and_fails_the_missing_date_at_once(curation):
    dep = curation.deployment
    for day in BACKFILL_DATES:
        run = curation.backfill[day]
        if day == MISSING_DATE:
            continue
        assert run.state == "success", (day, states(run))
        dedup = {k: v for k, v in states(run).items() if k.startswith("dedup")}
        assert dedup and all(set(v) == {"skipped"} for v in dedup.values()), dedup  # conf: off
        assert curation.xcom(run, "commit")["records"] > 0
        assert "_SUCCESS" in run.files
        discovered = curation.xcom(run, "discover", "result")
        assert discovered["dataset"] == f"{curation.drops}/{day}"
        assert discovered["records"] == len(curation.ids[day])
    missing = curation.backfill[MISSING_DATE]
    assert missing.state == "failed"
    (discover,) = missing.of("discover")
    # retries=2 in the DAG: a missing folder cannot heal, so the first try is the last
    assert discover["state"] == "failed" and discover["try_number"] == 1
    assert discover["max_tries"] == 2
    log = dep.task_log(missing.run_id, "discover")
    assert f"dataset folder {curation.drops}/{MISSING_DATE} does not exist" in log
    assert {t["state"] for t in missing.tasks if t["task_id"] != "discover"} == {"upstream_failed"}
    assert not os.path.exists(os.path.join(curation.curated, MISSING_DATE, "_SUCCESS"))
    backfill = dep.wait_for(
        lambda: (b := dep.api("GET", f"/backfills/{curation.backfill_id}"))["completed_at"] and b,
        120,
        "the backfill to be marked complete",
    )
    assert backfill["dag_id"] == "curate_image_text_pairs"


@pytest.mark.integration
@pytest.mark.slow
def test_step_warnings_keep_their_level_in_the_task_log(curation):
    dep, run = curation.deployment, curation.trigger
    path = f"/dags/curate_image_text_pairs/dagRuns/{run.run_id}/taskInstances/annotate/logs/1"
    from tests.dags.deployment import quote_run

    path = path.replace(run.run_id, quote_run(run.run_id))
    content = dep.api("GET", f"{path}?map_index=0&full_content=true")["content"]
    lines = [c for c in content if isinstance(c, dict)]
    pinned = [c for c in lines if "are not pinned" in str(c.get("event"))]
    assert pinned and {c.get("level") for c in pinned} == {"warning"}
    assert not [c for c in lines if "initialized randomly" in str(c.get("event"))]
    progress = [c for c in lines if "annotate: 1/1 shards" in str(c.get("event"))]
    assert progress and {c.get("level") for c in progress} == {"info"}


def test_dag_imports_and_has_cli_named_params():
    dag = load_dag_module().dag
    assert set(dag.params) >= CLI_PARAMS


def test_every_param_is_optional_for_the_trigger_form():
    """Airflow 3.3's form requires a field whose schema type has no "null" (isParamRequired):
    each such param must come with a value, so the form opens ready to submit."""
    params = load_dag_module().dag.params
    for name in params:
        param = params.get_param(name)
        kind = param.schema.get("type")
        nullable = isinstance(kind, list) and "null" in kind
        assert nullable or param.value not in (None, ""), name
        assert param.resolve(param.value) == param.value  # the defaults validate
    for name in ("dataset", "output", "execution", "weights", "aesthetic_weights"):
        assert params.get_param(name).value is None, name


def test_deployment_defaults_come_from_curator_params(monkeypatch):
    monkeypatch.setenv("CURATOR_PARAMS", '{"model": "ViT-B-32", "min_aesthetic": 5}')
    params = load_dag_module().dag.params
    assert params["model"] == "ViT-B-32" and params["min_aesthetic"] == 5
    monkeypatch.setenv("CURATOR_PARAMS", '{"colour": "red"}')
    with pytest.raises(ValueError, match=r"CURATOR_PARAMS: no such params \['colour'\]"):
        load_dag_module()
    monkeypatch.setenv("CURATOR_PARAMS", '{"max_nsfw": 2}')
    with pytest.raises(Exception, match="2 is greater than the maximum of 1"):
        load_dag_module()


@pytest.mark.parametrize("empty", [None, ""])
def test_dataset_falls_back_to_the_run_date_without_a_logical_date(empty):
    module = load_dag_module()
    env = module.dag.get_template_env()
    params = {"dataset": empty, "output": empty, "drops": "gs://b/drops", "curated": "gs://b/cur"}
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
        ("weights_sha256", "abc"),
        ("require", ["drop table"]),
        ("annotate_cpu", "8 cores"),
        ("annotate_memory", "32 GB"),
        ("clip_score_top_fraction", 0),
        ("clip_score_top_fraction", 1.5),
        ("preset", "laion"),
        ("caption_languages", "en;de"),
        ("min_image_side", -1),
        ("max_aspect_ratio", 0.5),
    ):
        with pytest.raises(ParamValidationError):
            params.get_param(name).resolve(bad)
    assert params.get_param("min_clip_score").resolve(None) is None
    assert params.get_param("execution").resolve(None) is None
    assert params.get_param("weights_sha256").resolve("ab" * 32) == "ab" * 32
    assert params.get_param("gpus").resolve(2) == 2
    assert params.get_param("annotate_cpu").resolve("500m") == "500m"
    assert params.get_param("annotate_memory").resolve("32Gi") == "32Gi"
    assert params.get_param("require").resolve(["labelled"]) == ["labelled"]


def test_every_task_renders_a_valid_pod_in_kubernetes_mode():
    import kubernetes_validate
    from kubernetes.client import ApiClient

    from airflow_curator.operators.base import GPU_RESOURCE, XCOM_RESULT, CuratorOperator

    dag = load_dag_module().dag
    params = {k: dag.params[k] for k in dag.params}
    params.update(execution="kubernetes", model="ViT-B-32", gpus=2, min_clip_score=0.3)
    params.update(weights_sha256="ab" * 32, spot=True, annotate_memory="40Gi")
    params.update(weights_cache_claim="clip-cache")
    params.update(clip_score_top_fraction=0.3, preset="datacomp-basic", caption_languages="en,de")
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
            task = task.unmap({"group": group})
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
        spot = pod["spec"].get("nodeSelector", {}).get("cloud.google.com/gke-spot")
        assert spot == ("true" if args[0] == "annotate" else None), args[0]  # the spot param
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
                  if "persistentVolumeClaim" in v]  # fmt: skip
        assert claims == (["clip-cache"] if args[0] == "annotate" else []), args[0]
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
        "clip-threshold",
    }
    annotate, resources = steps["annotate"]
    assert resources["limits"][GPU_RESOURCE] == "2"
    assert resources["limits"]["memory"] == resources["requests"]["memory"] == "40Gi"
    assert resources["limits"]["cpu"] == "9"  # annotate_cpu empty: 4 decoding threads/GPU + 1
    assert annotate[annotate.index("--dataset") + 1] == params["drops"] + "/2026-03-01"
    assert annotate[annotate.index("--shards") + 1] == "0-3"
    assert "--weights" not in annotate  # an empty form field: the model's pinned weights
    assert annotate[annotate.index("--weights-sha256") + 1] == "ab" * 32
    assert "--allow-empty" not in steps["discover"][0]
    merge = steps["save-metadata"][0]
    assert merge[merge.index("--min-clip-score") + 1] == "0.3"
    assert "--min-aesthetic" not in merge
    output = params["curated"] + "/2026-03-01"
    for flag, value in (
        ("--clip-score-top-fraction", "0.3"),
        ("--clip-threshold", output + "/_work/clip-threshold.json"),
        ("--preset", "datacomp-basic"),
        ("--caption-languages", "en,de"),
    ):
        assert merge[merge.index(flag) + 1] == value, flag
    assert "--min-image-side" not in merge  # null: the preset's value
    top = steps["clip-threshold"][0]
    assert top[top.index("--clip-score-top-fraction") + 1] == "0.3"
    assert top[top.index("--output") + 1] == output
    assert steps["reshard"][0][steps["reshard"][0].index("--outputs") + 1] == "0"
