"""The reaper stops a killed test's process groups, and leaves alone the ones it was told to
forget."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

TEST_PROCESS = r"""
import subprocess, sys, time
from airflow_curator.testing.reaper import Reaper
reaper = Reaper(grace=float(sys.argv[1]))
server = subprocess.Popen(
    [sys.executable, "-c", sys.argv[2]], start_new_session=True
)
reaper.watch(server.pid)
if sys.argv[3] == "forget":
    reaper.forget()
print(server.pid, flush=True)
time.sleep(600)
"""
IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
SLEEPS = "import time; time.sleep(600)"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone, only not yet waited for
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def killed_test(server: str, mode: str = "watch", grace: float = 1) -> int:
    """Run a 'test process' that starts a server and a reaper, SIGKILL it, return the server's
    pid."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    test = subprocess.Popen(
        [sys.executable, "-c", TEST_PROCESS, str(grace), server, mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert test.stdout is not None
    pid = int(test.stdout.readline())
    assert alive(pid)
    test.send_signal(signal.SIGKILL)
    test.wait()
    return pid


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_a_killed_tests_servers_are_stopped() -> None:
    assert wait_gone(killed_test(SLEEPS), 30)


def test_a_server_that_ignores_term_is_killed_after_the_grace() -> None:
    pid = killed_test(IGNORES_TERM, grace=1)
    assert wait_gone(pid, 30)


def test_forgotten_groups_are_not_signalled() -> None:
    pid = killed_test(SLEEPS, mode="forget")
    try:
        assert not wait_gone(pid, 3)
    finally:
        os.killpg(pid, signal.SIGKILL)
