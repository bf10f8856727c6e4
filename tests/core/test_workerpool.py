from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from airflow_curator.core.workerpool import can_fork, worker_pool

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux prctl")


def _pid(_: int) -> int:
    time.sleep(0.2)  # both workers take a task
    return os.getpid()


def test_processes_or_threads_and_the_collector_is_given_back():
    with worker_pool(2, processes=True) as pool:
        assert gc.get_freeze_count() > 0  # the parent's objects are out of the collections
        pids = set(pool.map(_pid, range(4)))
    assert gc.get_freeze_count() == 0
    assert os.getpid() not in pids and len(pids) == 2
    with worker_pool(2, processes=False) as pool:
        names = set(pool.map(lambda _: threading.current_thread().name, range(2)))
    assert all(n != threading.current_thread().name for n in names)


@pytest.mark.skipif(not can_fork(), reason="needs fork")
def test_workers_die_with_a_killed_parent(tmp_path):
    """A step killed with SIGKILL (no chance to clean up) takes its forked workers with it."""
    pids_file = tmp_path / "pids"
    script = textwrap.dedent(
        f"""
        import os, time
        from airflow_curator.core.workerpool import worker_pool

        def work(_):
            with open({str(pids_file)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(60)

        with worker_pool(2, processes=True) as pool:
            list(pool.map(work, range(2)))
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if pids_file.exists() and len(pids_file.read_text().split()) == 2:
                break
            time.sleep(0.05)
        workers = [int(p) for p in pids_file.read_text().split()]
        assert len(workers) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        alive = workers
        while alive and time.monotonic() < deadline:
            alive = [p for p in workers if _running(p)]
            time.sleep(0.05)
        assert not alive, f"workers {alive} outlived their parent"
    finally:
        parent.kill()
        parent.wait()


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its (new) parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
