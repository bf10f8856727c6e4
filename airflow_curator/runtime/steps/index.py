"""``airflow-curator index``: write (or verify) DALI ``.idx`` files for the shards."""

from __future__ import annotations

import argparse

from airflow_curator.core.stats import Result
from airflow_curator.core.wds.index import index_dataset
from airflow_curator.runtime import options

HELP = "Write DALI index files (wds2idx v1.2) for shards that lack a fresh one, or verify them."


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.dataset(p)
    options.manifest(p)
    options.shards(p)
    options.force(p, "rewrite indexes that look fresh")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check existing indexes against their tars instead of writing",
    )
    options.workers(p, "parallel processes (0: one per CPU, at most the number of shards)")


def run(args: argparse.Namespace) -> Result:
    return index_dataset(
        args.dataset,
        args.shards,
        force=args.force,
        verify=args.verify,
        workers=args.workers,
        manifest=args.manifest,
    )
