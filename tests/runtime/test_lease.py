"""Two runs writing one output, through the CLI, locally and on gs:// (issue 20, point 8): the
second writer exits 2 naming the holder, the first one's bytes are right, and nothing fails with
the old ``[Errno 2] No such file or directory: 'race/.00001.tar.tmp-...'``; the steps of one
run (``--run-id``, as the DAG passes it) share the lease, mapped reshard tasks at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_curator.core.io import storage
from airflow_curator.core.layout import lease_url
from airflow_curator.runtime.cli import main
from tests.reliability.pipeline import CLI, cli

pytestmark = pytest.mark.integration

SYMPTOM = "No such file or directory"


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path) -> str:
    """Where the job lives: a local folder or a fresh bucket, holding ``in``, a dataset of
    3 shards of 10 records with a boolean ``keep`` column, and ``ref``, its reshard by one
    uninterrupted run."""
    from airflow_curator.testing.dataset import write_demo_dataset

    local = tmp_path / "in"
    write_demo_dataset(str(local), shards=3, records_per_shard=10, seed=7)
    for p in sorted(local.glob("*.parquet")):
        t = pq.read_table(p)
        keep = [int(k) % 3 != 0 for k in t["key"].to_pylist()]
        pq.write_table(t.append_column("keep", pa.array(keep)), p)
    if request.param == "local":
        where = str(tmp_path)
    else:
        where = request.getfixturevalue("gcs_bucket")
        request.getfixturevalue("gcs_emulator").upload(str(local), f"{where}/in")
    assert main(to_webdataset(where, "ref")) == 0
    return where


def to_webdataset(root: str, out: str) -> list[str]:
    return ["to-webdataset", "--dataset", f"{root}/in", "--output", f"{root}/{out}",
            "--filter-column", "keep", "--samples-per-shard", "3", "--workers", "1"]  # fmt: skip


def holder(out: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(lease_url(out)))
    except (FileNotFoundError, ValueError):  # none, or a local one being written
        return None


def mid_swap(out: str) -> bool:
    """Whether a local lease file's ``flock`` is held (by a process paused in a swap)."""
    import fcntl

    url = lease_url(out)
    if not storage.is_local(url) or not os.path.exists(url):
        return False
    with open(url, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def dataset_files(folder: str) -> dict[str, bytes]:
    """The finished dataset's files (not the work folder), but the manifest, which names it."""
    return {
        e.name: storage.read_bytes(e.url)
        for e in storage.list_files(folder)
        if e.name != "_manifest.json"
    }


def assert_written_like_ref(root: str, out: str) -> None:
    got, want = dataset_files(f"{root}/{out}"), dataset_files(f"{root}/ref")
    assert sorted(got) == sorted(want) and "_SUCCESS" in got and "00006.tar" in got
    assert [n for n in want if got[n] != want[n]] == []
    assert holder(f"{root}/{out}") is None  # released by the run that wrote it


def last_line(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.strip().splitlines()[-1]


def test_a_second_to_webdataset_into_the_folder_exits_2_naming_the_holder(root):
    """The first run is paused (SIGSTOP) as soon as it holds the lease, the second runs to its
    end meanwhile; then the first goes on and finishes."""
    out = f"{root}/race"
    first = subprocess.Popen([*CLI, *to_webdataset(root, "race")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while first.poll() is None and time.monotonic() < deadline:
        doc = holder(out)
        if doc is not None and doc["pid"] == first.pid:
            os.kill(first.pid, signal.SIGSTOP)
            if not mid_swap(out):
                break
            os.kill(first.pid, signal.SIGCONT)  # paused holding the lock file's lock: again
        time.sleep(0.002)
    assert first.poll() is None, "the first run ended before it could be paused"
    try:
        second = cli(*to_webdataset(root, "race"), check=False)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err[-3000:]
    assert second.returncode == 2, second.stderr[-3000:]
    line = last_line(second)
    assert line.startswith("airflow-curator to-webdataset: error: ")
    assert f"output {out} is being written by run {doc['run']} (pid {first.pid} on " in line
    assert " since 20" in line and " expires at 20" in line, line
    assert SYMPTOM not in second.stderr + first_err
    assert_written_like_ref(root, "race")


def test_concurrent_to_webdataset_runs_never_break_each_other(root):
    """Three at once, unpaused: each finishes (one after another) or exits 2 on the lease;
    none dies on another's temporaries, and the output is the uninterrupted run's."""
    args = to_webdataset(root, "free")
    pipe = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True}
    procs = [subprocess.Popen([*CLI, *args], **pipe) for _ in range(3)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    codes = [p.returncode for p in procs]
    assert set(codes) <= {0, 2} and 0 in codes, (codes, [e[-2000:] for e in errs])
    for code, err in zip(codes, errs, strict=True):
        assert SYMPTOM not in err, err[-3000:]
        if code == 2:
            assert "is being written by run " in err.strip().splitlines()[-1]
    assert_written_like_ref(root, "free")


def test_the_steps_and_mapped_tasks_of_one_run_share_its_lease(root):
    """plan-reshard, two reshard tasks at once and a retry, commit, all ``--run-id`` of one
    DAG run; another run is refused until the commit releases the lease."""
    out = f"{root}/dag"
    plan = f"{out}/_work/reshard-plan.json"
    run = ["--run-id", "curate/manual__2026-12-02T00:00:00+00:00"]
    planned = cli("plan-reshard", "--dataset", f"{root}/in", "--output", out, "--filter-column",
                  "keep", "--samples-per-shard", "3", *run, check=False)  # fmt: skip
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert holder(out)["run"] == run[1]  # kept between the run's steps

    other = cli(*to_webdataset(root, "dag"), check=False)
    assert other.returncode == 2 and f"by run {run[1]} (pid " in last_line(other)

    pipe = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True}
    mapped = [
        subprocess.Popen([*CLI, "reshard", "--plan", plan, "--outputs", spec, *run], **pipe)
        for spec in ("0-2", "3-6")
    ]
    for proc in mapped:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    retry = cli("reshard", "--plan", plan, "--outputs", "3-6", *run, check=False)
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert cli("commit", "--plan", plan, *run, check=False).returncode == 0
    assert_written_like_ref(root, "dag")

    again = cli(*to_webdataset(root, "dag"), check=False)  # released: the next run may write
    assert again.returncode == 0, again.stderr[-3000:]
    assert_written_like_ref(root, "dag")
