"""The report task: record the run (params and every task's result), then render the report.

The run record (``<output>/_work/run.json``) is written from the worker before the step runs,
from the XComs of the tasks upstream, so ``airflow-curator report`` can re-render the same page
later from storage alone. The task records the page's URI (XCom ``curation_report``) and links
to it through the api-server (the provider's plugin streams it to users who may read the DAG,
whatever the storage: no file:// or bucket console link a browser cannot open).
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
from airflow_curator.plugin import REPORT_XCOM, report_path

logger = logging.getLogger(__name__)


class CurationReportLink(BaseOperatorLink):
    """``Curation report`` button on the report task: the page, served by the api-server."""

    name = "Curation report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        if not XCom.get_value(ti_key=ti_key, key=REPORT_XCOM):
            return ""  # no report (yet): no button
        return report_path(ti_key.dag_id, ti_key.run_id, ti_key.task_id, ti_key.map_index)


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
            context["ti"].xcom_push(key=REPORT_XCOM, value=str(result["report"]))
            self.log.info("curation report: %s", result["report"])
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
    """Scalars, and the shards the try found already done (a cleared or retried task skips
    them: the report counts their records from the shard table, so the counts add up)."""
    brief = {k: v for k, v in result.items() if v is None or isinstance(v, (str, int, float, bool))}
    per_shard = result.get("per_shard")
    done = [
        p["shard"]
        for p in (per_shard if isinstance(per_shard, list) else [])
        if isinstance(p, dict) and p.get("action") == "skipped" and "shard" in p
    ]
    if done:
        brief["done_before"] = done
    return brief
