"""``airflow-curator dedup``: near-duplicates within clusters (and exact ones), per group."""

from __future__ import annotations

import argparse

from airflow_curator.core.stats import Result
from airflow_curator.runtime import options

HELP = (
    "Mark near-duplicate images within each cluster of the selected cluster groups (cosine "
    "similarity above 1 - eps to a higher-ranked record: highest aesthetic score, then lowest "
    "id), and exact duplicates whose hash falls in them; writes OUTPUT/_work/dedup/dups/."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.output(p)
    options.annotation_folder(p)
    p.add_argument(
        "--clusters",
        help="cluster ids, whole groups as dedup-fit returned them, e.g. 0-62 (default: all)",
    )
    p.add_argument("--eps", type=float, default=0.01, help="duplicates: similarity > 1 - eps")
    p.add_argument("--block", type=int, default=2048, help="rows per similarity block")
    p.add_argument(
        "--keep", choices=("aesthetic", "hard", "easy", "random"), default="aesthetic",
        help="which record of a near-duplicate set is kept: the highest aesthetic score (then "
        "lowest id), or NeMo Curator's hard (farthest from the centroid), easy (closest), random",
    )  # fmt: skip
    p.add_argument(
        "--exact", choices=("auto", "on", "off"), default="auto",
        help="exact duplicates from dedup-hash: auto when its files exist",
    )  # fmt: skip
    options.device(p)


def run(args: argparse.Namespace) -> Result:
    from airflow_curator.core.dedup.dedup import dedup_clusters

    return dedup_clusters(
        args.output, args.clusters, annotations=args.annotations, eps=args.eps,
        block=args.block, exact=args.exact, device=args.device, keep=args.keep,
    )  # fmt: skip
