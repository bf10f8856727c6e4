from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Airflow reads its configuration once per process: point it at a throwaway home before any test
# imports it, so no test touches ~/airflow (the DAG runs use their own process and home).
if "AIRFLOW_HOME" not in os.environ:
    _home = tempfile.mkdtemp(prefix="airflow-curator-tests-")
    os.environ["AIRFLOW_HOME"] = _home
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault(
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{os.path.join(_home, 'airflow.db')}"
    )


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_k8s = pytest.mark.skip(reason="needs a Kubernetes cluster (set CURATOR_K8S_TESTS=1)")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
        if "k8s" in item.keywords and not os.environ.get("CURATOR_K8S_TESTS"):
            item.add_marker(skip_k8s)


@pytest.fixture
def demo_dataset(tmp_path):
    """Two shards of 6 real JPEG records each; returns (path, ids)."""
    from airflow_curator.testing.dataset import write_demo_dataset

    path = str(tmp_path / "dataset")
    ids = write_demo_dataset(path, shards=2, records_per_shard=6, seed=1)
    return path, ids


@pytest.fixture(scope="session")
def curation(tmp_path_factory):
    """One real Airflow deployment for the session, after its curation runs (tests/dags)."""
    from tests.dags.curation import curate

    result = curate(str(tmp_path_factory.mktemp("deployment")))
    yield result
    result.deployment.stop()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """One fake-gcs-server for the session (its access log counts requests); ``gs://`` in this
    process and the CLI processes it starts reaches it through STORAGE_EMULATOR_HOST. Tests
    each create their own bucket (``gcs_bucket``)."""
    from airflow_curator.testing.gcs import Emulator

    emulator = Emulator(str(tmp_path_factory.mktemp("fake-gcs"))).start()
    saved = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    yield emulator
    emulator.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def gcs_bucket(gcs_emulator, request):
    """A fresh bucket on the session's emulator: its ``gs://`` URL."""
    return gcs_emulator.new_bucket(request.node.name)
