"""A real Airflow deployment for tests: api-server, scheduler, dag-processor and triggerer.

Each in its own process group (``setsid``), all on 127.0.0.1 (the api-server on a free port chosen
at run time, the scheduler and triggerer with ``--skip-serve-logs``), LocalExecutor with
``[core] parallelism`` 4, SQLite in a temporary ``AIRFLOW_HOME``, the simple auth manager with an
``admin`` and a user ``nobody`` whose token grants nothing (``USERS``; REST and the browser get
their tokens from ``/auth/token``). ``stop()`` ends every process group it started; a reaper
ends them if the test process is killed before it can.

The components import this checkout (``PYTHONPATH``) with this checkout's entry points: when the
installed distribution's metadata predates an entry point of ``pyproject.toml`` (the shared
virtualenv of a development machine), an overlay ``.dist-info`` gives them, as ``pip install``
would.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any
from urllib.parse import quote

import httpx
import tomllib

from airflow_curator.testing.reaper import Reaper

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DAG_ID = "curate_image_text_pairs"
COMPONENTS = {
    "api-server": ["api-server", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}
HEALTH = ("metadatabase", "scheduler", "triggerer", "dag_processor")
USERS = {"admin": "admin", "nobody": ""}  # name -> simple auth manager role ("": none)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def entry_point_overlay(folder: str) -> str | None:
    """A ``.dist-info`` with this checkout's entry points when the installed one lacks some;
    returns the folder to put on ``PYTHONPATH`` (None when the installed metadata is current)."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    wanted = {
        (group, name, target)
        for group, points in project["entry-points"].items()
        for name, target in points.items()
    }
    installed = {
        (e.group, e.name, e.value) for e in metadata.distribution(project["name"]).entry_points
    }
    if wanted <= installed:
        return None
    info = os.path.join(folder, f"airflow_curator-{project['version']}.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        for group, points in project["entry-points"].items():
            f.write(f"[{group}]\n" + "".join(f"{n} = {t}\n" for n, t in points.items()) + "\n")
    return folder


class Deployment:
    """``start()``, then ``api()`` for REST calls; ``stop()`` whatever happened."""

    def __init__(self, work: str, env: Mapping[str, str] | None = None) -> None:
        self.work = work
        self.home = os.path.join(work, "airflow")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.reaper: Reaper | None = None
        self.logs = os.path.join(self.home, "component-logs")
        overlay = entry_point_overlay(os.path.join(work, "entry-points"))
        path = [p for p in (overlay, REPO, os.environ.get("PYTHONPATH")) if p]
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": self.home,
            "AIRFLOW__CORE__DAGS_FOLDER": os.path.join(REPO, "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
                f"{u}:{r}" for u, r in USERS.items()
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": os.path.join(
                self.home, "passwords.json"
            ),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home}/airflow.db",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": os.path.join(self.home, "logs"),
            "AIRFLOW__CURATOR__EXECUTION": "local",
            "PYTHONPATH": os.pathsep.join(path),
            "HF_HUB_OFFLINE": "1",
            **(env or {}),
        }
        self.passwords = {user: secrets.token_urlsafe(16) for user in USERS}
        self._tokens: dict[str, str] = {}

    # -- processes --------------------------------------------------------------------------

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        cmd = [os.path.join(os.path.dirname(sys.executable), "airflow"), *args]
        proc = subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            )
        return proc

    def start(self, timeout: float = 240) -> None:
        os.makedirs(self.logs, exist_ok=True)
        with open(self.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"], "w") as f:
            json.dump(self.passwords, f)
        self.airflow("db", "migrate")
        self.airflow("dags", "reserialize")  # parsed now, not after the processor's interval
        airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
        self.reaper = Reaper()
        for name, args in COMPONENTS.items():
            with open(os.path.join(self.logs, f"{name}.log"), "wb") as log:
                self.procs[name] = subprocess.Popen(
                    [airflow, *(a.format(port=self.port) for a in args)],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # its own process group, stopped as one
                )
            self.reaper.watch(self.procs[name].pid)
        self.wait_for(self._healthy, timeout, "the four components to be healthy")

    def check_alive(self) -> None:
        """Raise if a component has died (a scheduler that crashed leaves runs queued forever)."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def _healthy(self) -> bool:
        try:
            health = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return False
        return all((health.get(c) or {}).get("status") == "healthy" for c in HEALTH)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        with open(os.path.join(self.logs, f"{name}.log"), "rb") as f:
            return f.read().decode(errors="replace")[-chars:]

    def stop(self, grace: float = 20) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):  # and whatever it left in its group
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.procs.clear()
        if self.reaper is not None:
            self.reaper.forget()
            self.reaper.close()
            self.reaper = None

    # -- REST -------------------------------------------------------------------------------

    def token(self, user: str = "admin") -> str:
        """A JWT for ``user``, from the auth manager's login endpoint."""
        if user not in self._tokens:
            body = {"username": user, "password": self.passwords[user]}
            r = httpx.post(f"{self.url}/auth/token", json=body, timeout=30)
            r.raise_for_status()
            self._tokens[user] = r.json()["access_token"]
        return self._tokens[user]

    def request(
        self, method: str, path: str, *, user: str | None = "admin", **kwargs: Any
    ) -> httpx.Response:
        """A request as ``user`` (None: without credentials)."""
        headers = dict(kwargs.pop("headers", {}))
        if user is not None:
            headers["Authorization"] = f"Bearer {self.token(user)}"
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kwargs)

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.request(method, "/api/v2" + path, **kwargs)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:2000]}")
        return r.json() if r.content else None

    def wait_for(
        self, check: Callable[[], Any], timeout: float, what: str, every: float = 2
    ) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n}\n{self.log_tail(n, 1500)}" for n in self.procs)
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")
            time.sleep(every)

    def run(self, run_id: str, dag_id: str = DAG_ID) -> dict[str, Any]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{quote_run(run_id)}")

    def wait_for_run(self, run_id: str, timeout: float, dag_id: str = DAG_ID) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            run = self.run(run_id, dag_id)
            return run if run["state"] in ("success", "failed") else None

        return self.wait_for(done, timeout, f"run {run_id} to finish")

    def task_instances(self, run_id: str, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
        return self.api(
            "GET", f"/dags/{dag_id}/dagRuns/{quote_run(run_id)}/taskInstances?limit=1000"
        )["task_instances"]

    def xcom(
        self, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1
    ) -> Any:
        path = (
            f"/dags/{DAG_ID}/dagRuns/{quote_run(run_id)}/taskInstances/{task_id}/xcomEntries/{key}"
        )
        return self.api("GET", f"{path}?map_index={map_index}&deserialize=true")["value"]

    def task_log(self, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1) -> str:
        path = (
            f"/dags/{DAG_ID}/dagRuns/{quote_run(run_id)}/taskInstances/{task_id}/logs/{try_number}"
        )
        content = self.api("GET", f"{path}?map_index={map_index}&full_content=true")["content"]
        if isinstance(content, list):  # structured log lines
            return "\n".join(
                f"{c.get('level', '')} {c.get('event', '')}" if isinstance(c, dict) else str(c)
                for c in content
            )
        return str(content)


def quote_run(run_id: str) -> str:
    return quote(run_id, safe="")
