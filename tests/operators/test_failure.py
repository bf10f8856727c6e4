"""The exit-code contract in both execution modes: exit 1 and 2 fail the task without a retry,
exit 75 and anything else are retried; the step's one-line reason is the failure message."""

from __future__ import annotations

import os

import pytest
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from airflow_curator.operators import IndexShardsOperator, ShardDiscoveryOperator
from airflow_curator.operators.failure import TERMINATION_LOG, pod_failure, step_failure
from airflow_curator.runtime.cli import TERMINATION_LOG_ENV

RETRIED = {75: True, 70: True, 137: True, -9: True, None: True, 1: False, 2: False}


@pytest.mark.parametrize("code", list(RETRIED))
def test_only_data_and_usage_errors_skip_the_retries(code):
    error = step_failure("index", code, "airflow-curator index: error: shard 00003: truncated tar")
    assert isinstance(error, AirflowException)
    assert isinstance(error, AirflowFailException) is not RETRIED[code]
    assert "shard 00003: truncated tar" in str(error)
    assert str(error).count("airflow-curator index") == 1  # the reason's own prefix is dropped


def test_local_data_fault_fails_at_once(demo_dataset):
    path, _ = demo_dataset
    os.remove(os.path.join(path, "00001.parquet"))  # a tar without its Parquet: exit 1
    op = ShardDiscoveryOperator(task_id="discover", dataset=path, execution="local")
    with pytest.raises(AirflowFailException, match=r"exited with code 1: shard 00001: .*parquet"):
        op.execute({})


def test_local_missing_folder_fails_at_once(tmp_path):
    op = IndexShardsOperator(task_id="index", dataset=str(tmp_path / "nope"), execution="local")
    with pytest.raises(AirflowFailException, match="nope") as e:
        op.execute({})
    assert "exited with code" in str(e.value)


@pytest.mark.parametrize(("code", "retried"), [(75, True), (70, True), (2, False)])
def test_local_exit_codes_of_the_step_process(tmp_path, monkeypatch, code, retried):
    """Whatever exits the step process: a stand-in CLI that exits with ``code``."""
    from airflow_curator.operators import local

    (tmp_path / "exiting_step.py").write_text(
        "import sys\n"
        "print('airflow-curator index: error: storage unavailable reading gs://b/d', "
        "file=sys.stderr)\n"
        f"sys.exit({code})\n"
    )
    monkeypatch.setattr(local, "CLI_MODULE", "exiting_step")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    op = IndexShardsOperator(task_id="index", dataset="gs://b/d", execution="local")
    with pytest.raises(AirflowException, match="storage unavailable reading gs://b/d") as e:
        op.execute({})
    assert isinstance(e.value, AirflowFailException) is not retried


def terminated_pod(code: int | None, message: str | None = None) -> k8s.V1Pod:
    state = (
        k8s.V1ContainerState(
            terminated=k8s.V1ContainerStateTerminated(exit_code=code, message=message)
        )
        if code is not None
        else k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason="ContainerCreating"))
    )
    status = k8s.V1ContainerStatus(
        name="base", image="img", image_id="", ready=False, restart_count=0, state=state
    )
    sidecar = k8s.V1ContainerStatus(
        name="airflow-xcom-sidecar", image="alpine", image_id="", ready=True, restart_count=0
    )
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="index-abc", namespace="curation"),
        status=k8s.V1PodStatus(phase="Failed", container_statuses=[sidecar, status]),
    )


@pytest.mark.parametrize("code", [1, 2, 75, 70, 137, None])
def test_pod_mode_follows_the_container_exit_code(code):
    reason = "airflow-curator index: error: dataset folder gs://b/drops/2026-11-22 does not exist"
    pod = terminated_pod(code, reason if code is not None else None)
    error = pod_failure("index", pod, "base", AirflowException("Pod index-abc returned a failure."))
    assert isinstance(error, AirflowFailException) is not RETRIED[code]
    if code is None:  # never ran (or the pod is gone): the pod operator's own message, retried
        assert "did not finish: Pod index-abc returned a failure." in str(error)
    else:
        assert str(error) == (
            f"airflow-curator index exited with code {code}: dataset folder "
            "gs://b/drops/2026-11-22 does not exist"
        )


def test_pod_cleanup_raises_by_exit_code(monkeypatch):
    """The pod operator's clean-up (sync and deferred paths) raises for a failed pod; ours turns
    that into the contract's exception, and leaves skips alone."""
    reason = "airflow-curator index: error: shard 00003: truncated tar"

    def failed(self, pod, remote_pod, xcom_result=None, context=None):
        raise AirflowException(f"Pod {pod.metadata.name} returned a failure.\n{reason}")

    monkeypatch.setattr(KubernetesPodOperator, "cleanup", failed)
    op = IndexShardsOperator(task_id="index", dataset="gs://b/d", execution="kubernetes")
    for code, expected in ((1, AirflowFailException), (75, AirflowException)):
        pod = terminated_pod(code, reason)
        with pytest.raises(expected, match="shard 00003: truncated tar") as e:
            op.cleanup(pod, pod)
        assert (type(e.value) is AirflowFailException) is (code == 1)

    def skipped(self, pod, remote_pod, xcom_result=None, context=None):
        raise AirflowSkipException("Pod returned exit code 99. Skipping.")

    monkeypatch.setattr(KubernetesPodOperator, "cleanup", skipped)
    with pytest.raises(AirflowSkipException):
        op.cleanup(terminated_pod(99), terminated_pod(99))


def test_rendered_pod_gets_the_termination_log():
    op = IndexShardsOperator(
        task_id="index",
        dataset="gs://b/d",
        execution="kubernetes",
        group={"shards": "0-3", "label": "00000-00003"},
        env_vars={"CURATOR_LOG": "debug"},
    )
    for _ in range(2):  # idempotent
        pod = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(dry_run=True))
        (base,) = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
        assert base["terminationMessagePath"] == TERMINATION_LOG
        assert base["terminationMessagePolicy"] == "File"
        env = {e["name"]: e.get("value") for e in base["env"]}
        assert env["CURATOR_LOG"] == "debug" and env[TERMINATION_LOG_ENV] == TERMINATION_LOG


def test_pod_template_termination_path_is_kept(tmp_path):
    template = tmp_path / "pod.yaml"
    template.write_text(
        "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: base\n"
        "    terminationMessagePath: /tmp/reason\n"
    )
    op = IndexShardsOperator(
        task_id="index", dataset="gs://b/d", execution="kubernetes", pod_template_file=str(template)
    )
    pod = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(dry_run=True))
    (base,) = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
    assert base["terminationMessagePath"] == "/tmp/reason"
    assert {"name": TERMINATION_LOG_ENV, "value": "/tmp/reason"} in base["env"]
