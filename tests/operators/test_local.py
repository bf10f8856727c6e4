"""Local execution: the real step in a subprocess, its JSON result as the task's return value."""

from __future__ import annotations

import json
import os

import pytest
from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_curator.core.dataset.discovery import load_manifest
from airflow_curator.operators import CommitOperator, IndexShardsOperator, ShardDiscoveryOperator
from airflow_curator.operators.base import RESULT_KEY, CuratorOperator, default_execution
from airflow_curator.operators.local import LocalRunner, StepFailed


class FakeTI:
    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def test_discover_returns_groups_and_pushes_the_full_result(demo_dataset, tmp_path):
    path, ids = demo_dataset
    out = str(tmp_path / "out")
    op = ShardDiscoveryOperator(
        task_id="discover",
        dataset=path,
        output_uri=out,
        execution="local",
        options={"group-bytes": 1},
    )
    ti = FakeTI()
    groups = op.execute({"ti": ti})
    assert [g["shards"] for g in groups] == ["0", "1"]
    assert [g["label"] for g in groups] == ["00000", "00001"]
    result = ti.pushed[RESULT_KEY]
    assert result["records"] == len(ids) and result["groups"] == groups
    manifest = load_manifest(os.path.join(out, "_work", "manifest.json"))
    assert [s.id for s in manifest.shards] == [0, 1]


def test_index_works_on_its_group_only(demo_dataset):
    path, _ = demo_dataset
    op = IndexShardsOperator(
        task_id="index",
        dataset=path,
        execution="local",
        group={"shards": "1", "label": "00001"},
    )
    context: dict = {}
    result = op.execute(context)
    assert result["written"] == 1 and result["shards"] == 1
    assert sorted(f for f in os.listdir(path) if f.endswith(".idx")) == ["00001.idx"]
    import jinja2

    label = jinja2.Environment().from_string(context["map_index_template"]).render(task=op)
    assert label == "shards 00001"
    again = op.execute({})
    assert again["written"] == 0 and again["skipped"] == 1


def test_a_failing_step_fails_the_task_with_its_reason(tmp_path):
    op = IndexShardsOperator(task_id="index", dataset=str(tmp_path / "nope"), execution="local")
    with pytest.raises(AirflowException, match=r"airflow-curator index") as e:
        op.execute({})
    assert "nope" in str(e.value)


def test_bad_arguments_fail_without_retry(demo_dataset):
    path, _ = demo_dataset
    op = IndexShardsOperator(
        task_id="index", dataset=path, execution="local", options={"workers": "many"}
    )
    with pytest.raises(AirflowFailException, match="exited with code 2"):
        op.execute({})
    with pytest.raises(ValueError, match="no option 'colour'"):
        IndexShardsOperator(task_id="i", dataset=path, options={"colour": "red"}).argv()


def test_flags_and_empty_values_from_forms(demo_dataset):
    path, _ = demo_dataset
    op = IndexShardsOperator(
        task_id="index", dataset=path, options={"force": "false", "verify": "True", "workers": ""}
    )
    assert op.argv() == ["index", "--dataset", path, "--verify"]
    with pytest.raises(AirflowFailException, match="is a flag"):
        IndexShardsOperator(task_id="i", dataset=path, options={"force": "maybe"}).argv()


def test_execution_mode_from_config(monkeypatch):
    monkeypatch.delenv("AIRFLOW__CURATOR__EXECUTION", raising=False)
    assert default_execution() == "local"
    monkeypatch.setenv("AIRFLOW__CURATOR__EXECUTION", "Kubernetes")
    op = IndexShardsOperator(task_id="index", dataset="d", execution="")
    assert op.execution_mode() == "kubernetes"
    assert IndexShardsOperator(task_id="i", dataset="d", execution="local").execution_mode() == (
        "local"
    )
    with pytest.raises(AirflowFailException, match="execution must be one of"):
        IndexShardsOperator(task_id="i", dataset="d", execution="ray").execution_mode()


def test_unknown_step_fails_at_parse_time():
    with pytest.raises(ValueError, match="unknown step 'transmogrify'"):
        CuratorOperator(task_id="x", step="transmogrify")


def test_commit_emits_the_asset_event_with_counts(monkeypatch):
    from airflow.sdk.execution_time.context import OutletEventAccessors

    result = {"records": 14, "shards": 3, "bytes": 60928, "manifest": "/o/_manifest.json"}
    monkeypatch.setattr(LocalRunner, "run", lambda self, argv, env=None: dict(result))
    asset = Asset(name="curated", uri="gs://b/curated")
    op = CommitOperator(task_id="commit", output_uri="/o", execution="local", outlets=[asset])
    events = OutletEventAccessors()
    assert op.execute({"outlet_events": events}) == result
    assert events[asset].extra == {**result, "output": "/o"}


