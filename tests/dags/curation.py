"""The example DAG on a real deployment (``deployment.Deployment``), as its users drive it.

Dated drops under ``CURATOR_DROPS`` (a generated dataset per day, tiny random models as the
deployment's param defaults in ``CURATOR_PARAMS``), then through the REST API:

- a trigger with an **empty conf** for ``TRIGGER_DATE``: the dated drop, over several mapped
  shard groups, with a planted exact duplicate for the dedup stage;
- a backfill over ``BACKFILL_DATES``: two drops and one date without a drop (``MISSING_DATE``),
  with the dedup stage off (its conf), which skips that stage's tasks;
- the trigger's run cleared and run again: nothing is redone, no byte changes.

``curate()`` returns what the tests check; the deployment stays up for the browser tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any

from tests.dags.deployment import DAG_ID, Deployment, quote_run

TRIGGER_DATE = "2026-03-02"
BACKFILL_DATES = ("2026-03-05", "2026-03-06", "2026-03-07")
MISSING_DATE = "2026-03-06"
RUN_TIMEOUT = 900


@dataclass
class Run:
    run_id: str
    state: str
    output: str
    tasks: list[dict[str, Any]]
    files: dict[str, list[Any]] = field(default_factory=dict)

    def of(self, task_id: str) -> list[dict[str, Any]]:
        return sorted((t for t in self.tasks if t["task_id"] == task_id), key=_map_index)


@dataclass
class Curation:
    deployment: Deployment
    drops: str
    curated: str
    ids: dict[str, list[str]]
    trigger: Run
    rerun: Run
    backfill: dict[str, Run]
    backfill_id: int
    seconds: dict[str, float]

    def xcom(self, run: Run, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        return self.deployment.xcom(run.run_id, task_id, key, map_index)


def _map_index(t: dict[str, Any]) -> int:
    return t["map_index"]


def files(folder: str) -> dict[str, list[Any]]:
    """Dataset files (not the work folder): name -> [sha256, mtime_ns]."""
    out: dict[str, list[Any]] = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[name] = [digest, os.stat(path).st_mtime_ns]
    return out


def plant_exact_duplicate(dataset: str, original: str, copy: str) -> None:
    """Give record ``copy`` the very image bytes of ``original`` (the dedup stage must drop it)."""
    from airflow_curator.testing.dataset import add_member

    def members(path: str) -> list[tuple[str, bytes]]:
        with tarfile.open(path) as tar:
            return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore[union-attr]

    image = dict(members(os.path.join(dataset, f"{original[:5]}.tar")))[f"{original}.jpg"]
    path = os.path.join(dataset, f"{copy[:5]}.tar")
    rewritten = [(n, image if n == f"{copy}.jpg" else d) for n, d in members(path)]
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in rewritten:
            add_member(tar, name, data)


def write_inputs(work: str) -> tuple[str, str, dict[str, list[str]], dict[str, Any]]:
    """Dated drops, tiny models, and the deployment's param defaults for them."""
    from airflow_curator.testing.dataset import write_demo_dataset
    from airflow_curator.testing.models import write_tiny_models

    drops, curated = os.path.join(work, "drops"), os.path.join(work, "curated")
    ids = {TRIGGER_DATE: write_demo_dataset(f"{drops}/{TRIGGER_DATE}", 2, 8, seed=3)}
    plant_exact_duplicate(f"{drops}/{TRIGGER_DATE}", "000000000", "000010001")
    for seed, day in enumerate(d for d in BACKFILL_DATES if d != MISSING_DATE):
        ids[day] = write_demo_dataset(f"{drops}/{day}", 1, 4, seed=10 + seed)
    models = write_tiny_models(os.path.join(work, "models"))
    params = {
        **{k: models[k] for k in ("model", "weights", "aesthetic_weights", "nsfw_weights")},
        "device": "cpu",
        "batch_size": 16,
        "min_clip_score": 0.0,
        # the filters: the clip_threshold task and the annotate step's caption statistics
        "clip_score_top_fraction": 0.75,
        "min_caption_words": 3,
        "samples_per_shard": 6,
        "group_bytes": 1,  # one shard per input group, one output shard per output group
        "dedup_clusters": 2,
        "dedup_eps": 1e-6,  # tiny random models embed every image alike: exact copies only
    }
    return drops, curated, ids, params


