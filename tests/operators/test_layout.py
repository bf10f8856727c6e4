"""The operators derive every step's paths from the one job layout the core steps write."""

from __future__ import annotations

import pytest

from airflow_curator.core import layout
from airflow_curator.operators.steps import (
    CommitOperator,
    GpuAnnotateOperator,
    IndexShardsOperator,
    PlanReshardOperator,
    ReshardOperator,
    SaveMetadataOperator,
    ShardDiscoveryOperator,
)
from airflow_curator.runtime.registry import STEPS

OPERATORS = [
    ShardDiscoveryOperator,
    IndexShardsOperator,
    GpuAnnotateOperator,
    SaveMetadataOperator,
    PlanReshardOperator,
    ReshardOperator,
    CommitOperator,
]


@pytest.mark.parametrize("output", ["/data/out", "gs://bucket/curated/2026-03-01/"])
def test_layout_is_under_the_work_folder(output):
    base = output.rstrip("/")
    assert layout.annotations_url(output) == f"{base}/_work/annotations"
    assert layout.plan_url(output) == f"{base}/_work/reshard-plan.json"
    assert layout.manifest_url(output) == f"{base}/_work/manifest.json"
    assert layout.metadata_url(output) == f"{base}/_work/metadata"
    assert layout.dedup_result_url(output) == f"{base}/_work/dedup/result"
    assert layout.run_url(output) == f"{base}/_work/run.json"


def test_operators_pass_the_layout_paths():
    from airflow_curator.operators.steps import PlanReshardOperator, SaveMetadataOperator

    merge = SaveMetadataOperator(task_id="m", dataset="/in", output_uri="/out", dedup=True)
    opts = merge.step_options()
    assert opts["annotations"] == [layout.annotations_url("/out"), layout.dedup_result_url("/out")]
    assert opts["path"] == layout.metadata_url("/out") and opts["require"] == ["is_unique"]
    mine = SaveMetadataOperator(
        task_id="m", dataset="/in", output_uri="/out", dedup="true", require=["labelled", ""]
    )
    assert mine.step_options()["require"] == ["labelled", "is_unique"]
    text = SaveMetadataOperator(task_id="m", dataset="/in", output_uri="/out", require="a, b")
    assert text.step_options()["require"] == ["a", "b"]
    plan = PlanReshardOperator(task_id="p", dataset="/in", output_uri="/out").step_options()
    assert plan["metadata"] == layout.metadata_url("/out")


def test_one_operator_per_curation_step():
    steps = [op.step for op in OPERATORS]
    assert len(set(steps)) == len(steps) and set(steps) <= set(STEPS)
    assert {"discover", "index", "annotate", "save-metadata", "reshard"} <= set(steps)


@pytest.mark.parametrize("cls", OPERATORS)
def test_layout_gives_every_required_option(cls):
    from airflow_curator.runtime.registry import accepted_options

    op = cls(task_id="t", dataset="/in", output_uri="/out")
    required = {d for d, a in accepted_options(op.step).items() if a.required}
    missing = required - set(op.step_options())
    assert missing <= {"model"}, f"{op.step} lacks {missing}"  # model: the user's choice
    assert set(op.step_options()) <= set(accepted_options(op.step))


def test_the_reshard_steps_of_one_dag_run_name_it(monkeypatch):
    """``--run-id <dag_id>/<run_id>``: the owner of the output's lease, shared by the plan,
    the mapped reshard tasks and the commit of one DAG run; steps without a lease get none."""
    from types import SimpleNamespace

    from airflow_curator.operators.local import LocalRunner

    seen: list[list[str]] = []
    monkeypatch.setattr(LocalRunner, "run", lambda self, argv, env=None: seen.append(argv) or {})
    ti = SimpleNamespace(dag_id="curate", run_id="manual__2026-03-01", xcom_push=lambda **kw: None)
    for cls in OPERATORS:
        cls(task_id="t", dataset="/in", output_uri="/out", execution="local").execute({"ti": ti})
    runs = {argv[0]: argv[argv.index("--run-id") + 1] for argv in seen if "--run-id" in argv}
    assert runs == dict.fromkeys(["plan-reshard", "reshard", "commit"], "curate/manual__2026-03-01")
