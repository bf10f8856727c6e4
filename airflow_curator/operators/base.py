"""One operator for every step: build the step's argv once, run it locally or in a pod.

``CuratorOperator`` is a ``KubernetesPodOperator`` so it takes every pod argument a Kubernetes
user expects (namespace, node selectors, tolerations, resources, service account, pod template,
...). ``execution`` picks where the argv runs: ``kubernetes`` (the shared image, whose entrypoint
is ``airflow-curator``, argv as the container's arguments, the result read back through the XCom
sidecar) or ``local`` (the same argv in a subprocess on the worker). Either way the step's JSON
result is the task's return value, so it lands in XCom. A step operator is a subclass naming its
step and where its inputs and outputs live in the job layout; nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults
from airflow.sdk import Asset, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from kubernetes.client import models as k8s

from airflow_curator.operators import pod as podspec
from airflow_curator.operators.failure import TERMINATION_LOG, pod_failure, step_failure
from airflow_curator.operators.local import LocalRunner, StepFailed
from airflow_curator.runtime.argv import build_argv
from airflow_curator.runtime.cli import TERMINATION_LOG_ENV
from airflow_curator.runtime.registry import STEPS, accepted_options

logger = logging.getLogger(__name__)

EXECUTION_MODES = ("local", "kubernetes")
DEFAULT_IMAGE = "airflow-curator-runtime:latest"
XCOM_RESULT = f"{PodDefaults.XCOM_MOUNT_PATH}/return.json"
GPU_RESOURCE = "nvidia.com/gpu"
STEP_LABEL = "airflow-curator/step"
GROUP_KEYS = ("shards", "outputs", "clusters")  # input, reshard output, dedup cluster groups
# what else a group gives the steps that take it: the manifest discover wrote, so no task lists
# the dataset folder again and every task sees the shards discover saw
GROUP_OPTIONS = ("manifest",)
RESULT_KEY = "result"
# What the UI shows of a mapped task, for every kind of group: "shards 00000-00003", "outputs
# 00000", "clusters 00000-00062" (text around the label: a DAG rendering templates as native
# objects would turn "00000" into 0).
MAP_INDEX_TEMPLATE = (
    "{% set g = task.group or {} %}"
    f"{{% for key in {list(GROUP_KEYS)!r} if key in g %}}{{{{ key }}}} {{% endfor %}}"
    "{{ g.get('label', '') }}"
)


def default_execution() -> str:
    """``[curator] execution`` (env ``AIRFLOW__CURATOR__EXECUTION``), ``local`` if unset."""
    return (conf.get("curator", "execution", fallback="local") or "local").strip().lower()


def default_image() -> str:
    return conf.get("curator", "image", fallback=DEFAULT_IMAGE) or DEFAULT_IMAGE


class CuratorOperator(KubernetesPodOperator):
    """Run one ``airflow-curator`` step, locally or as a Kubernetes pod.

    :param dataset: input dataset folder URI (templated).
    :param output_uri: job output URI (templated); work files go under ``<output>/_work``.
    :param options: further step options by CLI name (``batch_size`` or ``batch-size``),
        templated; they override what the layout derives from ``dataset``/``output``.
    :param group: one group of a mapped step to work on: input shards (``{"shards": "0-3",
        "label": ...}``, from discovery), output shards (``outputs``, from plan-reshard) or
        clusters (``clusters``, from dedup-fit); usually ``.expand(group=discover.output)``.
    :param execution: ``local`` or ``kubernetes``; empty: ``[curator] execution``.
    :param gcp_conn_id: local mode: an Airflow Google Cloud connection whose key file the step
        uses for ``gs://`` (default: the worker's default credentials). Pods use their service
        account (workload identity) instead.
    :param cpu: kubernetes mode: the pod's CPU request and limit (``"8"``, ``"500m"``); empty:
        sized from the step (``operators.pod.sizing``). Templated, like the next ones.
    :param memory: the pod's memory request and limit (``"32Gi"``); empty: sized from the step.
    :param scratch: size of the ``/scratch`` volume (``TMPDIR``), requested as ephemeral
        storage; empty: from the group's bytes.
    :param shm: size of the in-memory ``/dev/shm`` volume (annotate).
    :param spot: run the pod on GKE spot nodes (their node selector and toleration).
    :param weights_cache_claim: a PVC to mount as the weights cache (``/cache``) instead of an
        ``emptyDir``, so pods share downloaded weights.
    :param deferrable: kubernetes mode waits for the pod in the triggerer, holding no worker
        slot (default on).
    A ``container_resources``, ``security_context``, ``container_security_context`` or pod
    template of the user wins over these defaults. Every other argument is a
    ``KubernetesPodOperator`` argument, used in kubernetes mode.
    """

    step: ClassVar[str] = ""
    # When set, the task returns this list from the result (for ``.expand``) and pushes the
    # whole result under the XCom key ``result``.
    returns: ClassVar[str | None] = None
    gpus_default: ClassVar[int] = 0
    startup_timeout_default: ClassVar[int] = 600
    schedule_timeout_default: ClassVar[int] = 900

    template_fields = (
        *KubernetesPodOperator.template_fields,
        "dataset",
        "output_uri",
        "options",
        "group",
        "execution",
        "gpus",
        "cpu",
        "memory",
        "scratch",
        "shm",
        "spot",
        "weights_cache_claim",
    )
    template_fields_renderers = {
        **KubernetesPodOperator.template_fields_renderers,
        "options": "json",
        "group": "json",
    }
    ui_color = "#d9f2e6"

    def __init__(
        self,
        *,
        step: str | None = None,
        dataset: str | None = None,
        output_uri: str | None = None,
        options: Mapping[str, Any] | None = None,
        group: Mapping[str, Any] | None = None,
        execution: str | None = None,
        gpus: int | str | None = None,
        gcp_conn_id: str | None = None,
        image: str | None = None,
        do_xcom_push: bool = True,
        startup_timeout_seconds: int | None = None,
        schedule_timeout_seconds: int | None = None,
        cpu: str | int | float | None = None,
        memory: str | None = None,
        scratch: str | None = None,
        shm: str | None = None,
        spot: bool | str = False,
        weights_cache_claim: str | None = None,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            image=image or default_image(),
            do_xcom_push=do_xcom_push,
            deferrable=deferrable,
            startup_timeout_seconds=startup_timeout_seconds or self.startup_timeout_default,
            schedule_timeout_seconds=schedule_timeout_seconds or self.schedule_timeout_default,
            **kwargs,
        )
        if step is not None:
            self.step = step
        if self.step not in STEPS:  # fail when the DAG is parsed, not when the task runs
            raise ValueError(
                f"{type(self).__name__}: unknown step {self.step!r}; steps: {', '.join(STEPS)}"
            )
        self.dataset = dataset
        self.output_uri = output_uri
        self.options = dict(options or {})
        self.group = group
        self.execution = execution
        self.gpus = self.gpus_default if gpus is None else gpus
        self.gcp_conn_id = gcp_conn_id
        self.cpu, self.memory, self.scratch, self.shm = cpu, memory, scratch, shm
        self.spot = spot
        self.weights_cache_claim = weights_cache_claim
        self._runner: LocalRunner | None = None
        self._run_id: str | None = None  # the DAG run's, for the steps that take --run-id

    # -- what to run ------------------------------------------------------------------------

    def layout_options(self) -> dict[str, Any]:
        """Step options derived from ``dataset``/``output`` (subclasses; unknown ones dropped)."""
        return {"dataset": self.dataset}

    def step_options(self) -> dict[str, Any]:
        actions = accepted_options(self.step)
        opts = {
            k: v for k, v in self.layout_options().items() if k in actions and v not in (None, "")
        }
        if self._run_id and "run_id" in actions:  # the tasks of one DAG run share its lease
            opts["run_id"] = self._run_id
        group = self.group
        if group:  # see GROUP_KEYS
            if not isinstance(group, Mapping):
                raise AirflowFailException(f"group must be a mapping, not {group!r}")
            for key in (*GROUP_KEYS, *GROUP_OPTIONS):
                if key in group and key in actions:
                    opts[key] = group[key]
        for name, value in self.options.items():
            dest = name.replace("-", "_")
            if value in (None, ""):
                opts.pop(dest, None)  # an empty form field means "the step's default"
                continue
            action = actions.get(dest)
            if action is not None and action.nargs == 0 and isinstance(value, str):
                value = template_flag(name, value)
            opts[dest] = value
        return opts

    def argv(self, result_json: str | None = None) -> list[str]:
        """The step argv (no program name: pods have ``airflow-curator`` as entrypoint)."""
        return build_argv(self.step, self.step_options(), result_json=result_json)

    def execution_mode(self) -> str:
        mode = (self.execution or "").strip().lower() or default_execution()
        if mode not in EXECUTION_MODES:
            raise AirflowFailException(
                f"execution must be one of {', '.join(EXECUTION_MODES)}, not {mode!r}"
            )
        return mode

    def gpu_count(self) -> int:
        try:
            n = int(self.gpus or 0)
        except (TypeError, ValueError):
            raise AirflowFailException(f"gpus must be a whole number, not {self.gpus!r}") from None
        if n < 0:
            raise AirflowFailException(f"gpus must be >= 0, not {n}")
        return n

    # -- kubernetes -------------------------------------------------------------------------

    def sizing(self) -> podspec.Sizing:
        """What this step's pod requests: sized from the step and its work, then the user's."""
        opts = self.step_options()
        base = podspec.sizing(self.step, gpus=self.gpu_count(), group=self.group, options=opts)
        try:
            return podspec.override(
                base, cpu=self.cpu, memory=self.memory, scratch=self.scratch, shm=self.shm
            )
        except ValueError as e:
            raise AirflowFailException(f"{self.task_id}: {e}") from None

    def build_pod_request_obj(self, context: Any = None, *, dry_run: bool = False) -> k8s.V1Pod:
        """The KubernetesPodOperator pod plus our argv, GPU limit, tolerations and labels, the
        step's resources, volumes and security context (``operators.pod``).

        Idempotent: every call renders the same pod from the operator's fields (the base class
        extends ``env_vars`` in place, so it is restored here)."""
        env_vars = self.env_vars
        try:
            pod = super().build_pod_request_obj(context, dry_run=dry_run)
        finally:
            self.env_vars = env_vars
        container = next(
            (c for c in pod.spec.containers if c.name == self.base_container_name),
            pod.spec.containers[0],
        )
        container.args = self.argv(result_json=XCOM_RESULT if self.do_xcom_push else None)
        # the CLI writes its one-line reason where Kubernetes reads the termination message
        container.termination_message_path = container.termination_message_path or TERMINATION_LOG
        env = [e for e in container.env or [] if e.name != TERMINATION_LOG_ENV]
        container.env = [
            *env,
            k8s.V1EnvVar(name=TERMINATION_LOG_ENV, value=container.termination_message_path),
        ]
        gpus = self.gpu_count()
        if gpus:
            res = container.resources or k8s.V1ResourceRequirements()
            limits = {**(res.limits or {}), GPU_RESOURCE: str(gpus)}
            requests = dict(res.requests or {})
            if GPU_RESOURCE in requests:
                requests[GPU_RESOURCE] = str(gpus)
            container.resources = k8s.V1ResourceRequirements(
                limits=limits, requests=requests or None, claims=res.claims
            )
            tolerations = list(pod.spec.tolerations or [])
            if not any(t.key == GPU_RESOURCE for t in tolerations):
                tolerations.append(
                    k8s.V1Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
                )
            pod.spec.tolerations = tolerations
        size, claim = self.sizing(), self.weights_cache_claim or None
        if claim and size.cache:  # the cache is on the PVC, not the node's disk
            size = dataclasses.replace(size, cache=0)
        podspec.apply_resources(container, size)
        podspec.apply_volumes(pod, container, size, claim)
        podspec.apply_security(pod, container)
        podspec.apply_sidecar(pod)
        if template_flag("spot", self.spot):
            podspec.apply_spot(pod)
        pod.metadata.labels = {
            **(pod.metadata.labels or {}),
            STEP_LABEL: self.step,
            "app.kubernetes.io/name": "airflow-curator",
        }
        return pod

    # -- running ----------------------------------------------------------------------------

    def execute(self, context: Any) -> Any:
        if context.get("map_index_template") is None and self.group:
            context["map_index_template"] = MAP_INDEX_TEMPLATE
        mode = self.execution_mode()
        self._run_id = dag_run_id(context)
        self.log.info("airflow-curator %s (%s): %s", self.step, mode, json.dumps(self.argv()))
        # kubernetes: defers when deferrable, and the result then comes via trigger_reentry
        result = self.execute_local(context) if mode == "local" else super().execute(context)
        return self.finish(context, result)

    def trigger_reentry(self, context: Any, event: dict[str, Any]) -> Any:
        return self.finish(context, super().trigger_reentry(context, event))

    def cleanup(self, pod: Any, remote_pod: Any, *args: Any, **kwargs: Any) -> None:
        """The pod operator's clean-up, which raises on a failed pod (deferred or not): the
        failure then follows the exit-code contract, with the step's own reason."""
        try:
            super().cleanup(pod, remote_pod, *args, **kwargs)
        except AirflowSkipException:
            raise
        except AirflowException as e:
            raise pod_failure(self.step, remote_pod, self.base_container_name, e) from e

    def execute_local(self, context: Any) -> dict[str, Any]:
        self._runner = LocalRunner(log=self.log)
        with self._credentials_env() as env:
            try:
                return self._runner.run(self.argv(), env=env)
            except StepFailed as e:
                raise step_failure(self.step, e.returncode, e.reason) from None
            finally:
                self._runner = None

    def on_kill(self) -> None:
        if self._runner is not None:
            self._runner.kill()
            return
        super().on_kill()

    def finish(self, context: Any, result: Any) -> Any:
        """Log the result and attach it to this task's asset events (``outlets``)."""
        if not isinstance(result, dict):
            if self.do_xcom_push:
                raise AirflowException(f"step {self.step} returned no JSON object: {result!r}")
            return result
        summary = {k: v for k, v in result.items() if _scalar(v)}
        self.log.info("airflow-curator %s result: %s", self.step, json.dumps(summary))
        events = context.get("outlet_events")
        if events is not None:
            for outlet in self.outlets or []:
                if isinstance(outlet, Asset):
                    events[outlet].extra = self.asset_extra(result)
        if self.returns:  # Airflow maps only over return values: return the list, keep the rest
            context["ti"].xcom_push(key=RESULT_KEY, value=result)
            return result.get(self.returns, [])
        return result

    def asset_extra(self, result: dict[str, Any]) -> dict[str, Any]:
        extra = {k: v for k, v in result.items() if _scalar(v)}
        if self.output_uri:
            extra.setdefault("output", self.output_uri)
        return extra

    @contextlib.contextmanager
    def _credentials_env(self) -> Iterator[dict[str, str]]:
        """Environment giving the step the ``gcp_conn_id`` key file (local mode only)."""
        if not self.gcp_conn_id:
            yield {}
            return
        from airflow.sdk import BaseHook

        extra = BaseHook.get_connection(self.gcp_conn_id).extra_dejson
        env: dict[str, str] = {}

        def field(name: str) -> Any:
            return extra.get(name) or extra.get(f"extra__google_cloud_platform__{name}")

        if field("project"):
            env["GOOGLE_CLOUD_PROJECT"] = str(field("project"))
        key_path, keyfile = field("key_path"), field("keyfile_dict")
        if key_path:
            env["GOOGLE_APPLICATION_CREDENTIALS"] = str(key_path)
            yield env
        elif keyfile:
            with tempfile.TemporaryDirectory(prefix="airflow-curator-gcp-") as tmp:
                path = os.path.join(tmp, "key.json")
                with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                    f.write(keyfile if isinstance(keyfile, str) else json.dumps(keyfile))
                env["GOOGLE_APPLICATION_CREDENTIALS"] = path
                yield env
        else:
            yield env  # the connection only names a project: default credentials


def dag_run_id(context: Any) -> str | None:
    """``<dag_id>/<run_id>``: what the tasks of one DAG run (mapped ones, retries) share and
    another run does not, as the owner of an output's lease (``core.io.lease``)."""
    ti = context.get("ti") if context else None
    dag_id, run_id = getattr(ti, "dag_id", None), getattr(ti, "run_id", None)
    return f"{dag_id}/{run_id}" if isinstance(dag_id, str) and isinstance(run_id, str) else None


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def template_flag(name: str, value: Any) -> bool:
    """A boolean from a templated field: the one parser for flags, ``enabled`` and ``dedup``.
    Rendered text too (``"True"``, ``"false"``, ``"on"``); nothing, ``""`` and ``"None"`` (what
    a null renders to as text) are false."""
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "none", "null", ""):
        return False
    raise AirflowFailException(f"{name} is a flag: true or false, not {value!r}")
