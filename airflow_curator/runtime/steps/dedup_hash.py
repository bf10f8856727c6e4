"""``airflow-curator dedup-hash``: sha256 of each record's image bytes, per input shard group."""

from __future__ import annotations

import argparse
from typing import Any

HELP = (
    "Hash the image bytes of the selected shards (img2dataset's sha256 column when present, "
    "else one read of the tar) for exact deduplication; writes OUTPUT/_work/dedup/hash/."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="dataset folder URI")
    p.add_argument(
        "--output", required=True, help="job output URI (dedup files go to OUTPUT/_work)"
    )
    p.add_argument("--shards", help="only these shard numbers, e.g. 0-3 (default: all)")
    p.add_argument(
        "--annotations",
        help="annotations folder for aesthetic scores, which decide the copy kept "
        "(default: OUTPUT/_work/annotations; without it the lowest id is kept)",
    )
    p.add_argument("--id-col", default="key", help="record id column")
    p.add_argument(
        "--source", choices=("auto", "tar", "parquet"), default="auto",
        help="where hashes come from: auto uses the Parquet's sha256 column when it has one",
    )  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    from airflow_curator.core.dedup.hash import hash_shards

    return hash_shards(
        args.dataset, args.output, args.shards, id_col=args.id_col,
        annotations=args.annotations, source=args.source,
    )  # fmt: skip
