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
