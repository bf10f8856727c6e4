"""Airflow operators for the curation steps; each runs locally or as a Kubernetes pod."""

from __future__ import annotations

from airflow_curator.operators.base import CuratorOperator
from airflow_curator.operators.dedup import (
    DedupAssignOperator,
    DedupFitOperator,
    DedupHashOperator,
    DedupResultOperator,
    SemanticDedupOperator,
)
from airflow_curator.operators.report import CurationReportLink, CurationReportOperator
from airflow_curator.operators.steps import (
    ClipThresholdOperator,
    CommitOperator,
    GpuAnnotateOperator,
    IndexShardsOperator,
    PlanReshardOperator,
    ReshardOperator,
    SaveMetadataOperator,
    ShardDiscoveryOperator,
)

__all__ = [
    "ClipThresholdOperator",
    "CommitOperator",
    "CurationReportLink",
    "CurationReportOperator",
    "CuratorOperator",
    "DedupAssignOperator",
    "DedupFitOperator",
    "DedupHashOperator",
    "DedupResultOperator",
    "GpuAnnotateOperator",
    "IndexShardsOperator",
    "PlanReshardOperator",
    "ReshardOperator",
    "SaveMetadataOperator",
    "SemanticDedupOperator",
    "ShardDiscoveryOperator",
]
