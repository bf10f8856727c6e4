"""The deferred path of kubernetes mode: the pod operator's own ``trigger_reentry`` (what the
task runs when the triggerer fires) with a realistic trigger event and pod objects, against a
stand-in for the Kubernetes API only (reads of the pod and its log, the pod's deletion, the
XCom sidecar's ``cat``). The step's result is the real one, from running the step: it reaches
XCom the same way as in local mode, and failures follow the exit-code contract."""

from __future__ import annotations

import json

import pytest
from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
from airflow.providers.cncf.kubernetes.utils.pod_manager import EMPTY_XCOM_RESULT, PodManager
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from kubernetes.client import models as k8s

from airflow_curator.operators import ShardDiscoveryOperator
from airflow_curator.operators.base import RESULT_KEY
from airflow_curator.runtime.cli import main

SIDECAR = "airflow-xcom-sidecar"


class KubernetesApi:
    """What the pod operator asks the Kubernetes API for after the trigger fired."""

    def __init__(self, pod: k8s.V1Pod, log: list[bytes]) -> None:
        self.pod, self.log, self.deleted = pod, log, []

    def read_namespaced_pod(self, name, namespace, **kwargs):
        assert (name, namespace) == (self.pod.metadata.name, self.pod.metadata.namespace)
        return self.pod

    def read_namespaced_pod_log(self, name, namespace, container, **kwargs):
        assert container == "base"
        return iter(self.log)

    def delete_namespaced_pod(self, name, namespace, body=None, **kwargs):
        self.deleted.append(name)

    def patch_namespaced_pod(self, name, namespace, body, **kwargs):
        return self.pod

    def list_namespaced_event(self, namespace, **kwargs):
        return k8s.CoreV1EventList(items=[])


class TI:
    def __init__(self):
        self.pushed = {}

    def xcom_push(self, key, value):
        self.pushed[key] = value


def finished(op, code: int, termination: str | None = None, **status) -> k8s.V1Pod:
    """The pod the operator rendered, as the API returns it once its step container ended."""
    pod = op.build_pod_request_obj(dry_run=True)
    base = k8s.V1ContainerStatus(
        name="base",
        image=op.image,
        image_id="",
        ready=False,
        restart_count=0,
        state=k8s.V1ContainerState(
            terminated=k8s.V1ContainerStateTerminated(exit_code=code, message=termination)
        ),
    )
    sidecar = k8s.V1ContainerStatus(
        name=SIDECAR,
        image="alpine",
        image_id="",
        ready=True,
        restart_count=0,
        state=k8s.V1ContainerState(running=k8s.V1ContainerStateRunning()),
    )
    pod.status = k8s.V1PodStatus(
        phase=status.pop("phase", "Running"),  # the sidecar still runs until it is read
        container_statuses=[base, sidecar],
        **status,
    )
    return pod


def connect(op, monkeypatch, pod: k8s.V1Pod, sidecar_output: str) -> KubernetesApi:
    api = KubernetesApi(pod, [b"2026-03-01 12:00:00,000 INFO airflow_curator: discover done\n"])
    hook = KubernetesHook(conn_id=None)
    hook.__dict__["core_v1_client"] = api
    op.__dict__["hook"], op.__dict__["client"] = hook, api
    op.__dict__["pod_manager"] = PodManager(kube_client=api)
    # the sidecar read is an exec into the pod (a websocket): what `cat return.json` prints
    monkeypatch.setattr(PodManager, "extract_xcom", lambda self, pod, **kw: sidecar_output)
    return api


def event(pod: k8s.V1Pod, status: str, message: str) -> dict:
    """The event KubernetesPodTrigger fires."""
    return {
        "status": status,
        "namespace": pod.metadata.namespace,
        "name": pod.metadata.name,
        "message": message,
        "last_log_time": None,
    }


@pytest.fixture
def discover(demo_dataset, tmp_path):
    path, _ = demo_dataset
    op = ShardDiscoveryOperator(
        task_id="discover",
        dataset=path,
        output_uri=str(tmp_path / "out"),
        execution="kubernetes",
        namespace="curation",
    )
    assert op.deferrable  # kubernetes mode defers by default
    return op


def test_deferred_pod_returns_the_step_result_like_local_mode(discover, monkeypatch, tmp_path):
    result_file = tmp_path / "return.json"  # what the step writes to /airflow/xcom/return.json
    assert main(discover.argv(result_json=str(result_file))) == 0
    result = json.loads(result_file.read_text())
    pod = finished(discover, 0)
    api = connect(discover, monkeypatch, pod, result_file.read_text())
    ti = TI()
    groups = discover.trigger_reentry(
        {"ti": ti}, event(pod, "success", "All containers inside pod have started successfully.")
    )
    assert groups == result["groups"] and groups  # the list to expand over
    assert ti.pushed[RESULT_KEY] == result  # the whole result under "result", as locally
    assert api.deleted == [pod.metadata.name]
    local = ShardDiscoveryOperator(
        task_id="discover",
        dataset=discover.dataset,
        output_uri=discover.output_uri,
        execution="local",
    )
    local_ti = TI()
    assert local.execute({"ti": local_ti}) == groups
    assert untimed(local_ti.pushed[RESULT_KEY]) == untimed(result)


def untimed(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("seconds", "mb_per_s", "records_per_s")}


def test_deferred_pod_failure_follows_the_exit_code(discover, monkeypatch):
    reason = f"airflow-curator discover: error: dataset folder {discover.dataset} is odd"
    for code, expected in ((2, AirflowFailException), (75, AirflowException)):
        pod = finished(discover, code, reason, phase="Failed")
        connect(discover, monkeypatch, pod, EMPTY_XCOM_RESULT)
        with pytest.raises(expected, match="is odd") as e:
            discover.trigger_reentry({"ti": TI()}, event(pod, "failed", "pod failed"))
        assert (type(e.value) is AirflowFailException) is (code == 2)
        assert f"exited with code {code}" in str(e.value)


@pytest.mark.parametrize(
    "status",
    [
        # a GKE spot node reclaimed: graceful node shutdown
        {
            "reason": "Terminated",
            "message": "Pod was terminated in response to imminent node shutdown.",
            "conditions": [
                k8s.V1PodCondition(
                    type="DisruptionTarget", status="True", reason="TerminationByKubelet"
                )
            ],
        },
        # evicted under node memory pressure
        {"reason": "Evicted", "message": "The node was low on resource: memory."},
        # preempted by a higher-priority pod
        {
            "conditions": [
                k8s.V1PodCondition(
                    type="DisruptionTarget", status="True", reason="PreemptionByScheduler"
                )
            ]
        },
    ],
)
def test_a_disrupted_pod_is_retried_whatever_its_exit_code(discover, monkeypatch, status):
    # the step died of the shutdown with what looks like a data fault: still a retry
    reason = "airflow-curator discover: error: shard 00001: truncated tar"
    pod = finished(discover, 1, reason, phase="Failed", **status)
    connect(discover, monkeypatch, pod, EMPTY_XCOM_RESULT)
    with pytest.raises(AirflowException, match="stopped by the cluster") as e:
        discover.trigger_reentry({"ti": TI()}, event(pod, "failed", "pod failed"))
    assert type(e.value) is AirflowException  # retried, not AirflowFailException
    assert "will retry" in str(e.value)
    # not deferred (sync mode): the same clean-up decides
    discover.deferrable = False
    with pytest.raises(AirflowException, match="stopped by the cluster") as e:
        discover.cleanup(pod, pod)
    assert type(e.value) is AirflowException
