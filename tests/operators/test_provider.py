"""Airflow finds the provider through its entry point, with its configuration section."""

from __future__ import annotations

from airflow.providers_manager import ProvidersManager

import airflow_curator


def test_provider_is_discovered_with_its_config():
    pm = ProvidersManager()
    info = pm.providers["airflow-curator"]
    assert info.version == airflow_curator.__version__
    assert info.data["package-name"] == "airflow-curator"
    configs = dict(pm.provider_configs)
    options = configs["airflow-curator"]["curator"]["options"]
    assert options["execution"]["default"] == "local"
    assert "image" in options


def test_report_link_points_to_the_page():
    from airflow_curator.operators.report import CurationReportOperator, report_http_url

    assert (
        report_http_url("gs://b/out/report.html")
        == "https://storage.cloud.google.com/b/out/report.html"
    )
    assert report_http_url("/data/out/report.html") == "file:///data/out/report.html"
    (link,) = CurationReportOperator.operator_extra_links
    assert link.name == "Curation report"
    from airflow_curator.provider import get_provider_info

    assert (
        "airflow_curator.operators.report.CurationReportLink" in get_provider_info()["extra-links"]
    )