def test_gcp_connection_key_file_reaches_the_step(monkeypatch, demo_dataset):
    keyfile = {"type": "service_account", "project_id": "p"}
    monkeypatch.setenv(
        "AIRFLOW_CONN_GCS_TEST",
        json.dumps(
            {
                "conn_type": "google_cloud_platform",
                "extra": {"keyfile_dict": keyfile, "project": "p"},
            }
        ),
    )
    seen = {}

    def fake_run(self, argv, env=None):
        seen.update(env)
        with open(env["GOOGLE_APPLICATION_CREDENTIALS"]) as f:
            seen["key"] = json.load(f)
        seen["mode"] = os.stat(env["GOOGLE_APPLICATION_CREDENTIALS"]).st_mode & 0o777
        return {}

    monkeypatch.setattr(LocalRunner, "run", fake_run)
    path, _ = demo_dataset
    op = IndexShardsOperator(task_id="i", dataset=path, execution="local", gcp_conn_id="gcs_test")
    op.execute({})
    assert seen["key"] == keyfile and seen["mode"] == 0o600
    assert seen["GOOGLE_CLOUD_PROJECT"] == "p"
    assert not os.path.exists(seen["GOOGLE_APPLICATION_CREDENTIALS"])  # removed afterwards


def test_runner_reports_the_last_error_line(tmp_path):
    runner = LocalRunner()
    with pytest.raises(StepFailed) as e:
        runner.run(["discover", "--dataset", str(tmp_path / "missing")])
    assert e.value.returncode == 2  # a missing input folder: the request is wrong
    assert e.value.reason.startswith("airflow-curator discover: error:")


def test_store_false_flags_follow_their_value(demo_dataset):
    path, _ = demo_dataset
    off = ShardDiscoveryOperator(task_id="d", dataset=path, options={"count": False})
    on = ShardDiscoveryOperator(task_id="d", dataset=path, options={"count": "true"})
    assert off.argv() == ["discover", "--dataset", path, "--no-count"]
    assert on.argv() == ["discover", "--dataset", path]


def test_kill_stops_the_step_process(tmp_path, monkeypatch):
    import threading
    import time

    from airflow_curator.operators import local

    (tmp_path / "sleepy_step.py").write_text(
        "import time\nprint('started', flush=True)\ntime.sleep(60)\n"
    )
    monkeypatch.setattr(local, "CLI_MODULE", "sleepy_step")
    runner = LocalRunner()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            runner.run(["index"], env={"PYTHONPATH": str(tmp_path)})
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run)
    t0 = time.monotonic()
    thread.start()
    while runner.proc is None and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    time.sleep(0.3)
    runner.kill()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - t0 < 20
    assert isinstance(errors[0], StepFailed) and errors[0].returncode < 0


def test_step_lines_keep_their_log_level(demo_dataset, caplog):
    """The task log gets each line at the level the step logged it, so the UI's level filter
    finds the warnings; the step's error line and tracebacks are errors."""
    import logging

    path, _ = demo_dataset
    os.remove(os.path.join(path, "00001.parquet"))
    log = logging.getLogger("test.step")
    with caplog.at_level(logging.DEBUG, logger="test.step"):
        LocalRunner(log=log).run(["discover", "--dataset", path, "--on-invalid", "skip"])
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "test.step"]
    (warning,) = [m for lvl, m in records if lvl == logging.WARNING]
    assert warning.startswith("airflow_curator.core.dataset.discovery: skipping shard 00001:")
    assert any(lvl == logging.INFO and "discovered 1 shards" in m for lvl, m in records)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="test.step"), pytest.raises(StepFailed):
        LocalRunner(log=log).run(["discover", "--dataset", os.path.join(path, "nope")])
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and errors[-1].startswith("airflow-curator discover: error: dataset folder")


def test_relay_levels_of_continuation_lines(caplog):
    import logging

    from airflow_curator.operators.local import LineRelay

    log = logging.getLogger("test.relay")
    relay = LineRelay(log)
    lines = [
        "2026-03-01 12:00:00,001 WARNING airflow_curator.x: weights w are not pinned",
        "  a continuation of that record",
        "2026-03-01 12:00:01,002 INFO airflow_curator.x: done",
        "plain output",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "KeyError: 'k'",
    ]
    with caplog.at_level(logging.DEBUG, logger="test.relay"):
        for line in lines:
            relay.line(line)
    got = [(logging.getLevelName(r.levelno), r.getMessage()) for r in caplog.records]
    assert got == [
        ("WARNING", "airflow_curator.x: weights w are not pinned"),
        ("WARNING", "  a continuation of that record"),
        ("INFO", "airflow_curator.x: done"),
        ("INFO", "plain output"),
        ("ERROR", "Traceback (most recent call last):"),
        ("ERROR", '  File "x.py", line 1, in <module>'),
        ("ERROR", "KeyError: 'k'"),
    ]
