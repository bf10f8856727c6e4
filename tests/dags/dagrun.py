"""Run the example DAG with a real Airflow (SQLite, its own AIRFLOW_HOME) and report as JSON.

Runs in its own process (``python -m tests.dags.dagrun WORKDIR``) so Airflow's configuration,
read once per process, never leaks into other tests. Scenarios, on a generated dataset and a
tiny model, all in local execution:

- ``first``: a manual run with params, several shard groups (mapped tasks);
- ``rerun``: the same run again (must redo nothing and change no output byte);
- ``backfill``: a run for a logical date with empty ``dataset``/``output`` params, which must
  read the dated drop folder and write the dated output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DAG_ID = "curate_image_text_pairs"
BACKFILL_DATE = "2026-03-01"


def airflow_env(home: str) -> dict[str, str]:
    return {
        "AIRFLOW_HOME": home,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": os.path.join(REPO, "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{os.path.join(home, 'airflow.db')}",
        "AIRFLOW__CURATOR__EXECUTION": "local",
        "HF_HUB_OFFLINE": "1",
    }


def files(folder: str) -> dict[str, list[Any]]:
    """Dataset files (not the work folder): name -> [sha256, mtime_ns]."""
    out: dict[str, list[Any]] = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[name] = [digest, os.stat(path).st_mtime_ns]
    return out


def plant_exact_duplicate(dataset: str, original: str, copy: str) -> None:
    """Give record ``copy`` the very image bytes of ``original`` (the dedup stage must drop it)."""
    import tarfile

    from airflow_curator.testing.dataset import add_member

    def members(path: str) -> list[tuple[str, bytes]]:
        with tarfile.open(path) as tar:
            return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]

    image = dict(members(os.path.join(dataset, f"{original[:5]}.tar")))[f"{original}.jpg"]
    path = os.path.join(dataset, f"{copy[:5]}.tar")
    rewritten = [(n, image if n == f"{copy}.jpg" else d) for n, d in members(path)]
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in rewritten:
            add_member(tar, name, data)


def run_report(dag: Any, dr: Any, output: str) -> dict[str, Any]:
    from airflow.models import TaskInstance
    from airflow.models.asset import AssetEvent
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter_by(dag_id=DAG_ID, run_id=dr.run_id).all()
        xcoms = session.query(XComModel).filter_by(dag_id=DAG_ID, run_id=dr.run_id).all()
        events = session.query(AssetEvent).filter_by(source_run_id=dr.run_id).all()
        return {
            "state": str(dr.state),
            "run_id": dr.run_id,
            "tasks": sorted(
                [t.task_id, t.map_index, str(t.state), t.rendered_map_index] for t in tis
            ),
            "xcom": {
                f"{x.task_id}[{x.map_index}].{x.key}": XComModel.deserialize_value(x) for x in xcoms
            },
            "asset_events": [
                {"name": e.asset.name, "uri": e.asset.uri, "extra": e.extra} for e in events
            ],
            "files": files(output) if os.path.isdir(output) else {},
        }


def main(work: str) -> dict[str, Any]:
    home = os.path.join(work, "airflow")
    os.makedirs(home, exist_ok=True)
    os.environ.update(airflow_env(home))
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    t0 = time.perf_counter()
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True)
    report: dict[str, Any] = {"migrate_s": round(time.perf_counter() - t0, 1)}

    from airflow_curator.testing.dataset import write_demo_dataset
    from airflow_curator.testing.models import write_tiny_models

    drops, curated = os.path.join(work, "drops"), os.path.join(work, "curated")
    dataset = os.path.join(drops, "manual")
    report["ids"] = write_demo_dataset(dataset, shards=3, records_per_shard=8, seed=3)
    plant_exact_duplicate(dataset, "000000000", "000020001")
    report["backfill_ids"] = write_demo_dataset(
        os.path.join(drops, BACKFILL_DATE), shards=2, records_per_shard=5, seed=4
    )
    models = write_tiny_models(os.path.join(work, "models"))

    from airflow.models.dagbag import DagBag

    bag = DagBag(os.path.join(REPO, "dags"))
    report["import_errors"] = {k: str(v) for k, v in bag.import_errors.items()}
    dag = bag.get_dag(DAG_ID)
    report["params"] = sorted(dag.params)
    for task in dag.tasks:
        task.retries = 0  # a failure should fail the test now, not after retry delays

    base = {
        "drops": drops,
        "curated": curated,
        "execution": "local",
        "model": models["model"],
        "weights": models["weights"],
        "aesthetic_weights": models["aesthetic_weights"],
        "nsfw_weights": models["nsfw_weights"],
        "device": "cpu",
        "batch_size": 16,
        "min_clip_score": 0.0,
        "samples_per_shard": 2,
        "group_bytes": 1,  # one shard per input group, one output shard per output group
        "dedup_clusters": 2,
        "dedup_eps": 1e-6,  # tiny random models embed every image alike: exact copies only
    }
    output = os.path.join(work, "out")
    manual = {**base, "dataset": dataset, "output": output}
    for name, kwargs in (
        ("first", {"run_conf": manual}),
        ("rerun", {"run_conf": manual}),
        # dag.test keeps the previous run's params on the DAG object: clear them explicitly
        (
            "backfill",
            {"run_conf": {**base, "dataset": "", "output": ""}, "logical_date": BACKFILL_DATE},
        ),
    ):
        if "logical_date" in kwargs:
            import pendulum

            kwargs["logical_date"] = pendulum.parse(kwargs["logical_date"])
        t0 = time.perf_counter()
        dr = dag.test(**kwargs)
        out = output if name != "backfill" else os.path.join(curated, BACKFILL_DATE)
        report[name] = run_report(dag, dr, out)
        report[name]["seconds"] = round(time.perf_counter() - t0, 1)
        report[name]["output"] = out
    return report


if __name__ == "__main__":
    result = main(sys.argv[1])
    with open(os.path.join(sys.argv[1], "report.json"), "w") as f:
        json.dump(result, f, indent=1, sort_keys=True, default=str)
