"""The operators' job layout agrees with the core modules that write those files."""

from __future__ import annotations

import pytest

from airflow_curator.core.annotate import annotations_url
from airflow_curator.core.plan import plan_url
from airflow_curator.operators import layout
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
def test_layout_matches_core(output):
    assert layout.annotations_url(output) == annotations_url(output)
    assert layout.plan_url(output) == plan_url(output)
    assert layout.manifest_url(output).startswith(layout.work_url(output) + "/")
    assert layout.metadata_url(output).startswith(layout.work_url(output) + "/")


def test_one_operator_per_curation_step():
    steps = [op.step for op in OPERATORS]
    assert len(set(steps)) == len(steps) and set(steps) <= set(STEPS)
    assert {"discover", "index", "annotate", "save-metadata", "reshard"} <= set(steps)


@pytest.mark.parametrize("cls", OPERATORS)
def test_layout_gives_every_required_option(cls):
    from airflow_curator.operators.base import step_actions

    op = cls(task_id="t", dataset="/in", output_uri="/out")
    required = {d for d, a in step_actions(op.step).items() if a.required}
    missing = required - set(op.step_options())
    assert missing <= {"model"}, f"{op.step} lacks {missing}"  # model: the user's choice
    assert set(op.step_options()) <= set(step_actions(op.step))
