"""Airflow reads its configuration once per process: point it at a throwaway home before any
test here imports it, so no test touches ~/airflow. (The DAG runs use their own process.)"""

from __future__ import annotations

import os
import tempfile

if "AIRFLOW_HOME" not in os.environ:
    _home = tempfile.mkdtemp(prefix="airflow-curator-tests-")
    os.environ["AIRFLOW_HOME"] = _home
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault(
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{os.path.join(_home, 'airflow.db')}"
    )
