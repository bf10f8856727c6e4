"""Semantic dedup speed and memory on synthetic CLIP-like embeddings, on the CPU.

    .venv/bin/python benchmarks/bench_dedup.py [--records 1000000 --dim 768 --n-clusters 1000]
    .venv/bin/python benchmarks/bench_dedup.py --records 2000 --dim 32 --n-clusters 8   # tiny

Writes annotation files with planted near-duplicates (reused with --dir), then runs the stage
as the DAG does, one process per task: dedup-fit, dedup-assign (one task), dedup per cluster
group, dedup-result. Prints records/s of the dedup step (time inside the step, and wall time
with process start), the peak resident memory of its largest task, and the recall and
precision of the planted pairs.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import scratch_dir, tool


def step(name: str, options: list[str], workdir: str) -> tuple[dict, float, float]:
    """Run one step as its own process: (JSON result, wall seconds, peak RSS in MB)."""
    result = os.path.join(workdir, f"{name}.json")
    argv = [tool("airflow-curator"), name, *options, "--result-json", result]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{err[-2000:]}")
    with open(result) as f:
        return json.load(f), wall, usage.ru_maxrss / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--records-per-shard", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--centers", type=int, default=2000, help="directions the data is drawn from")
    p.add_argument("--dup-fraction", type=float, default=0.05, help="planted near-duplicates")
    p.add_argument("--n-clusters", type=int, default=1000)
    p.add_argument("--cluster-groups", type=int, default=16)
    p.add_argument("--sample", type=int, default=100_000)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--eps", type=float, default=0.01)
    p.add_argument("--block", type=int, default=2048)
    p.add_argument("--dir", help="job folder to (re)use; default a temp dir")
    args = p.parse_args()

    import pyarrow.parquet as pq

    from airflow_curator.testing.annotations import write_synthetic_annotations

    out = scratch_dir(args.dir, "bench-dedup-")
    ann = os.path.join(out, "_work", "annotations")
    shards = max(1, args.records // args.records_per_shard)
    planted_file = os.path.join(out, "planted.json")
    if len(glob.glob(os.path.join(ann, "*.parquet"))) != shards or not os.path.exists(planted_file):
        t0 = time.perf_counter()
        planted = write_synthetic_annotations(
            ann, shards, args.records // shards, dim=args.dim, centers=args.centers,
            dup_fraction=args.dup_fraction, seed=0,
        )  # fmt: skip
        with open(planted_file, "w") as f:
            json.dump(planted.pairs, f)
        print(f"wrote {planted.records} records in {time.perf_counter() - t0:.1f} s")
    with open(planted_file) as f:
        pairs = [tuple(p) for p in json.load(f)]
    work = tempfile.mkdtemp(prefix="bench-dedup-results-")

    o = ["--output", out]
    fit, fit_wall, fit_mb = step(
        "dedup-fit",
        [*o, "--n-clusters", str(args.n_clusters), "--cluster-groups", str(args.cluster_groups),
         "--sample", str(args.sample), "--iterations", str(args.iterations), "--device", "cpu"],
        work,
    )  # fmt: skip
    assign, assign_wall, assign_mb = step("dedup-assign", [*o, "--device", "cpu"], work)
    dedup_s = dedup_wall = dedup_mb = 0.0
    records = largest = 0
    for g in fit["groups"]:
        d, wall, mb = step(
            "dedup",
            [*o, "--clusters", g["clusters"], "--eps", str(args.eps), "--block", str(args.block),
             "--device", "cpu"],
            work,
        )  # fmt: skip
        dedup_s += d["seconds"]
        dedup_wall += wall
        dedup_mb = max(dedup_mb, mb)
        records += d["records"]
        largest = max(largest, d["largest_cluster"])
    res, res_wall, res_mb = step("dedup-result", o, work)

    removed = set()
    for path in sorted(glob.glob(os.path.join(out, "_work", "dedup", "result", "*.parquet"))):
        t = pq.read_table(path)
        removed |= {k for k, u in zip(t["key"].to_pylist(), t["is_unique"].to_pylist()) if not u}
    expected = {b for _, b in pairs}
    hit = len(removed & expected)

    print(f"data: {records} embeddings (dim {args.dim}) in {shards} shards, {len(pairs)} planted "
          f"near-duplicate pairs; {fit['n_clusters']} clusters, largest {largest}, "
          f"{len(fit['groups'])} cluster groups, eps {args.eps}")  # fmt: skip
    print(f"  dedup-fit     {fit_wall:8.1f} s wall   peak {fit_mb:7.0f} MB "
          f"({fit['sample']} sampled, {args.iterations} iterations at most)")  # fmt: skip
    print(f"  dedup-assign  {assign_wall:8.1f} s wall   peak {assign_mb:7.0f} MB   "
          f"{assign['records'] / max(assign['seconds'], 1e-9):9.0f} records/s in step")  # fmt: skip
    print(f"  dedup         {dedup_wall:8.1f} s wall   peak {dedup_mb:7.0f} MB (largest task)")
    print(f"                {records / max(dedup_s, 1e-9):9.0f} records/s in the step   "
          f"{records / max(dedup_wall, 1e-9):9.0f} records/s with process start")  # fmt: skip
    print(f"  dedup-result  {res_wall:8.1f} s wall   peak {res_mb:7.0f} MB")
    print(
        f"  duplicates: {res['duplicates']} marked; planted pairs: recall "
        f"{hit / max(len(expected), 1):.4f}, precision {hit / max(len(removed), 1):.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
