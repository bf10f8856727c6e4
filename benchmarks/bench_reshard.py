"""Reshard speed: ours (one process, and as the DAG's three steps) vs webdataset vs ``cp -r``.

    .venv/bin/python benchmarks/bench_reshard.py [--records 20000 --shards 4 --image-bytes 55000]
    .venv/bin/python benchmarks/bench_reshard.py --records 200 --image-bytes 500 --repeat 1  # tiny

Builds an indexed dataset (random image bytes), adds a random boolean ``keep`` column keeping about
half, then times whole processes with the page cache warm, each writing into an empty folder:
``airflow-curator to-webdataset`` (plan, write and commit in one process), the same as the DAG's
three tasks (``plan-reshard``, ``reshard``, ``commit``: three processes), the same reshard
written with the webdataset library (WebDataset reader, filter, ShardWriter; it writes tars only,
no Parquet or .idx) and ``cp -r`` of the input folder. Throughput is input bytes over wall time.
Targets, for the one-process reshard: >= 0.5x cp, >= 5x the webdataset library.

Each kind of run is repeated back to back and the median kept: on a virtual machine, memory
freed a few seconds earlier can cost a page fault per page to get back, whichever run comes next.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import scratch_dir, timed, tool, warm_cache

KEEP = "keep"
# byte-compiled modules cached outside the tree, as an installed package has them
ENV = {
    **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    "PYTHONPYCACHEPREFIX": os.path.join(tempfile.gettempdir(), "bench-pycache"),
}


def run(argv: list[str]) -> None:
    """Run quietly; on failure show the tail of the command's stderr."""
    proc = subprocess.run(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV
    )
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv[:3])} ... failed:\n{proc.stderr[-3000:]}")


def make_dataset(folder: str, args: argparse.Namespace) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from airflow_curator.core.wds.index import index_dataset
    from airflow_curator.testing.dataset import write_demo_dataset

    write_demo_dataset(
        folder,
        shards=args.shards,
        records_per_shard=args.records // args.shards,
        image_bytes=args.image_bytes,
    )
    rng = random.Random(args.seed)
    for p in sorted(glob.glob(os.path.join(folder, "*.parquet"))):
        t = pq.read_table(p)
        flags = pa.array([rng.random() < args.keep for _ in range(t.num_rows)])
        pq.write_table(t.append_column(KEEP, flags), p)
    index_dataset(folder)


