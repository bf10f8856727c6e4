"""Airflow finds the provider through its entry point, with its configuration section, and the
plugin that serves the curation report through the ``airflow.plugins`` entry point."""

from __future__ import annotations

import importlib
import os

import tomllib
from airflow.providers_manager import ProvidersManager

import airflow_curator
from tests.dags.dagrun import REPO


def test_provider_is_discovered_with_its_config():
    pm = ProvidersManager()
    info = pm.providers["airflow-curator"]
    assert info.version == airflow_curator.__version__
    assert info.data["package-name"] == "airflow-curator"
    configs = dict(pm.provider_configs)
    options = configs["airflow-curator"]["curator"]["options"]
    assert options["execution"]["default"] == "local"
    assert "image" in options


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


def test_report_link_points_at_the_api_server(monkeypatch):
    from airflow_curator.operators.report import CurationReportOperator
    from airflow_curator.plugin import report_path

    run_id = "manual__2026-03-01T00:00:00+00:00"
    assert report_path("curate", run_id, "report") == (
        "/curator/reports/curate/manual__2026-03-01T00%3A00%3A00%2B00%3A00/report"
    )
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/team-a/")
    assert report_path("curate", "r/1", "report", 3) == (
        "/team-a/curator/reports/curate/r%2F1/report?map_index=3"
    )
    (link,) = CurationReportOperator.operator_extra_links
    assert link.name == "Curation report"
    from airflow_curator.provider import get_provider_info

    assert (
        "airflow_curator.operators.report.CurationReportLink" in get_provider_info()["extra-links"]
    )
