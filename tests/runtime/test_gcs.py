"""Every step on gs:// against fake-gcs-server (one per session, ``gcs_emulator``): the bytes
of a local run, few requests each (counted from the emulator's access log), no listing of the
dataset folder after discover (issue 20)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from airflow_curator.runtime.cli import main
from airflow_curator.testing.gcs import Request, download_tree
from tests.reliability.pipeline import cli, job, snapshot

pytestmark = pytest.mark.integration

SHARDS, RECORDS = 2, 6
STEPS_AFTER_DISCOVER = ["index", "annotate", "save-metadata", "plan-reshard", "dedup-hash"]
# Requests per step on gs:// for SHARDS input shards (README "Storage"): (fixed, per shard).
# A read is one request per object (its size is in the manifest), a written object one upload
# after one metadata request (a rerun that would write the same bytes writes nothing).
BUDGETS = {
    "discover": (2, 1),  # one listing, the manifest; each footer one ranged read
    "index": (1, 2),  # the manifest; per shard the tar, the .idx upload
    "annotate": (1, 5),  # the manifest; own output's footer, tar, Parquet, check, upload
    "save-metadata": (1, 4),  # the manifest; Parquet and annotations, check, upload
    # + 4 each for the output's lease without a run id (read, create; read, delete)
    "plan-reshard": (9, 1),  # manifest, output listing, plan (check, upload), _SUCCESS; footers
    "reshard": (9, 5),  # plan, listings; per shard metadata, .idx, tar; per output 3 uploads
    "commit": (10, 1),  # plan, listings, _SUCCESS check, three uploads; the markers
    "dedup-hash": (1, 5),  # the manifest; Parquet, tar, annotations, check, upload
}


def dedup_hash(ds: str, out: str) -> list[str]:
    manifest = f"{out}/_work/manifest.json"
    return ["dedup-hash", "--dataset", ds, "--output", out, "--manifest", manifest]


@pytest.fixture(scope="module")
def runs(gcs_emulator, tmp_path_factory):
    """The job run locally and on gs:// (the requests of each gs:// step recorded), and the
    tiny models it annotated with."""
    from airflow_curator.testing.dataset import write_demo_dataset
    from airflow_curator.testing.models import write_tiny_models

    base = tmp_path_factory.mktemp("gcs-job")
    models = write_tiny_models(str(base / "models"))
    local = base / "local"
    write_demo_dataset(str(local / "in"), shards=SHARDS, records_per_shard=RECORDS, seed=3)
    bucket = gcs_emulator.new_bucket("job")
    gcs_emulator.upload(str(local / "in"), f"{bucket}/in")
    requests: dict[str, list[Request]] = {}
    for where in (str(local), bucket):
        ds, out = f"{where}/in", f"{where}/out"
        argv = job(ds, out, models)
        argv["dedup-hash"] = dedup_hash(ds, out)
        for name, args in argv.items():
            if where != bucket:  # the reference, in this process (a second faster)
                assert main(args) == 0, name
                continue
            mark = gcs_emulator.mark()
            cli(*args)  # a process per step, as a task runs: no cache carried between them
            requests[name] = gcs_emulator.requests(mark)
    return local, bucket, requests, models


def _normal(doc: object, where: str) -> object:
    """A JSON document without what says where and when it was made: the root as ROOT, no
    mtimes, creation times or the plan's hash (of its paths)."""
    if isinstance(doc, dict):
        return {
            k: _normal(v, where)
            for k, v in doc.items()
            if not ("mtime" in k or k in ("created", "plan"))
        }
    if isinstance(doc, list):
        return [_normal(v, where) for v in doc]
    if isinstance(doc, str):
        return doc.replace(where, "ROOT")
    return doc


