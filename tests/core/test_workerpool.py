from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from airflow_curator.core.workerpool import (
    InterpreterPool,
    RemoteTraceback,
    can_fork,
    worker_pool,
)

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
    assert_killed_parent_leaves_no_worker(script, pids_file)


def assert_killed_parent_leaves_no_worker(script: str, pids_file) -> None:
    """Run ``script``, which writes its two workers' pids to ``pids_file``, kill it with
    SIGKILL once they are written, and check that no worker outlives it."""
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


# ---- InterpreterPool: new interpreters, kept until shut down ----


def _fail(message: str) -> None:
    raise ValueError(message)


def _slow_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def live_children() -> set[int]:
    """This process's living children (from /proc: ppid is the 4th field of stat)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                found.add(int(entry))
    return found


def test_interpreters_run_tasks_and_give_back_results_and_errors():
    pool = InterpreterPool(2, "t")
    try:
        assert os.getpid() not in pool.pids and set(pool.pids) <= live_children()
        # two slow tasks at once: one on each worker (the one with fewer in flight)
        assert set(pool.map(_slow_pid, [0.3, 0.3])) == set(pool.pids)
        future = pool.submit(_fail, "bad shard 00003")
        with pytest.raises(ValueError, match="bad shard 00003") as raised:
            future.result(timeout=30)
        assert isinstance(raised.value.__cause__, RemoteTraceback)
        assert "in _fail" in str(raised.value.__cause__)  # the worker's own traceback
        with pytest.raises((pickle.PicklingError, AttributeError)):
            pool.submit(lambda: None)  # refused at once, nothing left in flight
        assert pool.submit(sorted, [3, 1, 2]).result(timeout=30) == [1, 2, 3]
        assert not any(w.pending for w in pool._workers)
    finally:
        pool.shutdown()
    assert not set(pool.pids) & live_children()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(sorted, [])


def test_interpreters_hold_none_of_the_callers_files():
    """The caller's open pipe (say a watchdog's) reaches its end as soon as the caller closes
    it: no worker holds a copy, as a fork would, even of an inheritable descriptor."""
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    pool = InterpreterPool(2, "t")
    try:
        assert pool.submit(sorted, [2, 1]).result(timeout=30) == [1, 2]
        for pid in pool.pids:
            assert len(os.listdir(f"/proc/{pid}/fd")) == 5  # stdin, stdout, stderr, 2 pipes
        os.close(write_end)
        assert os.read(read_end, 1) == b""  # the end, not a hang
    finally:
        os.close(read_end)
        pool.shutdown()


def test_a_dead_interpreter_breaks_the_pool_with_its_name_and_code():
    from concurrent.futures.process import BrokenProcessPool

    pool = InterpreterPool(2, "decode")
    try:
        running = [pool.submit(_slow_pid, 30) for _ in range(2)]
        victim = pool.pids[0]
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(
            BrokenProcessPool, match=rf"decode-0 \(pid {victim}\) exited with code -9"
        ):
            running[0].result(timeout=30)
        with pytest.raises(BrokenProcessPool):
            running[1].result(timeout=30)  # the pool is broken: its other tasks fail too
        with pytest.raises(BrokenProcessPool, match="decode-0"):
            pool.submit(sorted, [])
    finally:
        pool.shutdown(wait=False)
        for pid in pool.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_cancelled_tasks_are_dropped_quietly():
    pool = InterpreterPool(1, "t")
    try:
        first = pool.submit(_slow_pid, 0.5)
        queued = pool.submit(_slow_pid, 0)
        assert queued.cancel()
        assert first.result(timeout=30) == pool.pids[0]
        assert pool.submit(sorted, [1]).result(timeout=30) == [1]  # its answer was dropped
        assert queued.cancelled()
    finally:
        pool.shutdown()


def _in_daemon(queue) -> None:
    pool = InterpreterPool(1, "t")
    queue.put(pool.submit(sorted, [2, 1]).result(timeout=30))
    pool.shutdown()


def test_interpreters_start_inside_a_daemonic_process():
    """A dask worker is a daemonic process: multiprocessing gives it no children, new
    interpreters it may start."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_in_daemon, args=(queue,), daemon=True)
    child.start()
    try:
        assert queue.get(timeout=60) == [1, 2]
    finally:
        child.join(30)
    assert child.exitcode == 0


def test_a_script_without_a_main_guard_runs_once(tmp_path):
    """multiprocessing's spawn would run the caller's main script again in each child."""
    runs = tmp_path / "runs"
    script = tmp_path / "user_script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from airflow_curator.core.workerpool import InterpreterPool

            with open({str(runs)!r}, "a") as f:
                f.write("ran\\n")
            pool = InterpreterPool(2, "t")
            print(pool.submit(sorted, [3, 2]).result(timeout=30))
            pool.shutdown()
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[2, 3]"
    assert runs.read_text() == "ran\n"


def test_interpreters_die_with_a_killed_parent(tmp_path):
    pids_file = tmp_path / "pids"
    script = textwrap.dedent(
        f"""
        import time
        from airflow_curator.core.workerpool import InterpreterPool

        pool = InterpreterPool(2, "t")
        list(pool.map(sorted, [[], []]))  # one task each: both are up
        pool.submit(time.sleep, 60)
        with open({str(pids_file)!r}, "w") as f:
            f.write(" ".join(map(str, pool.pids)))
        time.sleep(60)
        """
    )
    assert_killed_parent_leaves_no_worker(script, pids_file)
