"""The provider's Airflow plugin: the curation report, served by the Airflow api-server.

Registered through the ``airflow.plugins`` entry point, which every Airflow component loads
whatever its ``[core] lazy_discover_providers``. This module stays light because workers and the
scheduler load plugins too: the FastAPI app (``airflow_curator.plugin.reports``) is imported only
when the api-server asks for ``fastapi_apps``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

from airflow.sdk.plugins_manager import AirflowPlugin

URL_PREFIX = "/curator"  # mounted under the api-server's root path ([api] base_url)
REPORT_XCOM = "curation_report"  # the report task records its page's URI under this key


def report_path(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """The api-server path of a task instance's curation report (same origin as the UI)."""
    from airflow.sdk import conf

    root = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    path = "/".join(quote(part, safe="") for part in (dag_id, run_id, task_id))
    query = f"?map_index={map_index}" if map_index >= 0 else ""
    return f"{root}{URL_PREFIX}/reports/{path}{query}"


class _FastAPIApps:
    """``fastapi_apps``, built on first use (by the api-server only), on the class or an
    instance alike (plugins are registered either way)."""

    def __get__(self, obj: Any, owner: type | None = None) -> list[dict[str, Any]]:
        from airflow_curator.plugin.reports import fastapi_apps

        return fastapi_apps(URL_PREFIX)


class CuratorPlugin(AirflowPlugin):
    name = "airflow_curator"
    fastapi_apps = _FastAPIApps()  # type: ignore[assignment]
