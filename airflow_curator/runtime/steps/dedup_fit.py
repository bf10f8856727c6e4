"""``airflow-curator dedup-fit``: k-means centroids of the image embeddings (SemDedup step 1)."""

from __future__ import annotations

import argparse

from airflow_curator.core.stats import Result
from airflow_curator.runtime import options

HELP = (
    "Fit k-means centroids to a seeded sample of the image embeddings in the annotations; writes "
    "OUTPUT/_work/dedup/centroids.parquet and returns the cluster groups to run dedup over."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.output(p)
    options.annotation_folder(p)
    p.add_argument("--n-clusters", type=int, default=1000, help="k-means clusters")
    p.add_argument(
        "--cluster-groups", type=int, default=16,
        help="cluster groups = dedup tasks; each task holds one group's embeddings in memory",
    )  # fmt: skip
    p.add_argument("--iterations", type=int, default=20, help="k-means iterations at most")
    p.add_argument("--sample", type=int, default=100_000, help="embeddings to fit on")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and initial centroids")
    options.device(p)


def run(args: argparse.Namespace) -> Result:
    from airflow_curator.core.dedup.fit import fit_centroids

    return fit_centroids(
        args.output, annotations=args.annotations, n_clusters=args.n_clusters,
        parts=args.cluster_groups, iterations=args.iterations, sample=args.sample,
        seed=args.seed, device=args.device,
    )  # fmt: skip
