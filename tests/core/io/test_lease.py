"""The output lease (``core.io.lease``), on a local folder and on gs:// (the session's
fake-gcs-server): one run at a time, the same run re-enters, an expired or orphaned lease is
taken over, the heartbeat keeps a long step's lease, and racing takers get exactly one winner."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from airflow_curator.core.errors import USAGE_EXIT
from airflow_curator.core.io import storage
from airflow_curator.core.io.lease import (
    RUN,
    Lease,
    LeaseHeld,
    LeaseLost,
    Run,
    output_lease,
    verify,
)
from airflow_curator.core.layout import lease_url


@pytest.fixture(params=["local", "gs"])
def out(request, tmp_path) -> str:
    """An output folder that does not exist yet."""
    if request.param == "local":
        return str(tmp_path / "out")
    return f"{request.getfixturevalue('gcs_bucket')}/out"


def holder(out: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(lease_url(out)))
    except FileNotFoundError:
        return None


def in_thread(fn, *args, **kwargs) -> BaseException | None:
    """Run ``fn`` in a thread of its own (not nested in this thread's lease: as another task
    would); what it raised, or None."""
    caught: list[BaseException] = []

    def target() -> None:
        try:
            fn(*args, **kwargs)
        except BaseException as e:
            caught.append(e)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    return caught[0] if caught else None


def enter(out: str, run_id: str | None, **kwargs) -> None:
    with output_lease(out, run_id, **kwargs):
        pass


def test_a_second_run_is_refused_naming_the_holder_since_and_expiry(out):
    with output_lease(out, "dag/run-a") as lease:
        doc = holder(out)
        assert doc is not None and doc["run"] == "dag/run-a" and doc["scope"] == RUN
        error = in_thread(enter, out, "dag/run-b")
        assert isinstance(error, LeaseHeld) and error.exit_code == USAGE_EXIT
        text = str(error)
        assert f"output {out} is being written by run dag/run-a (pid " in text
        assert " since 20" in text and " expires at 20" in text and lease_url(out) in text
        assert lease.expires > time.time()
    # a run's lease outlives its step (the next step of the run re-enters it) ...
    assert holder(out)["run"] == "dag/run-a"
    assert isinstance(in_thread(enter, out, "dag/run-b"), LeaseHeld)
    # ... until the run's last step succeeds
    enter(out, "dag/run-a", last=True)
    assert holder(out) is None
    enter(out, "dag/run-b", last=True)


def test_the_same_run_re_enters_mapped_siblings_and_retries(out):
    """Mapped tasks of one run at the same time, then a retry: all hold it; since is kept."""
    enter(out, "dag/run-a")
    since = holder(out)["since"]
    barrier = threading.Barrier(4)

    def sibling() -> None:
        with output_lease(out, "dag/run-a"):
            barrier.wait(timeout=30)  # all four hold it at once

    threads = [threading.Thread(target=sibling) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not barrier.broken
    assert in_thread(enter, out, "dag/run-a") is None  # a retry
    assert holder(out)["since"] == since
    with pytest.raises(LeaseHeld):
        enter(out, "dag/other")


def test_racing_takers_get_exactly_one_winner(out):
    barrier = threading.Barrier(6)
    won: list[str] = []

    def taker(run: str) -> None:
        lease = Lease(out, Run(run, RUN))
        barrier.wait(timeout=30)
        try:
            lease.acquire()
        except LeaseHeld:
            return
        won.append(run)

    threads = [threading.Thread(target=taker, args=(f"run-{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and holder(out)["run"] == won[0]


def test_an_expired_lease_is_taken_over_and_its_holder_stops(out):
    stale = Lease(out, Run("dag/stale", RUN), ttl=0.4)
    stale.acquire()  # and then no renewal: a stalled or vanished holder
    with pytest.raises(LeaseHeld):
        enter(out, "dag/new")
    time.sleep(0.5)
    with output_lease(out, "dag/new", last=True):
        assert holder(out)["run"] == "dag/new"
        with pytest.raises(LeaseLost, match=r"run dag/stale lost its lease .* dag/new"):
            stale.check()  # its next shard
        with pytest.raises(LeaseLost):
            verify(out, "dag/stale")  # a writer process of the stale run
        verify(out, "dag/new")
    assert isinstance(stale.lost, LeaseLost)


def test_the_heartbeat_renews_a_long_steps_lease(out):
    with output_lease(out, "dag/long", ttl=0.8):
        first = holder(out)["expires"]
        time.sleep(2.0)  # more than twice the ttl
        assert isinstance(in_thread(enter, out, "dag/rival"), LeaseHeld)
        assert holder(out)["expires"] > first


def test_a_process_only_lease_is_released_even_on_failure(out):
    with pytest.raises(RuntimeError), output_lease(out):
        assert holder(out)["scope"] == "process"
        raise RuntimeError("the step failed")
    assert holder(out) is None
    with pytest.raises(RuntimeError), output_lease(out, "dag/run"):
        raise RuntimeError("a run's step failed: its retry re-enters")
    assert holder(out)["run"] == "dag/run"


KILLED = """
import os, signal, sys
from airflow_curator.core.io.lease import Lease, Run
Lease(sys.argv[1], Run.resolve(sys.argv[2] or None)).acquire()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_processes_lease_is_taken_at_once_a_runs_is_not(out):
    """SIGKILL leaves the lease: a process-only one whose process on this host is gone is
    free at once (a rerun need not wait), a run's stays for its retry until it expires."""
    subprocess.run([sys.executable, "-c", KILLED, out, ""], check=False)
    assert holder(out)["scope"] == "process"
    enter(out, "dag/next")
    assert holder(out)["run"] == "dag/next"
    enter(out, "dag/next", last=True)

    subprocess.run([sys.executable, "-c", KILLED, out, "dag/killed"], check=False)
    assert holder(out)["run"] == "dag/killed"
    with pytest.raises(LeaseHeld, match="run dag/killed"):
        enter(out, "dag/next")
    enter(out, "dag/killed", last=True)  # its retry