def webdataset_reshard(src: str, out: str, samples_per_shard: int) -> int:
    """The same job with the webdataset library: read, filter by the Parquet column, write."""
    import pyarrow.parquet as pq
    import webdataset as wds

    from airflow_curator.core.wds.naming import record_id

    keep: set[str] = set()
    for p in sorted(glob.glob(os.path.join(src, "*.parquet"))):
        t = pq.read_table(p, columns=["key", KEEP])
        keep.update(k for k, f in zip(t["key"].to_pylist(), t[KEEP].to_pylist(), strict=True) if f)
    tars = sorted(glob.glob(os.path.join(src, "*.tar")))
    dataset = wds.WebDataset(tars, shardshuffle=False).select(lambda s: s["__key__"] in keep)
    os.makedirs(out, exist_ok=True)
    n = 0
    with wds.ShardWriter(os.path.join(out, "%05d.tar"), maxcount=samples_per_shard) as sink:
        for sample in dataset:
            new = record_id(n // samples_per_shard, n % samples_per_shard, samples_per_shard)
            meta = json.loads(sample["json"])
            meta["key"] = new
            sample = {k: v for k, v in sample.items() if not k.startswith("__")}
            sample["json"] = json.dumps(meta).encode()
            sink.write({"__key__": new, **sample})
            n += 1
    return n


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=20000)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--image-bytes", type=int, default=55000)
    p.add_argument("--keep", type=float, default=0.5, help="fraction of records kept")
    p.add_argument("--samples-per-shard", type=int, default=2500, help="output shard size")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", help="folder to (re)use for the input and outputs; default a temp dir")
    p.add_argument("--webdataset-child", nargs=2, metavar=("SRC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.webdataset_child:
        webdataset_reshard(*args.webdataset_child, args.samples_per_shard)
        return 0

    root = scratch_dir(args.dir, "bench-reshard-")
    src = os.path.join(root, "input")
    stamp = os.path.join(src, "_bench.json")
    spec = {k: getattr(args, k) for k in ("records", "shards", "image_bytes", "keep", "seed")}
    if not os.path.exists(stamp) or read_json(stamp) != spec:
        shutil.rmtree(src, ignore_errors=True)
        make_dataset(src, args)
        with open(stamp, "w") as f:
            json.dump(spec, f)
    inputs = sorted(glob.glob(os.path.join(src, "*")))
    size = sum(os.path.getsize(f) for f in inputs)
    tar_bytes = sum(os.path.getsize(f) for f in inputs if f.endswith(".tar"))
    out = os.path.join(root, "out")
    plan = os.path.join(out, "_work", "reshard-plan.json")
    result = os.path.join(root, "result.json")
    cli = tool("airflow-curator")
    steps: dict[str, list[float]] = {"plan": [], "reshard": [], "commit": []}
    plan_args = ["--dataset", src, "--output", out, "--filter-column", KEEP,
                 "--samples-per-shard", str(args.samples_per_shard)]  # fmt: skip

    def step(name: str, argv: list[str]) -> None:
        t0 = time.perf_counter()
        run([cli, *argv, "--result-json", result])
        steps[name].append(time.perf_counter() - t0)

    def one(sync: bool = True) -> None:
        run([cli, "to-webdataset", *plan_args, "--result-json", result]
            + ([] if sync else ["--no-sync"]))  # fmt: skip

    def three() -> None:
        step("plan", ["plan-reshard", *plan_args])
        step("reshard", ["reshard", "--plan", plan])
        step("commit", ["commit", "--plan", plan])

    def webdataset() -> None:
        run([sys.executable, os.path.abspath(__file__), "--webdataset-child", src, out,
             "--samples-per-shard", str(args.samples_per_shard)])  # fmt: skip

    def cp() -> None:
        run(["cp", "-r", src, out])

    def fresh() -> None:
        shutil.rmtree(out, ignore_errors=True)
        os.sync()  # earlier runs' dirty pages must not slow this one down
        warm_cache(inputs)

    # correctness first: all reshards keep the same records, ours in the same bytes
    fresh()
    three()
    manifest = read_json(os.path.join(out, "_manifest.json"))
    kept = manifest["records"]
    fresh()
    one()
    assert read_json(os.path.join(out, "_manifest.json")) == manifest, "one process differs"
    fresh()
    webdataset()
    import webdataset as wds

    wds_count = sum(
        1 for _ in wds.WebDataset(sorted(glob.glob(os.path.join(out, "*.tar"))), shardshuffle=False)
    )
    assert wds_count == kept, f"webdataset version kept {wds_count}, ours {kept}"
    for v in steps.values():
        v.clear()

    cpu: dict[str, float] = {}

    def measured(name: str, fn, repeat: int = args.repeat) -> float:
        """Median wall time; CPU seconds (user + system, all processes) per run into ``cpu``."""
        calls = [0.0]

        def wrapped() -> None:
            before = _children_cpu()
            fn()
            calls[0] += _children_cpu() - before

        t = timed(wrapped, repeat, fresh)
        cpu[name] = calls[0] / repeat
        return t

    t_one = measured("one", one)
    t_nosync = measured("nosync", lambda: one(sync=False))
    t_three = measured("three", three)
    split = {k: sorted(v)[len(v) // 2] for k, v in steps.items()}
    t_wds = measured("wds", webdataset)
    t_cp = measured("cp", cp)
    shutil.rmtree(out, ignore_errors=True)

    def line(label: str, t: float, key: str) -> str:
        return f"  {label:<38} {t:7.3f} s {size / 1e6 / t:7.0f} MB/s  cpu {cpu[key]:6.2f} s"

    print(
        f"dataset: {args.shards} shards, {args.records} records, {size / 1e9:.2f} GB "
        f"({tar_bytes / 1e9:.2f} GB of tar); kept {kept} ({kept / max(args.records, 1):.0%}) "
        f"in output shards of {args.samples_per_shard}; {os.cpu_count()} CPUs"
    )
    print(
        f"page cache warm, empty output folder (median wall of {args.repeat}, whole processes; "
        "cpu: user + system seconds per run, which other load on the machine does not inflate):"
    )
    print(line("airflow-curator to-webdataset", t_one, "one"))
    print(line("  same, --no-sync (no flush, like cp)", t_nosync, "nosync"))
    print(line("plan-reshard, reshard, commit (DAG)", t_three, "three"))
    print(
        f"    plan {split['plan']:.3f} s, reshard {split['reshard']:.3f} s, "
        f"commit {split['commit']:.3f} s: three interpreters and imports"
    )
    print(line("webdataset library (tars only)", t_wds, "wds"))
    print(line("cp -r", t_cp, "cp"))
    print(
        f"  ours vs cp throughput        {t_cp / t_one:6.2f} x  "
        f"(--no-sync {t_cp / t_nosync:.2f} x, three steps {t_cp / t_three:.2f} x; target >= 0.5)"
    )
    print(
        f"  ours vs webdataset library   {t_wds / t_one:6.2f} x  "
        f"(three steps {t_wds / t_three:.2f} x; target >= 5)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
