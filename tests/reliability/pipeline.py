"""The whole job as CLI calls over one folder, for the reliability tests."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "airflow_curator.runtime.cli"]


def cli(
    *argv: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, *argv], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def steps(root: Path, models: dict) -> dict[str, list[str]]:
    """argv of every step, in job order, for a run over ``root/in`` into ``root/out``."""
    return job(str(root / "in"), str(root / "out"), models)


def job(ds: str, out: str, models: dict) -> dict[str, list[str]]:
    """argv of every step, in job order, for a run over the dataset ``ds`` into ``out`` (local
    paths or URIs); the steps after discover read its manifest, as the DAG's tasks do."""
    work = f"{out}/_work"
    manifest = f"{work}/manifest.json"
    return {
        "discover": ["discover", "--dataset", ds, "--manifest", manifest],
        "index": ["index", "--dataset", ds, "--manifest", manifest],
        "annotate": [
            "annotate",
            "--dataset",
            ds,
            "--manifest",
            manifest,
            "--output",
            out,
            "--model",
            models["model"],
            "--weights",
            models["weights"],
            "--aesthetic-weights",
            models["aesthetic_weights"],
            "--nsfw-weights",
            models["nsfw_weights"],
            "--device",
            "cpu",
            "--batch-size",
            "8",
        ],
        "save-metadata": [
            "save-metadata",
            "--dataset",
            ds,
            "--manifest",
            manifest,
            "--annotations",
            f"{work}/annotations",
            "--path",
            f"{work}/metadata",
            "--min-clip-score",
            "0",
        ],
        "plan-reshard": [
            "plan-reshard",
            "--dataset",
            ds,
            "--manifest",
            manifest,
            "--output",
            out,
            "--metadata",
            f"{work}/metadata",
            "--samples-per-shard",
            "7",
            "--old-id-col",
            "old_key",
        ],
        "reshard": ["reshard", "--plan", f"{work}/reshard-plan.json"],
        "commit": ["commit", "--plan", f"{work}/reshard-plan.json"],
    }


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path (hidden temporaries included)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out
