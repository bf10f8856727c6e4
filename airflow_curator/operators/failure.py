"""The exit-code contract on the Airflow side: which failed steps are retried.

One rule for both execution modes (DESIGN.md, "Errors and exit codes"): exit 1 (the data is at
fault) and exit 2 (the request is wrong) fail the task at once, since a retry reads the same data
with the same arguments; exit 75 (storage or network unavailable, a preempted pod) and anything
else (a bug, a killed process) are left to Airflow's retries. A pod the cluster disrupted (a
spot node reclaimed, a node shut down, an eviction or preemption) is retried whatever its
container's exit code, since the step was stopped from outside (exit 75's meaning). Local mode
gets the code from the subprocess, kubernetes mode from the base container's terminated state,
and the step's one-line reason from its output or the pod's termination message. The codes are those
of ``core.errors``.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_curator.core.errors import DATA_EXIT, USAGE_EXIT

NO_RETRY_EXITS = frozenset({DATA_EXIT, USAGE_EXIT})
# where the CLI writes its one-line reason in a pod (the container's terminationMessagePath)
TERMINATION_LOG = "/dev/termination-log"


def step_failure(step: str, code: int | None, reason: str) -> AirflowException:
    """The exception a task raises for a step that exited with ``code``."""
    text = reason.strip().removeprefix(f"airflow-curator {step}: error: ") or "no reason given"
    if code is None:
        message = f"airflow-curator {step} did not finish: {text}"
    else:
        message = f"airflow-curator {step} exited with code {code}: {text}"
    if code in NO_RETRY_EXITS:
        return AirflowFailException(message)  # the same input fails the same way: no retry
    return AirflowException(message)  # 75, a bug (70), a signal, an evicted pod: retried


def container_exit(pod: Any, container: str) -> tuple[int | None, str | None]:
    """(exit code, termination message) of a finished container, (None, None) if unknown
    (never started, still running, or the pod is gone)."""
    statuses = getattr(getattr(pod, "status", None), "container_statuses", None) or []
    status = next((s for s in statuses if s.name == container), None)
    terminated = getattr(getattr(status, "state", None), "terminated", None)
    if terminated is None:
        return None, None
    return terminated.exit_code, terminated.message


# Pod status reasons of a pod the cluster stopped: eviction (node pressure, the eviction API),
# graceful node shutdown (a spot or preemptible node reclaimed), a lost node.
DISRUPTED_REASONS = frozenset({"Evicted", "Shutdown", "NodeShutdown", "Terminated", "NodeLost"})
DISRUPTION_CONDITION = "DisruptionTarget"  # Kubernetes 1.26+: why the pod is being stopped


def disruption(pod: Any) -> str | None:
    """Why the cluster stopped this pod (preempted, evicted, its node shut down), else None."""
    status = getattr(pod, "status", None)
    if status is None:
        return None
    for cond in getattr(status, "conditions", None) or []:
        if cond.type == DISRUPTION_CONDITION and str(cond.status) == "True":
            return ": ".join(x for x in (cond.reason, cond.message) if x) or cond.type
    if status.reason in DISRUPTED_REASONS:
        return ": ".join(x for x in (status.reason, status.message) if x)
    return None


def pod_failure(step: str, pod: Any, container: str, error: BaseException) -> AirflowException:
    """The task's exception for a failed step pod: by the container's exit code, with the
    reason the CLI wrote to its termination log (else the pod operator's own message); a pod
    the cluster disrupted is retried (exit 75) whatever its container exited with."""
    code, message = container_exit(pod, container)
    stopped = disruption(pod)
    if stopped is not None:
        name = getattr(getattr(pod, "metadata", None), "name", None) or "the pod"
        return AirflowException(
            f"airflow-curator {step}: pod {name} was stopped by the cluster ({stopped}); "
            f"exit code {code} (will retry)"
        )
    reason = (message or "").strip() or str(error)
    return step_failure(step, code, reason)
