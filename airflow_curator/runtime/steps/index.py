"""``airflow-curator index``: write (or verify) DALI ``.idx`` files for the shards."""

from __future__ import annotations

import argparse
from typing import Any

from airflow_curator.core.wds.index import index_dataset

HELP = "Write DALI index files (wds2idx v1.2) for shards that lack a fresh one, or verify them."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="dataset folder URI")
    p.add_argument("--shards", help="only these shard numbers, e.g. 0-99,120 (default: all)")
    p.add_argument("--force", action="store_true", help="rewrite indexes that look fresh")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check existing indexes against their tars instead of writing",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="parallel processes (0: one per CPU, at most the number of shards)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    return index_dataset(
        args.dataset, args.shards, force=args.force, verify=args.verify, workers=args.workers
    )