def comparable(root: Path, where: str) -> dict[str, object]:
    """What must match between a local and a gs:// run, by relative path: the bytes of every
    file, except JSON that records where it is (``_normal``) and annotation Parquet, compared
    by table (its provenance metadata holds the tar's mtime)."""
    import pyarrow.parquet as pq

    out: dict[str, object] = {}
    for rel, digest in snapshot(root).items():
        path = root / rel
        if rel.endswith(".json"):
            out[rel] = _normal(json.loads(path.read_text()), where)
        elif "/annotations/" in rel:
            out[rel] = pq.read_table(path).replace_schema_metadata(None).to_pylist()
        else:
            out[rel] = digest
    return out


def test_every_step_on_gs_writes_the_bytes_of_a_local_run(runs, tmp_path):
    local, bucket, _, _ = runs
    download_tree(bucket, str(tmp_path / "remote"))
    want = comparable(local, str(local))
    got = comparable(tmp_path / "remote", bucket)
    assert sorted(got) == sorted(want)
    assert [p for p in want if want[p] != got[p]] == []
    exact = [p for p in want if p.startswith("out/") and p.endswith((".tar", ".parquet", ".idx"))]
    assert len(exact) >= 6 and all(isinstance(want[p], str) for p in exact if "/_work/" not in p)


def test_steps_after_discover_never_list_the_dataset_folder(runs):
    _, bucket, requests, _ = runs
    dataset = bucket.removeprefix("gs://") + "/in"
    assert [r for r in requests["discover"] if r.kind == "list"]  # the one that lists
    for step in STEPS_AFTER_DISCOVER:
        listings = [r for r in requests[step] if r.kind == "list"]
        assert [r for r in listings if "prefix=in" in r.query] == [], step
        names = {r.object for r in requests[step] if r.object}
        read = "/out/_work/metadata" if step == "plan-reshard" else dataset
        assert any(read in n for n in names), step  # it did read its inputs


def test_requests_per_step_within_budget(runs):
    """The README's figures: ``pytest tests/runtime/test_gcs.py -k budget -s`` prints them."""
    _, _, requests, _ = runs
    print(f"\nrequests per step on gs:// for {SHARDS} shards of {RECORDS} records:")
    for step, (fixed, per_shard) in BUDGETS.items():
        reqs = requests[step]
        kinds = Counter(r.kind for r in reqs)
        print(f"  {step:14s} {len(reqs):3d}  (budget {fixed} + {per_shard}/shard)  {dict(kinds)}")
        assert len(reqs) <= fixed + per_shard * SHARDS, (step, [(r.method, r.path) for r in reqs])
        reads = Counter(r.object for r in reqs if r.kind in ("read", "get") and r.object)
        assert max(reads.values()) <= 3, (step, reads)  # at most 3 requests per object read
        assert all(r.status < 500 for r in reqs)


def test_to_webdataset_on_gs(runs, tmp_path):
    """The one-process shortcut, from the job's output to another folder, on both."""
    local, bucket, _, _ = runs
    for where in (str(local), bucket):
        args = ["to-webdataset", "--dataset", f"{where}/out", "--output", f"{where}/again"]
        assert main([*args, "--samples-per-shard", "4", "--workers", "2"]) == 0
    download_tree(f"{bucket}/again", str(tmp_path / "again"))
    want = comparable(local / "again", str(local))
    assert comparable(tmp_path / "again", bucket) == want
    assert any(p.endswith(".tar") for p in want)


def test_python_api_on_gs(runs, tmp_path):
    """NeMo's ImageTextPairDataset on gs://: metadata read back, resharded like locally."""
    from airflow_curator.dataset import ImageTextPairDataset

    local, bucket, _, _ = runs
    for where in (str(local), bucket):
        ds = ImageTextPairDataset.from_webdataset(f"{where}/out")
        assert len(ds.metadata.compute()) == len(ds)
        ds.to_webdataset(f"{where}/api", "passes_curation", samples_per_shard=5)
    download_tree(f"{bucket}/api", str(tmp_path / "api"))
    want = comparable(local / "api", str(local))
    assert comparable(tmp_path / "api", bucket) == want
    assert any(p.endswith(".tar") for p in want)


