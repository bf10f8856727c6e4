"""The Python API's cost over the steps it runs: embed + score + save, side by side.

    .venv/bin/python benchmarks/bench_python_api.py [--shards 4] [--records 250] [--repeat 3]

The same dataset (real JPEGs) and the tiny CLIP model with both LAION heads, on the CPU:

- steps: ``annotate_dataset`` (what ``airflow-curator annotate`` runs) then ``save_metadata``
  merging the annotations into a copy of the metadata (``save-metadata --path``);
- python: ``ClipImageEmbedder(classifiers=[AestheticClassifier(), NsfwClassifier()])(dataset)
  .save_metadata(path)``, Dask's default scheduler, the NeMo Curator way.

Each variant is timed ``--repeat`` times after one untimed warm-up (model loads, DALI's first
pipeline) and the medians are printed with their ratio. Target: python >= 0.9x the steps.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import scratch_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--records", type=int, default=250, help="records per shard")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dir", help="keep the data here (default: a temporary folder)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from airflow_curator import (
        AestheticClassifier,
        ClipImageEmbedder,
        ImageTextPairDataset,
        NsfwClassifier,
    )
    from airflow_curator.core.annotate.annotator import Annotator, annotate_dataset
    from airflow_curator.core.dataset.save_metadata import save_metadata
    from airflow_curator.testing.dataset import write_demo_dataset
    from airflow_curator.testing.models import tiny_options, write_tiny_models

    root = scratch_dir(args.dir, "bench-python-api-")
    data = os.path.join(root, "dataset")
    if not os.path.exists(data):
        write_demo_dataset(
            data, shards=args.shards, records_per_shard=args.records, image_size=(256, 256)
        )
    tiny = write_tiny_models(os.path.join(root, "tiny"))
    records = args.shards * args.records
    options = tiny_options(tiny, force=True)
    annotator = Annotator(options)
    embedder = ClipImageEmbedder(
        tiny["model"],
        tiny["weights"],
        device="cpu",
        classifiers=[
            AestheticClassifier(model_path=tiny["aesthetic_weights"]),
            NsfwClassifier(model_path=tiny["nsfw_weights"]),
        ],
    )

    def steps() -> None:
        job = os.path.join(root, "job")
        shutil.rmtree(job, ignore_errors=True)
        result = annotate_dataset(data, job, None, options, annotator)
        save_metadata(data, annotations=result["annotations"], path=os.path.join(job, "meta"))

    def python() -> None:
        out = os.path.join(root, "python-meta")
        shutil.rmtree(out, ignore_errors=True)
        embedder(ImageTextPairDataset.from_webdataset(data)).save_metadata(out)

    results = {}
    for name, fn in (("steps", steps), ("python", python)):
        fn()  # warm-up: model loads, the first DALI pipeline
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        results[name] = sorted(times)[len(times) // 2]
    for name, seconds in results.items():
        print(f"{name:7s} {seconds:6.2f} s  {records / seconds:7.1f} records/s")
    print(f"python / steps throughput: {results['steps'] / results['python']:.2f}x")


if __name__ == "__main__":
    main()
