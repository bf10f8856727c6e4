"""SIGKILL each writing step at random points, rerun it, and get the uninterrupted bytes.

The kill lands after the step has started writing (its first new file appears), at a random
fraction of the uninterrupted run's remaining time, so most kills hit the write path itself.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.reliability.pipeline import CLI, cli, snapshot, steps

WRITING_STEPS = ["index", "annotate", "save-metadata", "reshard", "commit"]
TRIALS = int(os.environ.get("CURATOR_KILL_TRIALS", "3"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Per writing step: the folder just before it, the reference after it, its write window."""
    from airflow_curator.testing.dataset import write_demo_dataset
    from airflow_curator.testing.models import write_tiny_models

    base = tmp_path_factory.mktemp("kills")
    root = base / "job"
    models = write_tiny_models(str(base / "models"))
    write_demo_dataset(str(root / "in"), shards=3, records_per_shard=30, seed=5)
    argv = steps(root, models)
    before: dict[str, Path] = {}
    after: dict[str, dict[str, str]] = {}
    durations: dict[str, float] = {}
    for name, args in argv.items():
        if name in WRITING_STEPS:
            before[name] = base / f"before-{name}"
            shutil.copytree(root, before[name])
        if name in WRITING_STEPS:
            durations[name] = write_window(args, root)
            after[name] = snapshot(root)
        else:
            cli(*args)
    return root, argv, before, after, durations


def _files(root: Path) -> set[str]:
    return {str(Path(d) / f) for d, _, fs in os.walk(root) for f in fs}


def write_window(args: list[str], root: Path) -> float:
    """Run the step to completion; seconds from its first new file to its exit."""
    start = _files(root)
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while proc.poll() is None:
        if first is None and _files(root) - start:
            first = time.monotonic()
        time.sleep(0.002)
    end = time.monotonic()
    assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
    return end - (first or end)


def run_and_kill(args: list[str], root: Path, delay: float, timeout: float = 120) -> bool:
    """Start the step; once it writes its first file, wait ``delay`` and SIGKILL it."""
    start = _files(root)
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if _files(root) - start:
            break
        time.sleep(0.002)
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("step", WRITING_STEPS)
def test_killed_step_reruns_to_the_same_bytes(prepared, step):
    root, argv, before, after, durations = prepared
    rng = random.Random(f"{step}-kills")
    reference = after[step]
    kills = 0
    trials = 0
    # random points; should a slow machine let every one finish first, kill at the first write
    while trials < TRIALS or (kills == 0 and trials < TRIALS + 5):
        delay = rng.uniform(0, durations[step] * 0.8) if trials < TRIALS else 0.0
        trials += 1
        shutil.rmtree(root)
        shutil.copytree(before[step], root)
        kills += run_and_kill(argv[step], root, delay)
        cli(*argv[step])
        got = snapshot(root)
        leftovers = sorted(k for k in got if Path(k).name.startswith(".") and k not in reference)
        # debris of the killed attempt may only sit in the work folder, never in a dataset
        assert not [k for k in leftovers if not k.startswith("out/_work/")], leftovers
        final = {k: v for k, v in got.items() if k not in leftovers}
        assert final == reference, sorted(set(final.items()) ^ set(reference.items()))[:6]
    assert kills >= 1, "no trial killed the step while it ran: the test proved nothing"
