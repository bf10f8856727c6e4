"""The step operators: each names its step and where its inputs and outputs live.

Everything else (argv, local or pod execution, GPU resources, XCom) is ``CuratorOperator``'s.
Every one takes ``dataset`` and ``output_uri`` (templated) plus ``options`` by CLI name.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from airflow_curator.core import layout
from airflow_curator.operators.base import CuratorOperator, template_flag


class ShardDiscoveryOperator(CuratorOperator):
    """List and pair the dataset's shards, write the manifest; returns the shard groups to
    ``expand`` over (``group=discover.output``); the full result is XCom ``result``."""

    step = "discover"
    returns = "groups"

    def layout_options(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "manifest": layout.manifest_url(self.output_uri) if self.output_uri else None,
        }


class IndexShardsOperator(CuratorOperator):
    """Write DALI ``.idx`` files for the group's shards that lack a fresh one."""

    step = "index"


class GpuAnnotateOperator(CuratorOperator):
    """CLIP embeddings, CLIP score, aesthetic and NSFW scores per shard, on a GPU pod.

    ``gpus`` (default 1) becomes the container's ``nvidia.com/gpu`` limit with a matching
    toleration; timeouts leave room for a GPU node to be autoscaled and the image pulled."""

    step = "annotate"
    gpus_default = 1
    startup_timeout_default = 1200
    schedule_timeout_default = 1800

    def layout_options(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "output": self.output_uri}


class ClipThresholdOperator(CuratorOperator):
    """The run's exact top-fraction CLIP-score threshold, between annotate and save-metadata;
    skipped when ``options["clip_score_top_fraction"]`` is empty (null)."""

    step = "clip-threshold"

    def layout_options(self) -> dict[str, Any]:
        return {"output": self.output_uri}

    def execute(self, context: Any) -> Any:
        if self.options.get("clip_score_top_fraction") in (None, ""):
            raise AirflowSkipException("no clip_score_top_fraction for this run")
        return super().execute(context)


class SaveMetadataOperator(CuratorOperator):
    """Join the annotations into per-shard metadata Parquet with the curation filter column.

    Writes to ``<output>/_work/metadata`` so the input dataset is never modified; pass
    ``options={"path": None}`` to replace the dataset's own Parquet instead. With ``dedup``
    (templated, e.g. ``{{ params.dedup }}``) the dedup stage's ``is_unique`` column is merged too
    and required to pass. ``require`` (templated) lists boolean columns of the input metadata
    that must be true as well (a list, or comma-separated text)."""

    step = "save-metadata"
    template_fields = (*CuratorOperator.template_fields, "dedup", "require")

    def __init__(
        self, *, dedup: bool | str = False, require: list[str] | str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.dedup = dedup
        self.require = require

    def layout_options(self) -> dict[str, Any]:
        if not self.output_uri:
            return {"dataset": self.dataset}
        dedup = template_flag("dedup", self.dedup)
        annotations = [layout.annotations_url(self.output_uri)]
        require = self.require or []
        if isinstance(require, str):
            require = [c.strip() for c in require.split(",")]
        require = [c for c in require if c]
        if dedup:
            annotations.append(layout.dedup_result_url(self.output_uri))
            require.append("is_unique")
        return {
            "dataset": self.dataset,
            "annotations": annotations,
            "require": require or None,
            "path": layout.metadata_url(self.output_uri),
            "clip_threshold": layout.clip_threshold_url(self.output_uri),
        }


class PlanReshardOperator(CuratorOperator):
    """Assign kept records to output shards; returns the output groups to ``expand`` the
    reshard over; the full result (counts, plan URI) is XCom ``result``."""

    step = "plan-reshard"
    returns = "groups"

    def layout_options(self) -> dict[str, Any]:
        if not self.output_uri:
            return {"dataset": self.dataset}
        return {
            "dataset": self.dataset,
            "output": self.output_uri,
            "metadata": layout.metadata_url(self.output_uri),
            "manifest": layout.manifest_url(self.output_uri),
        }


class ReshardOperator(CuratorOperator):
    """Write one group of output shards (tar, Parquet, idx) of the plan."""

    step = "reshard"

    def layout_options(self) -> dict[str, Any]:
        return {"plan": layout.plan_url(self.output_uri) if self.output_uri else None}


class CommitOperator(CuratorOperator):
    """Verify the output, write its manifest and ``_SUCCESS``; emits events for ``outlets``
    (an ``Asset`` for the curated dataset) with the counts in ``extra``."""

    step = "commit"

    def layout_options(self) -> dict[str, Any]:
        return {"plan": layout.plan_url(self.output_uri) if self.output_uri else None}
