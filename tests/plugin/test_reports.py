"""The report endpoint on the real deployment (tests/dags/curation.py): it serves the file the
run's report task recorded, to users the auth manager lets read the DAG, and nothing else."""

from __future__ import annotations

import os
from urllib.parse import quote

import pytest

from tests.dags.curation import BACKFILL_DATES, MISSING_DATE, report_url
from tests.dags.deployment import DAG_ID

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def page(curation) -> bytes:
    with open(os.path.join(curation.rerun.output, "report.html"), "rb") as f:
        return f.read()


def test_admin_gets_the_recorded_report_as_a_sandboxed_page(curation):
    dep = curation.deployment
    url = report_url(dep, curation.rerun.run_id)
    r = dep.request("GET", url)
    assert r.status_code == 200
    assert r.content == page(curation)  # the file on storage, byte for byte
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp
    # the UI's way: the login cookie instead of a bearer header
    cookie = dep.request("GET", url, user=None, cookies={"_token": dep.token("admin")})
    assert cookie.status_code == 200 and cookie.content == r.content


def test_requests_without_a_valid_token_are_refused(curation):
    dep = curation.deployment
    url = report_url(dep, curation.rerun.run_id)
    assert dep.request("GET", url, user=None).status_code == 401
    forged = {"Authorization": "Bearer not-a-jwt"}
    assert dep.request("GET", url, user=None, headers=forged).status_code == 403
    assert dep.request("GET", url, user=None, cookies={"_token": "x.y.z"}).status_code == 403


def test_a_user_who_may_not_read_the_dag_is_refused(curation):
    dep = curation.deployment
    url = report_url(dep, curation.rerun.run_id)
    assert dep.request("GET", f"/api/v2/dags/{DAG_ID}", user="nobody").status_code == 403
    r = dep.request("GET", url, user="nobody")
    assert r.status_code == 403 and b"<html" not in r.content
    # unknown runs are refused before they are looked up: nothing leaks about what exists
    assert dep.request("GET", url.replace("manual__", "other__"), user="nobody").status_code == 403


def test_only_the_recorded_path_is_served(curation):
    dep, run = curation.deployment, curation.rerun
    base = f"/curator/reports/{DAG_ID}/{quote(run.run_id, safe='')}"
    report = page(curation)
    for path in (
        f"{base}/commit",  # a task that recorded no report
        f"{base}/discover?map_index=0",
        f"{base}/..%2F..%2F..%2Fetc%2Fpasswd",
        f"/curator/reports/{DAG_ID}/{quote('../../etc', safe='')}/passwd",
        f"/curator/reports/{DAG_ID}/no-such-run/report",
        "/curator/reports/no_such_dag/x/report",
        f"/curator/{quote(run.output, safe='')}/report.html",
    ):
        r = dep.request("GET", path)
        assert r.status_code == 404, (path, r.status_code)
        assert b"root:" not in r.content and r.content != report
        assert r.headers["content-type"].startswith("application/json")  # not a stack trace
    # a path given by the request is ignored: the recorded report, nothing else
    r = dep.request("GET", f"{base}/report?path=/etc/passwd&uri=/etc/passwd")
    assert r.status_code == 200 and r.content == report


def test_a_report_that_is_gone_is_a_404(curation):
    dep = curation.deployment
    day = next(d for d in BACKFILL_DATES if d != MISSING_DATE)
    run = curation.backfill[day]
    url = report_url(dep, run.run_id)
    path = os.path.join(run.output, "report.html")
    os.rename(path, path + ".moved")
    try:
        r = dep.request("GET", url)
    finally:
        os.rename(path + ".moved", path)
    assert r.status_code == 404 and "gone" in r.json()["detail"]
    assert dep.request("GET", url).status_code == 200


def test_the_api_server_loaded_the_plugin_from_its_entry_point(curation):
    dep = curation.deployment
    plugins = {p["name"]: p for p in dep.api("GET", "/plugins")["plugins"]}
    plugin = plugins["airflow_curator"]
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/curator"]
    assert "group='airflow.plugins'" in plugin["source"]
    assert dep.api("GET", "/plugins/importErrors")["import_errors"] == []
