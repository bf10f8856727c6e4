"""The filters' costs: pair statistics beside annotate, and the top-fraction step at scale.

    .venv/bin/python benchmarks/bench_filters.py [--records 2000] [--scores 10000000]

1. Pair statistics (image size from the header, caption words and characters, fastText
   language ID) over generated 256x256 JPEGs and captions, in records/s on one core, and the
   share of annotate's time they add: annotate with the tiny CLIP model on the same records,
   end to end (its time includes the statistics, which are then timed alone).
2. ``clip-threshold`` over ``--scores`` synthetic CLIP scores in annotation files of 10,000
   rows (a synthetic manifest names them), as its own process: wall time and peak resident
   memory, beside reading every score into one array and sorting it (the naive exact way).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import scratch_dir, tool


def pair_stats(folder: str, records: int) -> None:
    from airflow_curator.core.annotate.annotator import Annotator, annotate_dataset
    from airflow_curator.core.annotate.pairstats import (
        image_size,
        language_id,
        pair_columns,
    )
    from airflow_curator.core.dataset.discovery import discover
    from airflow_curator.core.wds.records import iter_records
    from airflow_curator.testing.dataset import write_demo_dataset
    from airflow_curator.testing.filters import CAPTIONS
    from airflow_curator.testing.models import tiny_options, write_tiny_models

    data = os.path.join(folder, "pairs")
    shards = max(1, records // 500)
    write_demo_dataset(
        data, shards=shards, records_per_shard=records // shards, image_size=(256, 256)
    )
    models = write_tiny_models(os.path.join(folder, "tiny"))
    lid = language_id()
    images, captions = [], []
    rng = random.Random(0)
    for shard in discover(data, count_records=False).shards:
        for rec in iter_records(shard.tar, shard.stem):
            images.append(rec.data["jpg"])
            captions.append(rng.choice(CAPTIONS)[0])
    ids = [str(i) for i in range(len(images))]
    t0 = time.perf_counter()
    sizes = {rid: image_size(data) for rid, data in zip(ids, images, strict=True)}
    t_size = time.perf_counter() - t0
    t0 = time.perf_counter()
    pair_columns(
        ids, dict(zip(ids, captions, strict=True)).__getitem__, sizes.get, [None] * len(ids), lid
    )
    t_cols = time.perf_counter() - t0
    n = len(ids)
    print(f"pair statistics over {n} records (one core):")
    for what, t in (("image size from the header", t_size), ("captions + language ID", t_cols)):
        print(f"  {what}: {n / t:,.0f} records/s ({t / n * 1e6:.1f} us each)")
    options = tiny_options(models)
    options.force = True
    annotator = Annotator(options)
    annotate_dataset(data, os.path.join(folder, "warm"), "0", options, annotator)  # model loaded
    t0 = time.perf_counter()
    annotate_dataset(data, os.path.join(folder, "out"), None, options, annotator)
    t_ann = time.perf_counter() - t0
    extra = t_size + t_cols
    print(
        f"  annotate with the tiny model, end to end: {n / t_ann:,.0f} records/s; the statistics "
        f"are {100 * extra / (t_ann - extra):.1f}% on top of the rest of annotate (target: <= 5%)"
    )


def write_scores(folder: str, scores: int, per_file: int = 10_000) -> str:
    """A job folder: a manifest of ``scores // per_file`` shards and their annotation files."""
    import numpy as np
    import pyarrow as pa

    from airflow_curator.core import layout
    from airflow_curator.core.dataset.discovery import Manifest, Shard, save_manifest
    from airflow_curator.core.io import parquet

    out = os.path.join(folder, "job")
    marker = os.path.join(out, "scores.json")
    files = scores // per_file
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == scores:
                return out
    rng = np.random.default_rng(0)
    shards = []
    ann = layout.annotations_url(out)
    os.makedirs(ann, exist_ok=True)
    for s in range(files):
        stem = f"{s:05d}"
        values = rng.normal(0.28, 0.05, per_file).astype(np.float32)
        mask = rng.random(per_file) < 0.01  # failed records
        table = pa.table(
            {
                "key": pa.array([f"{stem}{i:04d}" for i in range(per_file)]),
                "clip_score": pa.array(values, pa.float32(), mask=mask),
            }
        )
        parquet.write_table(os.path.join(ann, f"{stem}.parquet"), table)
        shards.append(Shard(s, stem, f"{out}/{stem}.tar", 0, f"{out}/{stem}.parquet"))
    save_manifest(Manifest(out, shards), layout.manifest_url(out))
    with open(marker, "w") as f:
        json.dump(scores, f)
    return out


# runs the command as its own child, so its peak memory is its own, not that of this
# (large) benchmark process it was forked from
PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
    "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def measured(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one process."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, *argv], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{argv[:2]} failed:\n{proc.stderr[-2000:]}")
    return wall, int(proc.stdout.split()[-1]) / 1024


NAIVE = """
import sys, numpy as np, pyarrow.parquet as pq, glob
cols = [pq.read_table(f, columns=["clip_score"])["clip_score"].to_numpy(zero_copy_only=False)
        for f in sorted(glob.glob(sys.argv[1] + "/*.parquet"))]
x = np.concatenate(cols).astype(np.float64)
x = x[~np.isnan(x)]
k = int(np.ceil(0.3 * len(x)))
print(np.sort(x)[::-1][k - 1])
"""


def top_fraction(folder: str, scores: int) -> None:
    from airflow_curator.core import layout

    t0 = time.perf_counter()
    out = write_scores(folder, scores)
    print(
        f"\nclip-threshold over {scores:,} scores in {scores // 10_000} files "
        f"(written in {time.perf_counter() - t0:.1f}s, reused with --dir):"
    )
    step = [tool("airflow-curator"), "clip-threshold", "--output", out,
            "--clip-score-top-fraction", "0.3"]  # fmt: skip
    wall, rss = measured(step)
    with open(layout.clip_threshold_url(out)) as f:
        found = json.load(f)
    naive_wall, naive_rss = measured([sys.executable, "-c", NAIVE, layout.annotations_url(out)])
    print(
        f"  clip-threshold: {wall:.1f}s, peak {rss:,.0f} MB, {found['passes']} passes, "
        f"threshold {found['threshold']:.6f} keeps {found['kept']:,} of {found['scores']:,}"
    )
    print(f"  read all + sort: {naive_wall:.1f}s, peak {naive_rss:,.0f} MB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=2000, help="records for the pair statistics")
    p.add_argument("--scores", type=int, default=10_000_000, help="scores for clip-threshold")
    p.add_argument("--dir", help="keep the generated data here (reused when it matches)")
    args = p.parse_args()
    folder = scratch_dir(args.dir, "bench-filters-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pair_stats(folder, args.records)
    top_fraction(folder, args.scores)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
