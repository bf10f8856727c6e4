"""The bad-input corpus: every fault gives a flagged record or a clear error naming the shard and
the reason, never a silent wrong result, and nothing is written outside the output."""

from __future__ import annotations

import os
import re
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from airflow_curator.testing.dataset import write_demo_dataset
from airflow_curator.testing.faults import (
    SHARD_FAULTS,
    image_faults,
    write_image_faults,
    write_shard_fault,
)
from tests.reliability.pipeline import cli, snapshot, steps

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ORDER = ["discover", "index", "annotate", "save-metadata", "plan-reshard", "reshard", "commit"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from airflow_curator.testing.models import write_tiny_models

    return write_tiny_models(str(tmp_path_factory.mktemp("models")))


def job(root: Path, models: dict, until: str | None = None) -> dict[str, list[str]]:
    """Run the job's steps over root/in -> root/out (keeping every record without an error)."""
    argv = steps(root, models)
    argv["save-metadata"] = argv["save-metadata"][:-2] + ["--max-nsfw", "1"]
    for name in ORDER:
        cli(*argv[name])
        if name == until:
            break
    return argv


def members(tar: Path) -> dict[str, bytes]:
    with tarfile.open(tar) as t:
        return {m.name: t.extractfile(m).read() for m in t if m.isfile()}  # type: ignore[union-attr]


def test_image_faults_are_flagged_and_the_rest_curated(tmp_path, models):
    ids = write_image_faults(tmp_path / "in")
    expected = {f: e for f, (_, _, e) in image_faults(__import__("random").Random(0)).items()}
    job(tmp_path, models)
    ann = pq.read_table(tmp_path / "out/_work/annotations/00000.parquet").to_pylist()
    assert sorted(r["key"] for r in ann) == sorted(ids)
    for row in ann:
        fault, error = ids[row["key"]], row["error"]
        if expected[fault] is None:
            assert error is None, (fault, error)
            assert row["aesthetic_score"] is not None and row["image_embedding"] is not None
        else:
            assert error and expected[fault] in error, (fault, error)
            assert row["aesthetic_score"] is None and row["image_embedding"] is None, fault
    # the curated output holds exactly the records without an error, their bytes unchanged
    good = {rid for rid, f in ids.items() if expected[f] is None}
    source = members(tmp_path / "in/00000.tar")
    out = pq.read_table(tmp_path / "out/00000.parquet").to_pylist()
    assert sorted(r["old_key"] for r in out) == sorted(good)
    copied = members(tmp_path / "out/00000.tar")
    for row in out:
        for name, data in source.items():
            stem, ext = name.split(".", 1)
            if stem == row["old_key"] and ext != "json":
                assert copied[f"{row['key']}.{ext}"] == data


@pytest.mark.parametrize("fault", sorted(SHARD_FAULTS))
def test_shard_fault_is_a_clear_error(tmp_path, models, fault):
    write_shard_fault(tmp_path / "in", fault)
    before = snapshot(tmp_path / "in")
    argv = steps(tmp_path, models)
    failing, pattern = SHARD_FAULTS[fault][1], SHARD_FAULTS[fault][2]
    for name in ORDER:
        proc = cli(*argv[name], check=name != failing)
        if name == failing:
            break
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"airflow-curator {failing}: error: "), last
    assert re.search(pattern, last), last
    # the input is untouched, except the .idx files index adds
    after = {k: v for k, v in snapshot(tmp_path / "in").items() if not k.endswith(".idx")}
    assert after == before


def test_garbage_after_the_tar_is_ignored(tmp_path, models):
    write_demo_dataset(str(tmp_path / "in"), shards=2, records_per_shard=4, seed=1)
    tar = tmp_path / "in/00001.tar"
    tar.write_bytes(tar.read_bytes() + os.urandom(3000))
    job(tmp_path, models)
    assert (tmp_path / "out/_SUCCESS").exists()
    ann = pq.read_table(tmp_path / "out/_work/annotations/00001.parquet")
    assert ann.num_rows == 4 and ann.column("error").null_count == 4


def test_hostile_member_names_never_escape_the_output(tmp_path, models):
    root = tmp_path / "deep" / "job"
    write_demo_dataset(str(root / "in"), shards=1, records_per_shard=4, seed=2)
    tar = root / "in/00000.tar"
    original = members(tar)
    names = list(original)
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as t:
        from airflow_curator.testing.dataset import add_member

        for i, name in enumerate(names):
            hostile = ("../../" + name) if i < 6 else ("/abs/" + name) if i < 9 else name
            add_member(t, hostile, original[name])
    outside_before = sorted(os.listdir(tmp_path)), sorted(os.listdir(tmp_path / "deep"))
    job(root, models)
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(tmp_path / "deep"))) == outside_before
    written = members(root / "out/00000.tar")
    assert all(re.fullmatch(r"\d+\.(jpg|txt|json)", n) for n in written), sorted(written)


def test_shell_metacharacters_in_params_never_reach_a_shell(tmp_path, monkeypatch):
    from airflow_curator.operators.local import LocalRunner
    from airflow_curator.runtime.argv import build_argv

    monkeypatch.chdir(tmp_path)
    weird = tmp_path / "in $(touch PWNED); `touch PWNED2` | rm -rf x & 'q\" *"
    write_demo_dataset(str(weird), shards=1, records_per_shard=2)
    result = LocalRunner().run(build_argv("index", {"dataset": str(weird)}))
    assert result["written"] == 1 and result["dataset"] == str(weird)
    assert not list(tmp_path.glob("PWNED*")) and (weird / "00000.idx").exists()


@pytest.mark.parametrize("inside", ["", "curated"])
def test_output_equal_to_or_inside_the_input_is_refused(tmp_path, models, inside):
    write_demo_dataset(str(tmp_path / "in"), shards=1, records_per_shard=3)
    argv = job(tmp_path, models, until="save-metadata")
    out = str(tmp_path / "in" / inside) if inside else str(tmp_path / "in")
    plan = argv["plan-reshard"]
    plan[plan.index("--output") + 1] = out
    before = snapshot(tmp_path / "in")
    proc = cli(*plan, check=False)
    assert proc.returncode != 0
    assert re.search(r"output .* is (inside )?the input", proc.stderr.strip().splitlines()[-1])
    assert snapshot(tmp_path / "in") == before


def test_stale_index_is_never_trusted(tmp_path, models):
    """The tar is rewritten after its index, and the stale index even looks newer."""
    write_demo_dataset(str(tmp_path / "in"), shards=1, records_per_shard=5, seed=1)
    cli("index", "--dataset", str(tmp_path / "in"))
    write_demo_dataset(
        str(tmp_path / "in"), shards=1, records_per_shard=5, seed=9, image_size=(80, 72)
    )
    idx = tmp_path / "in/00000.idx"
    future = time.time() + 60
    os.utime(idx, (future, future))
    argv = steps(tmp_path, models)
    argv["save-metadata"] = argv["save-metadata"][:-2] + ["--max-nsfw", "1"]
    for name in ORDER:
        if name != "index":
            cli(*argv[name])
    source = members(tmp_path / "in/00000.tar")
    copied = members(tmp_path / "out/00000.tar")
    old = {
        r["key"]: r["old_key"] for r in pq.read_table(tmp_path / "out/00000.parquet").to_pylist()
    }
    assert len(old) == 5
    for new, previous in old.items():
        assert copied[f"{new}.jpg"] == source[f"{previous}.jpg"]
