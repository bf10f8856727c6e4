"""``GET /curator/reports/{dag_id}/{run_id}/{task_id}``: a run's curation report, streamed.

Imported by the api-server only (through the plugin's ``fastapi_apps``).

Plugin endpoints get no protection from Airflow, so this one applies the api-server's own: the
request's JWT (bearer header or the UI's cookie) is resolved to a user by the auth manager
(``get_user``), which must be allowed to read the DAG's task instances (``requires_access_dag``,
what the extra-links endpoint checks). The file served is the one the run's report task recorded
(XCom ``curation_report``, see ``CurationReportOperator``), read through the storage layer with
the api-server's credentials: the request names a task instance, never a path. An unknown run,
task or report is a 404; storage that cannot be reached is a 503.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import IO, Any

from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import DagAccessEntity, requires_access_dag
from airflow.models.xcom import XComModel
from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.responses import StreamingResponse

from airflow_curator.core.io import storage
from airflow_curator.plugin import REPORT_XCOM

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
# The page is data (captions from the dataset) on Airflow's origin: no scripts, nothing loaded
# from anywhere, and a sandbox (an opaque origin: no access to Airflow's cookie or storage).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "sandbox",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "private, no-store",
}


def report_uri(session: Any, dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """The report the task instance recorded; HTTPException 404 if there is none."""
    query = XComModel.get_many(
        run_id=run_id, key=REPORT_XCOM, dag_ids=dag_id, task_ids=task_id, map_indexes=map_index
    )
    row = session.scalars(query.limit(1)).first()
    uri = XComModel.deserialize_value(row) if row is not None else None
    if not isinstance(uri, str) or not uri:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"no curation report recorded by task {task_id} of run {run_id} of DAG {dag_id}",
        )
    return uri


def open_report(uri: str) -> IO[bytes]:
    try:
        return storage.open_read(uri)
    except FileNotFoundError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the curation report is gone") from None
    except OSError as e:  # network or permission trouble: say so, without a stack trace
        logger.warning("cannot read the curation report %s: %s", uri, e)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the report's storage cannot be read now"
        ) from None


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    try:
        while chunk := f.read(CHUNK):
            yield chunk
    finally:
        f.close()


def create_app() -> FastAPI:
    app = FastAPI(title="airflow-curator", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get(
        "/reports/{dag_id}/{run_id}/{task_id}",
        dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))],
        response_class=StreamingResponse,
    )
    def curation_report(
        dag_id: str, run_id: str, task_id: str, session: SessionDep, map_index: int = -1
    ) -> StreamingResponse:
        """The curation report (``<output>/report.html``) the task instance wrote."""
        f = open_report(report_uri(session, dag_id, run_id, task_id, map_index))
        return StreamingResponse(
            _chunks(f), media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS
        )

    return app


@functools.cache
def fastapi_apps(url_prefix: str) -> list[dict[str, Any]]:
    return [{"app": create_app(), "url_prefix": url_prefix, "name": "Curation reports"}]
