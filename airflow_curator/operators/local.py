"""Local execution: the step's argv as a subprocess on the worker, result read back as a dict.

The same argv a pod runs, started with this interpreter (``python -m airflow_curator.runtime.cli``)
and never through a shell. Output is streamed into the task log line by line at the level the step
logged it (so the UI's level filter finds the warnings); the step's one-line reason on failure
becomes the task's error message.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

CLI_MODULE = "airflow_curator.runtime.cli"
# a record as the CLI logs it: "2026-03-01 12:00:00,123 WARNING airflow_curator.x: message"
RECORD = re.compile(
    r"^\d{4}-\d\d-\d\d[ T][\d:.,]+\s+(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+(?P<text>.*)$"
)


class StepFailed(RuntimeError):
    """The step exited non-zero; ``returncode`` and the last output lines tell why."""

    def __init__(self, step: str, returncode: int, reason: str) -> None:
        super().__init__(f"airflow-curator {step} exited with code {returncode}: {reason}")
        self.step = step
        self.returncode = returncode
        self.reason = reason


def local_command(argv: Sequence[str]) -> list[str]:
    """The full command: this interpreter, the CLI module, then the step argv."""
    return [sys.executable, "-m", CLI_MODULE, *argv]


class LocalRunner:
    """Runs one step argv in a subprocess; ``kill()`` stops it (used by ``on_kill``)."""

    def __init__(self, log: logging.Logger | None = None, tail_lines: int = 20) -> None:
        self.log = log or logger
        self.tail_lines = tail_lines
        self.proc: subprocess.Popen[str] | None = None

    def run(
        self,
        step_argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        result_json: str | None = None,
    ) -> dict[str, Any]:
        """Run ``step_argv`` (which must end with ``--result-json result_json`` when that is
        given; otherwise a temporary one is appended) and return the parsed result."""
        with tempfile.TemporaryDirectory(prefix="airflow-curator-") as tmp:
            argv = list(step_argv)
            if result_json is None:
                result_json = os.path.join(tmp, "result.json")
                argv += ["--result-json", result_json]
            cmd = local_command(argv)
            self.log.info("Running %s", " ".join(cmd))
            tail: collections.deque[str] = collections.deque(maxlen=self.tail_lines)
            self.proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # so kill() reaches the step's worker processes too
            )
            assert self.proc.stdout is not None
            relay = LineRelay(self.log)
            for line in self.proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                relay.line(line)
            code = self.proc.wait()
            self.proc = None
            if code != 0:
                raise StepFailed(argv[0], code, _reason(tail))
            try:
                with open(result_json, encoding="utf-8") as f:
                    return json.load(f)
            except (OSError, ValueError) as e:
                raise StepFailed(argv[0], code, f"no readable result at {result_json}: {e}") from e

    def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            self.log.info("Stopping step process group %s", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)


class LineRelay:
    """Re-logs the step's output lines at their own level: a log record's level comes from its
    header (whose time and level the task log repeats, so they are dropped); the lines that
    continue a record (a traceback) keep its level; the step's error line is an error."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.level = logging.INFO

    def line(self, line: str) -> None:
        m = RECORD.match(line)
        if m:
            self.level = logging.getLevelName(m.group("level"))
            line = m.group("text")
        elif line.startswith("Traceback (most recent call last)") or _error_line(line):
            self.level = logging.ERROR
        self.log.log(self.level, "%s", line)


def _error_line(line: str) -> bool:
    return line.startswith("airflow-curator ") and ": error: " in line


def _reason(tail: Sequence[str]) -> str:
    """The step's own one-line error if it printed one, else the last non-empty line."""
    for line in reversed(tail):
        if _error_line(line):
            return line
    lines = [t for t in tail if t.strip()]
    return lines[-1] if lines else "no output"
