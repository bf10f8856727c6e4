"""Index speed: ours vs DALI's wds2idx (shard by shard) vs reading the files (cat).

    .venv/bin/python benchmarks/bench_index.py [--records 20000 --shards 4 --image-bytes 55000]

Prints whole-process times side by side in one run, page cache warm and then cold, as ratios.
Targets: >= 2.5x faster than wds2idx warm; within 1.3x of cat cold.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import cat, drop_cache, run, scratch_dir, timed, tool, warm_cache


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=20000)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--image-bytes", type=int, default=55000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dir", help="dataset folder to (re)use; default a temp dir")
    args = p.parse_args()

    from airflow_curator.testing.dataset import write_demo_dataset

    folder = scratch_dir(args.dir, "bench-index-")
    tars = sorted(glob.glob(os.path.join(folder, "*.tar")))
    if len(tars) != args.shards:
        write_demo_dataset(
            folder,
            shards=args.shards,
            records_per_shard=args.records // args.shards,
            image_bytes=args.image_bytes,
        )
        tars = sorted(glob.glob(os.path.join(folder, "*.tar")))
    size = sum(os.path.getsize(t) for t in tars)
    refdir = tempfile.mkdtemp(prefix="wds2idx-")

    def ours() -> None:
        run(
            [
                tool("airflow-curator"),
                "index",
                "--dataset",
                folder,
                "--force",
                "--result-json",
                os.path.join(refdir, "result.json"),
            ]
        )

    def wds2idx() -> None:
        for t in tars:
            run([tool("wds2idx"), t, os.path.join(refdir, os.path.basename(t)[:-4] + ".idx")])

    # correctness first: same bytes as wds2idx on these ordinary shards
    ours()
    wds2idx()
    for t in tars:
        stem = os.path.basename(t)[:-4]
        ours_idx, ref_idx = os.path.join(folder, stem + ".idx"), os.path.join(refdir, stem + ".idx")
        with open(ours_idx) as a, open(ref_idx) as b:
            assert a.read() == b.read(), f"{stem}.idx differs from wds2idx"

    warm = lambda: warm_cache(tars)  # noqa: E731
    cold = lambda: drop_cache(tars)  # noqa: E731
    t_ours = timed(ours, args.repeat, warm)
    t_wds = timed(wds2idx, args.repeat, warm)
    t_cat = timed(lambda: cat(tars), args.repeat, warm)
    c_ours = timed(ours, args.repeat, cold)
    c_cat = timed(lambda: cat(tars), args.repeat, cold)

    print(f"dataset: {len(tars)} shards, {args.records} records, {size / 1e9:.2f} GB")
    print(f"page cache warm (median of {args.repeat}, whole process):")
    print(f"  airflow-curator index  {t_ours:7.3f} s   {size / 1e6 / t_ours:8.0f} MB/s")
    print(f"  wds2idx, per shard     {t_wds:7.3f} s   {size / 1e6 / t_wds:8.0f} MB/s")
    print(f"  cat > /dev/null        {t_cat:7.3f} s   {size / 1e6 / t_cat:8.0f} MB/s")
    print(f"  speed-up over wds2idx  {t_wds / t_ours:7.2f} x   (target >= 2.5)")
    print("page cache cold:")
    print(f"  airflow-curator index  {c_ours:7.3f} s   {size / 1e6 / c_ours:8.0f} MB/s")
    print(f"  cat > /dev/null        {c_cat:7.3f} s   {size / 1e6 / c_cat:8.0f} MB/s")
    print(f"  ours / cat             {c_ours / c_cat:7.2f} x   (target <= 1.3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
