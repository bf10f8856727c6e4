from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from airflow_curator.runtime.argv import build_argv
from airflow_curator.runtime.cli import main
from airflow_curator.runtime.registry import STEPS, step_parser


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow_curator.runtime.cli", *argv], capture_output=True, text=True
    )


def test_help_for_every_step():
    for step in STEPS:
        proc = run_cli(step, "--help")
        assert proc.returncode == 0, proc.stderr
        assert "--result-json" in proc.stdout


def test_discover_then_index_round_trip(demo_dataset, tmp_path):
    path, ids = demo_dataset
    result = tmp_path / "discover.json"
    manifest = tmp_path / "work" / "manifest.json"
    proc = run_cli(
        "discover",
        "--dataset",
        path,
        "--manifest",
        str(manifest),
        "--group-bytes",
        "1",
        "--result-json",
        str(result),
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(result.read_text())
    assert out["shards"] == 2 and out["records"] == len(ids)
    assert [g["shards"] for g in out["groups"]] == ["0", "1"]
    assert json.loads(manifest.read_text())["records"] == len(ids)

    proc = run_cli(
        "index",
        "--dataset",
        path,
        "--shards",
        out["groups"][1]["shards"],
        "--result-json",
        str(tmp_path / "index.json"),
    )
    assert proc.returncode == 0, proc.stderr
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["written"] == 1 and index["per_shard"][0]["shard"] == "00001"


def test_error_is_one_line_and_non_zero(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"")
    proc = run_cli("discover", "--dataset", str(tmp_path), "--no-count")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "airflow-curator discover: error: shard 00000: 00000.tar has no 00000.parquet"
    )


def test_bad_shard_spec_exits_2(demo_dataset, capsys):
    path, _ = demo_dataset
    assert main(["index", "--dataset", path, "--shards", "3-1"]) == 2
    assert "invalid shard spec" in capsys.readouterr().err


def test_result_goes_to_stdout_without_result_json(demo_dataset, capsys):
    path, _ = demo_dataset
    assert main(["discover", "--dataset", path]) == 0
    assert json.loads(capsys.readouterr().out)["shards"] == 2


def test_build_argv_matches_the_parser():
    argv = build_argv(
        "index",
        {"dataset": "gs://b/d; rm -rf /", "shards": "0-3", "force": True, "verify": False},
        result_json="/airflow/xcom/return.json",
    )
    assert argv == [
        "index",
        "--dataset",
        "gs://b/d; rm -rf /",
        "--shards",
        "0-3",
        "--force",
        "--result-json",
        "/airflow/xcom/return.json",
    ]
    with pytest.raises(ValueError, match="no option 'frobnicate'"):
        build_argv("index", {"frobnicate": 1})


@pytest.mark.parametrize("value", [True, False])
def test_build_argv_of_an_on_off_option_parses_back(value):
    argv = build_argv("commit", {"plan": "p.json", "sync": value})
    assert argv == ["commit", "--plan", "p.json", "--sync" if value else "--no-sync"]
    assert step_parser("commit").parse_args(argv[1:]).sync is value


def test_failure_reason_goes_to_the_termination_log(tmp_path, monkeypatch):
    """In a pod (``CURATOR_TERMINATION_LOG`` set to the container's terminationMessagePath) the
    one-line reason is also the pod's termination message; elsewhere nothing is written."""
    log = tmp_path / "termination-log"
    missing = str(tmp_path / "drops" / "2026-11-22")
    env = {**os.environ, "CURATOR_TERMINATION_LOG": str(log)}
    proc = subprocess.run(
        [sys.executable, "-m", "airflow_curator.runtime.cli", "discover", "--dataset", missing],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode in (1, 2)
    (line,) = [t for t in proc.stderr.splitlines() if ": error: " in t]
    assert (
        log.read_text()
        == line
        == f"airflow-curator discover: error: dataset folder {missing} does not exist"
    )
    log.unlink()
    monkeypatch.delenv("CURATOR_TERMINATION_LOG", raising=False)
    assert run_cli("discover", "--dataset", missing).returncode == proc.returncode
    assert not log.exists()


def test_discover_of_a_folder_without_shards_is_a_usage_error(tmp_path):
    (tmp_path / "2026-11-20").mkdir()
    (tmp_path / "2026-11-20" / "00000.tar").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    proc = run_cli("discover", "--dataset", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith(
        f"airflow-curator discover: error: no shards in {tmp_path}: 1 other file (notes.txt), "
        "1 folder that holds shards (2026-11-20/); pass allow_empty to accept an empty dataset"
    )
    result = tmp_path / "result.json"
    ok = run_cli(
        "discover", "--dataset", str(tmp_path), "--allow-empty", "--result-json", str(result)
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(result.read_text())["groups"] == []
