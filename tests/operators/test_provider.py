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


def test_report_link_is_registered():
    from airflow_curator.operators.report import CurationReportOperator
    from airflow_curator.provider import get_provider_info

    (link,) = CurationReportOperator.operator_extra_links
    assert link.name == "Curation report"
    assert (
        "airflow_curator.operators.report.CurationReportLink" in get_provider_info()["extra-links"]
    )