def test_stopped_storage_exits_75_naming_the_uri_and_no_shard(tmp_path):
    """Storage down mid-job (an emulator of its own, stopped): every step exits 75 with one
    line naming the object it could not reach, reading or writing, and blames no shard;
    annotate's failed read of its own output is such a failure, not "not annotated yet"."""
    import os
    import subprocess

    from airflow_curator.testing.dataset import write_demo_dataset
    from airflow_curator.testing.gcs import Emulator
    from airflow_curator.testing.models import write_tiny_models
    from tests.reliability.pipeline import CLI

    models = write_tiny_models(str(tmp_path / "models"))
    write_demo_dataset(str(tmp_path / "in"), shards=2, records_per_shard=3, seed=4)
    manifest = str(tmp_path / "manifest.json")
    with Emulator(str(tmp_path)) as emulator:
        env = {**os.environ, **emulator.env}
        bucket = emulator.new_bucket("down")
        ds, out = f"{bucket}/in", f"{bucket}/out"
        emulator.upload(str(tmp_path / "in"), ds)
        proc = subprocess.run([*CLI, "discover", "--dataset", ds, "--manifest", manifest],
                              capture_output=True, text=True, env=env)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    steps = {}
    for name, args in job(ds, out, models).items():
        if name in STEPS_AFTER_DISCOVER:  # the manifest kept locally: storage is the input
            steps[name] = [manifest if a.endswith("manifest.json") else a for a in args]
    steps["dedup-hash"] = [*dedup_hash(ds, out)[:-1], manifest]
    steps["discover (upload)"] = ["discover", "--dataset", str(tmp_path / "in"), "--manifest",
                                  f"{out}/_work/manifest.json"]  # fmt: skip
    # all at once: each spends gcsfs's ~30 s of retries
    pipe = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True, "env": env}
    procs = {name: subprocess.Popen([*CLI, *args], **pipe) for name, args in steps.items()}
    last = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        last[name] = err.strip().splitlines()[-1]
        assert proc.returncode == 75, (name, err[-2000:])
        assert "storage unavailable" in last[name] and "(will retry)" in last[name], last[name]
        assert f" {bucket}/" in last[name] and "shard 0" not in last[name], last[name]
    assert f"reading {out}/_work/annotations/00000.parquet" in last["annotate"]  # its own output
    assert f"writing {out}/_work/manifest.json" in last["discover (upload)"]


def _put(where: str, rel: str, data: bytes) -> None:
    from airflow_curator.core.io import storage

    storage.write_bytes(f"{where}/{rel}", data)


def _tree(where: str, tmp: Path) -> dict[str, str]:
    if where.startswith("gs://"):
        download_tree(where, str(tmp))
        return snapshot(tmp)
    return snapshot(Path(where))


@pytest.mark.parametrize("remote", [False, True], ids=["local", "gs"])
def test_a_foreign_output_folder_is_refused_unless_overwrite(runs, remote, tmp_path):
    """A folder holding a user's files (no plan of ours) is refused with exit 2 naming them and
    left as it was; --overwrite removes only its shard-named files and writes there."""
    from tests.reliability.pipeline import cli as run

    local, bucket, _, _ = runs
    where = bucket if remote else str(local)
    folder = f"{where}/foreign"
    for rel, data in {"notes.txt": b"mine", "00003.tar": b"x" * 512, "00007.parquet": b"p"}.items():
        _put(folder, rel, data)
    before = _tree(folder, tmp_path / "before")
    args = ["to-webdataset", "--dataset", f"{where}/out", "--output", folder]
    proc = run(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert f"output folder {folder} is not empty" in line
    assert "00003.tar, 00007.parquet, notes.txt" in line and "--overwrite" in line
    assert _tree(folder, tmp_path / "after") == before  # nothing in it changed

    proc = run(*args, "--overwrite", "--samples-per-shard", "4", check=False)
    assert proc.returncode == 0, proc.stderr
    assert "removed 2 shard files" in proc.stderr and "00003.tar, 00007.parquet" in proc.stderr
    after = _tree(folder, tmp_path / "overwritten")
    assert after["notes.txt"] == before["notes.txt"]
    assert "00007.parquet" not in after and "00003.tar" not in after
    assert "_SUCCESS" in after and "00000.tar" in after


def _kill_when(args: list[str], env: dict[str, str], ready, timeout: float = 180) -> int:
    """Start the step; SIGKILL it as soon as ``ready()`` holds; its pid."""
    import signal
    import subprocess
    import time

    from tests.reliability.pipeline import CLI

    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)  # fmt: skip
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the step ended before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.pid


