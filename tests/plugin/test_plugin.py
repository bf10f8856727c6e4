"""The plugin that serves the curation report: found through the ``airflow.plugins`` entry point,
light to import (every Airflow component loads plugins), its FastAPI app built on demand."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import tomllib

from tests.dags.deployment import REPO


def entry_points() -> dict[str, dict[str, str]]:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["entry-points"]


def test_plugin_entry_point_gives_a_valid_plugin_with_the_report_app():
    from airflow.api_fastapi.app import RESERVED_URL_PREFIXES
    from airflow.plugins_manager import is_valid_plugin

    (target,) = entry_points()["airflow.plugins"].values()
    module, _, name = target.partition(":")
    plugin = getattr(importlib.import_module(module), name)
    assert is_valid_plugin(plugin)
    for source in (plugin, plugin()):  # registered as a class or as an instance
        (app,) = source.fastapi_apps
        assert not any(app["url_prefix"].startswith(p) for p in RESERVED_URL_PREFIXES)
        paths = {r.path for r in app["app"].routes}
        assert "/reports/{dag_id}/{run_id}/{task_id}" in paths
    # not also in the provider info: with lazy_discover_providers off it would load twice
    from airflow_curator.provider import get_provider_info

    assert "plugins" not in get_provider_info()


def test_loading_the_plugin_imports_no_web_stack():
    """Schedulers, DAG processors and workers load plugins too: the module imports neither
    FastAPI nor the api-server until ``fastapi_apps`` is asked for."""
    code = (
        "import sys, airflow_curator.plugin as p, airflow_curator.operators\n"
        "web = ('fastapi', 'airflow.api_fastapi', 'airflow_curator.plugin.reports')\n"
        "print(sorted(m for m in web if m in sys.modules))\n"
        "p.CuratorPlugin().fastapi_apps\n"
        "print('airflow_curator.plugin.reports' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": REPO}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.split("\n")
    assert out[:2] == ["[]", "True"]


def test_report_link_points_at_the_api_server(monkeypatch):
    from airflow_curator.plugin import report_path

    run_id = "manual__2026-03-01T00:00:00+00:00"
    assert report_path("curate", run_id, "report") == (
        "/curator/reports/curate/manual__2026-03-01T00%3A00%3A00%2B00%3A00/report"
    )
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/team-a/")
    assert report_path("curate", "r/1", "report", 3) == (
        "/team-a/curator/reports/curate/r%2F1/report?map_index=3"
    )
