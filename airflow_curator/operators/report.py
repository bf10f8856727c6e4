"""The report task: record the run (params and every task's result), then render the report.

The run record (``<output>/_work/run.json``) is written from the worker before the step runs,
from the XComs of the tasks upstream, so ``airflow-curator report`` can re-render the same page
later from storage alone. The task links to the page (an operator extra link) and returns its URI.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

from airflow_curator.core import layout
from airflow_curator.core.io import storage
from airflow_curator.operators.base import RESULT_KEY, CuratorOperator

logger = logging.getLogger(__name__)


def report_http_url(uri: str) -> str:
    """A browser URL for the report: the authenticated GCS viewer for ``gs://``, else as is."""
    if uri.startswith("gs://"):
        return "https://storage.cloud.google.com/" + uri[len("gs://") :]
    if "://" not in uri:
        return "file://" + uri
    return uri


class CurationReportLink(BaseOperatorLink):
    """``Curation report`` button on the report task."""

    name = "Curation report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        result = XCom.get_value(ti_key=ti_key, key="return_value")
        if isinstance(result, dict) and result.get("report"):
            return report_http_url(str(result["report"]))
        return ""


class CurationReportOperator(CuratorOperator):
    """Write ``<output>/report.html``: counts per step and shard, score histograms with the
    thresholds, thumbnails of kept and dropped records, the params and manifests."""

    step = "report"
    operator_extra_links = (CurationReportLink(),)

    def layout_options(self) -> dict[str, Any]:
        return {"output": self.output_uri}

    def execute(self, context: Any) -> Any:
        if self.output_uri:
            try:
                self.write_run_record(context)
            except Exception as e:  # the page is still useful without throughput figures
                self.log.warning("could not write the run record: %s", e)
        result = super().execute(context)
        if isinstance(result, dict) and result.get("report"):
            self.log.info("curation report: %s", report_http_url(result["report"]))
        return result

    def write_run_record(self, context: Any) -> None:
        ti = context["ti"]
        steps: dict[str, list[dict[str, Any]]] = {}
        for task_id in sorted(self.get_flat_relative_ids(upstream=True)):
            values = ti.xcom_pull(task_ids=task_id, key=RESULT_KEY)  # discover, plan_reshard
            if values is None or (isinstance(values, list) and not any(values)):
                values = ti.xcom_pull(task_ids=task_id)  # the step result (all map indexes)
            results = [v for v in (values if isinstance(values, list) else [values]) if v]
            if any(isinstance(v, dict) for v in results):
                steps[task_id] = [_brief(v) for v in results if isinstance(v, dict)]
        params = {k: v for k, v in (context.get("params") or {}).items()}
        record = {
            "run_id": context["run_id"],
            "dag_id": self.dag_id,
            "params": {**params, "dataset": self.dataset, "output": self.output_uri},
            "steps": steps,
        }
        url = layout.run_url(self.output_uri)
        storage.write_bytes(url, json.dumps(record, sort_keys=True, default=str).encode())
        self.log.info("run record: %s", url)


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    """Scalars only: per-shard lists and groups would make the record grow with the dataset."""
    return {k: v for k, v in result.items() if v is None or isinstance(v, (str, int, float, bool))}
