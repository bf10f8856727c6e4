"""Airflow provider registration (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from airflow_curator import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-curator",
        "name": "Curator",
        "description": "Curate image-text WebDataset shards: discover, index, annotate, "
        "save metadata and reshard, locally or on KubernetesPodOperator GPU pods.",
        "versions": [__version__],
        "extra-links": ["airflow_curator.operators.report.CurationReportLink"],
        "config": {
            "curator": {
                "description": "Defaults for airflow-curator operators.",
                "options": {
                    "execution": {
                        "description": "Default execution mode of the operators: "
                        "'local' (subprocess on the worker) or 'kubernetes' (a pod).",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "kubernetes",
                        "default": "local",
                    },
                    "image": {
                        "description": "Runtime image for kubernetes execution.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "ghcr.io/example/airflow-curator-runtime:0.1.0",
                        "default": "airflow-curator-runtime:latest",
                    },
                },
            }
        },
    }