def test_sigkill_mid_annotate_and_mid_reshard_on_gs_then_rerun(runs, tmp_path):
    """Annotate killed once its tar is spooled, reshard once its first output object is up:
    the reruns give the uninterrupted run's bytes, and no spool or temporary is left."""
    import os

    from airflow_curator.core.io import storage

    local, bucket, _, models = runs
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    spools = tmp_path / storage.SPOOL
    argv = job(f"{bucket}/in", f"{bucket}/out", models)
    annotate = [*argv["annotate"], "--force"]  # the job's own output: the same bytes again
    _kill_when(annotate, env, lambda: spools.is_dir() and any(spools.iterdir()))
    assert any(spools.iterdir())  # what the killed process left
    cli(*annotate, env=env)
    assert list(spools.iterdir()) == []  # swept by the rerun

    out = f"{bucket}/killed"
    plan = [out if a == f"{bucket}/out" else a for a in argv["plan-reshard"]]
    cli(*plan, env=env)
    reshard = ["reshard", "--plan", f"{out}/_work/reshard-plan.json"]

    def first_output() -> bool:
        return any(e.name.endswith(".tar") for e in storage.list_files(out, missing_ok=True))

    _kill_when(reshard, env, first_output)
    cli(*reshard, env=env)
    cli("commit", "--plan", f"{out}/_work/reshard-plan.json", env=env)
    download_tree(f"{bucket}/out", str(tmp_path / "out"))
    got = comparable(tmp_path / "out", bucket)
    want = comparable(local / "out", str(local))
    assert [got[p] == want[p] for p in want if "/annotations/" in p] == [True, True]
    download_tree(out, str(tmp_path / "killed"))
    got = {p: d for p, d in snapshot(tmp_path / "killed").items() if "/" not in p}
    want = {p: d for p, d in snapshot(local / "out").items() if "/" not in p}
    del got["_manifest.json"], want["_manifest.json"]  # it names its plan
    assert got == want and any(p.endswith(".tar") for p in got)
    assert list(spools.iterdir()) == []


def test_a_bad_tar_on_gs_is_named_by_its_object_uri(runs, gcs_emulator, tmp_path):
    """Annotate copies a remote tar locally for DALI; a truncated one is blamed on its shard
    and named by its gs:// URI, never by the local copy."""
    from airflow_curator.testing.dataset import write_demo_dataset

    _, _, _, models = runs
    write_demo_dataset(str(tmp_path / "in"), shards=1, records_per_shard=3, seed=6)
    tar = tmp_path / "in" / "00000.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2 + 100])  # cut inside a member's data
    bucket = gcs_emulator.new_bucket("badtar")
    gcs_emulator.upload(str(tmp_path / "in"), f"{bucket}/in")
    argv = job(f"{bucket}/in", f"{bucket}/out", models)
    cli(*argv["discover"])
    proc = cli(*argv["annotate"], check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "shard 00000" in last and f"{bucket}/in/00000.tar" in last, last
    assert str(tmp_path) not in last and "spool" not in last, last