def create_backfill(dep: Deployment, timeout: float = 120) -> int:
    """``POST /backfills``, again while SQLite is busy (the api-server answers 503 then)."""
    body = {
        "dag_id": DAG_ID,
        "from_date": f"{BACKFILL_DATES[0]}T00:00:00Z",
        "to_date": f"{BACKFILL_DATES[-1]}T00:00:00Z",
        "dag_run_conf": {"dedup": False},
        "max_active_runs": len(BACKFILL_DATES),
    }
    deadline = time.monotonic() + timeout
    while True:
        r = dep.request("POST", "/api/v2/backfills", json=body)
        if r.status_code != 503 or time.monotonic() > deadline:
            r.raise_for_status()
            return r.json()["id"]
        time.sleep(2)


def finished(dep: Deployment, run_id: str, output: str) -> Run:
    run = dep.wait_for_run(run_id, RUN_TIMEOUT)
    return Run(run_id, run["state"], output, dep.task_instances(run_id), files(output))


def curate(work: str) -> Curation:
    drops, curated, ids, params = write_inputs(work)
    dep = Deployment(
        work,
        {
            "CURATOR_DROPS": drops,
            "CURATOR_CURATED": curated,
            "CURATOR_PARAMS": json.dumps(params),
            "CURATOR_SCHEDULE": "@daily",
        },
    )
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    dep.start()
    try:
        seconds["start"] = time.perf_counter() - t0
        # runs are created while the DAG is paused, so the scheduler is not writing the same
        # rows meanwhile (SQLite: concurrent writers fail), then they all start on unpausing
        backfill_id = create_backfill(dep)
        trigger_id = dep.api(
            "POST",
            f"/dags/{DAG_ID}/dagRuns",
            json={"logical_date": f"{TRIGGER_DATE}T00:00:00Z", "conf": {}},
        )["dag_run_id"]
        dep.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
        t1 = time.perf_counter()
        trigger = finished(dep, trigger_id, f"{curated}/{TRIGGER_DATE}")
        seconds["trigger"] = time.perf_counter() - t1
        dep.api(  # every task of the run again, as "Clear" on the run in the UI does
            "POST",
            f"/dags/{DAG_ID}/clearTaskInstances",
            json={
                "dag_run_id": trigger_id,
                "dry_run": False,
                "only_failed": False,
                "reset_dag_runs": True,
            },
        )
        dep.wait_for(
            lambda: dep.run(trigger_id)["state"] != "success", 60, "the cleared run to restart", 1
        )
        backfill = {  # meanwhile
            day: finished(dep, f"backfill__{day}T00:00:00+00:00", f"{curated}/{day}")
            for day in BACKFILL_DATES
        }
        rerun = finished(dep, trigger_id, trigger.output)
        seconds["all runs"] = time.perf_counter() - t1
    except BaseException:
        dep.stop()
        raise
    with open(os.path.join(work, "seconds.json"), "w") as f:  # where the time goes
        json.dump({k: round(v, 1) for k, v in seconds.items()}, f)
    return Curation(dep, drops, curated, ids, trigger, rerun, backfill, backfill_id, seconds)


def report_url(dep: Deployment, run_id: str, task_id: str = "report") -> str:
    """The report link the UI shows on the task (``GET .../links``)."""
    path = f"/dags/{DAG_ID}/dagRuns/{quote_run(run_id)}/taskInstances/{task_id}/links"
    return dep.api("GET", path)["extra_links"]["Curation report"]
