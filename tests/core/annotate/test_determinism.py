"""The same inputs on the same machine give the same annotation bytes: whatever the load, the
decoder's thread count or the caller (a CLI process or the Python API in this one).

Thread counts follow from the cores, the model's FLOPs and the batch size (``threads.py``), never
from a timing, so a busy machine picks what an idle one picks. The one setting that may change
values is torch's intra-op thread count: two threads can split a matmul's sums differently and
change their last bit. It is recorded in each annotation's metadata; the second test says which
count the default picks and what another count changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import airflow_curator
from airflow_curator.core.annotate.annotator import THREADS_KEY, annotate_dataset
from airflow_curator.core.annotate.threads import cpu_cores, plan_threads
from airflow_curator.testing.awkward import photo, write_awkward_shard
from airflow_curator.testing.models import tiny_options

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

ROOT = str(Path(airflow_curator.__file__).parent.parent)
BATCH = 5  # the shards end in partial batches, where thread counts are most likely to matter


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from airflow_curator.testing.dataset import WORDS, add_member
    from airflow_curator.testing.models import write_tiny_models

    root = tmp_path_factory.mktemp("determinism")
    tiny = write_tiny_models(str(root / "tiny"))
    dataset = root / "dataset"
    write_awkward_shard(dataset, 0, seed=11)  # failed records among good ones
    ids = [f"00001{i:04d}" for i in range(23)]
    with tarfile.open(dataset / "00001.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for i, rid in enumerate(ids):
            add_member(tar, f"{rid}.jpg", photo(i, (320 + 8 * i, 240)))
            add_member(tar, f"{rid}.txt", f"{WORDS[i % len(WORDS)]} {i}".encode())
    pq.write_table(pa.table({"key": ids}), dataset / "00001.parquet")
    return root, dataset, tiny


def cli(setup, out: str, *flags: str) -> dict[str, bytes]:
    """``airflow-curator annotate`` in its own process; the annotation files' bytes."""
    root, dataset, tiny = setup
    argv = [sys.executable, "-m", "airflow_curator.runtime.cli", "annotate"]
    argv += ["--dataset", str(dataset), "--output", str(root / out), "--device", "cpu"]
    argv += ["--model", tiny["model"], "--weights", tiny["weights"], "--force"]
    argv += ["--aesthetic-weights", tiny["aesthetic_weights"], "--batch-size", str(BATCH)]
    argv += ["--nsfw-weights", tiny["nsfw_weights"], *flags]
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}
    subprocess.run(argv, check=True, env=env, capture_output=True)
    return files(root / out)


def files(out: Path) -> dict[str, bytes]:
    folder = out / "_work" / "annotations"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.parquet"))}


@contextlib.contextmanager
def busy_cores(n: int):
    """``n`` processes spinning on the CPU for as long as the block runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in spinners:
            p.kill()
        for p in spinners:
            p.wait()


def api(setup, out: str, **options) -> dict[str, bytes]:
    """``annotate_dataset`` in this process, as the Python API calls it."""
    root, dataset, tiny = setup
    opts = tiny_options(tiny, batch_size=BATCH, force=True, **options)
    annotate_dataset(str(dataset), str(root / out), None, opts)
    return files(root / out)


@pytest.fixture(scope="module")
def default(setup):
    return cli(setup, "default")


def test_same_bytes_whatever_the_load_the_decode_threads_or_the_caller(setup, default):
    assert list(default) == ["00000.parquet", "00001.parquet"]
    assert api(setup, "api") == default
    with busy_cores(2 * cpu_cores()):
        assert api(setup, "loaded") == default
    assert api(setup, "one-decoder", decode_threads=1) == default
    assert api(setup, "four-decoders", decode_threads=4) == default


def test_torch_threads_are_recorded_and_a_different_count_changes_at_most_the_last_bits(
    setup, default
):
    """The tiny model's ~1.4 MFLOPs per image are ~3% of decoding one JPEG, so the default gives
    torch one thread on any number of cores (ViT-B-32's ~12 GFLOPs would get them all). Two
    threads split the matmuls differently: the values may then differ in their last bits (the
    issue saw 1.9e-8 in ``aesthetic_score``), and the metadata says which count made them."""
    import pyarrow.parquet as pq

    from airflow_curator.core.annotate.clip import ClipModel, model_spec
    from airflow_curator.core.annotate.weights import resolve

    _, _, tiny = setup
    flops = ClipModel(model_spec(tiny["model"]), resolve(tiny["weights"])).flops_per_image
    expected = plan_threads("cpu", cpu_cores(), flops, BATCH)
    assert expected.torch_threads == 1
    runs = {"default": default, 1: api(setup, "torch-1", torch_threads=1)}
    runs[2] = api(setup, "torch-2", torch_threads=2)
    for n, run in runs.items():
        for data in run.values():
            plan = json.loads(pq.read_schema(pa_buffer(data)).metadata[THREADS_KEY])
            assert plan["torch_threads"] == (1 if n == "default" else n)
            assert plan["reason"] == (expected.reason if n == "default" else "set by the caller")
            assert (plan["cores"], plan["model_flops"]) == (cpu_cores(), flops)
    tables = {
        n: {k: pq.read_table(pa_buffer(v)) for k, v in run.items()} for n, run in runs.items()
    }
    for name in default:  # one thread asked for: the default's values, bit for bit
        assert tables[1][name].equals(tables["default"][name])
    for name in default:  # two threads: the same records and errors, values to the last bits
        one, two = tables[1][name], tables[2][name]
        assert one.column("key").equals(two.column("key"))
        assert one.column("error").equals(two.column("error"))
        for col in ("image_embedding", "text_embedding", "clip_score", "aesthetic_score"):
            for x, y in zip(one.column(col).to_pylist(), two.column(col).to_pylist()):
                assert (x is None) == (y is None)
                if x is not None:
                    assert abs(np.subtract(x, y)).max() < 1e-6, (name, col)


def pa_buffer(data: bytes):
    import pyarrow as pa

    return pa.BufferReader(data)
