"""core and runtime must run in pods that have no Airflow: they never import it."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import airflow_curator


def test_core_and_runtime_import_no_airflow():
    modules = [
        m.name
        for m in pkgutil.walk_packages(airflow_curator.__path__, "airflow_curator.")
        if m.name.startswith(("airflow_curator.core", "airflow_curator.runtime"))
    ] + ["airflow_curator", "airflow_curator.dataset", "airflow_curator.provider"]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m == 'airflow' or m.startswith(('airflow.', 'kubernetes')))\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert len(modules) > 10
    assert proc.stdout.strip() == ""
