"""The semantic deduplication stage: fit -> assign/hash[shard group] -> dedup[cluster group]
-> result[shard group], whose ``is_unique`` column save-metadata merges like an annotation.

Every operator takes ``enabled`` (templated, e.g. ``{{ params.dedup }}``): when false the task
is skipped, and so is the rest of the stage, so one DAG serves runs with and without it.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from airflow_curator.operators.base import CuratorOperator, template_flag


class _DedupOperator(CuratorOperator):
    template_fields = (*CuratorOperator.template_fields, "enabled")

    def __init__(self, *, enabled: bool | str = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.enabled = enabled

    def layout_options(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "output": self.output_uri}

    def execute(self, context: Any) -> Any:
        if not template_flag("enabled", self.enabled):
            raise AirflowSkipException("deduplication is off for this run")
        return super().execute(context)


class DedupFitOperator(_DedupOperator):
    """k-means centroids from a sample of the image embeddings; returns the cluster groups to
    ``expand`` the dedup over."""

    step = "dedup-fit"
    returns = "groups"


class DedupAssignOperator(_DedupOperator):
    """Assign each record of a shard group to its nearest centroid (partitioned by cluster)."""

    step = "dedup-assign"


class DedupHashOperator(_DedupOperator):
    """sha256 of each image's bytes (or img2dataset's ``sha256`` column) for exact duplicates."""

    step = "dedup-hash"


class SemanticDedupOperator(_DedupOperator):
    """Pairwise similarity within each cluster of a cluster group; marks near-duplicates."""

    step = "dedup"


class DedupResultOperator(_DedupOperator):
    """Per-shard ``is_unique`` and ``duplicate_of`` columns for save-metadata."""

    step = "dedup-result"
