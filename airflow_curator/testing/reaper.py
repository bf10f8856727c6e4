"""Process groups a test started, stopped even when the test process is killed.

A fixture that starts servers in their own process groups (so that one signal stops a server and
its workers) stops them in its teardown. A SIGKILLed pytest runs no teardown, and the servers run
on, holding ports and CPU. The reaper is a tiny watcher process, outside those groups, that reads
a pipe only the test process holds: end of file means the test process is gone (or ``close()``
was called), and the reaper then stops the groups it was told about, TERM first, KILL after a
grace period.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

_WATCHER = r"""
import os, signal, sys, time
groups = []
for line in sys.stdin:  # one process group id per line, until the pipe closes
    line = line.strip()
    if line == "forget":
        groups.clear()
    elif line:
        groups.append(int(line))
def alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
for sig in (signal.SIGTERM, signal.SIGKILL):
    for pgid in groups:
        if alive(pgid):
            os.killpg(pgid, sig)
    deadline = time.monotonic() + float(sys.argv[1])
    while sig == signal.SIGTERM and any(map(alive, groups)) and time.monotonic() < deadline:
        time.sleep(0.2)
"""


class Reaper:
    """``watch(pgid)`` for each group started; ``forget()`` once they are stopped normally;
    ``close()`` at the end (it stops whatever is still watched)."""

    def __init__(self, grace: float = 10) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WATCHER, str(grace)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a signal to the test's own group does not reach it
            text=True,
        )

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def watch(self, pgid: int) -> None:
        self._send(str(pgid))

    def forget(self) -> None:
        """The watched groups were stopped: a later reaping must not signal their ids, which
        the system may have given to someone else's processes by then."""
        self._send("forget")

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        self.proc.wait()
