"""``airflow-curator dedup-hash``: sha256 of each record's image bytes, per input shard group."""

from __future__ import annotations

import argparse

from airflow_curator.core.stats import Result
from airflow_curator.runtime import options

HELP = (
    "Hash the image bytes of the selected shards (img2dataset's sha256 column when present, "
    "else one read of the tar) for exact deduplication; writes OUTPUT/_work/dedup/hash/."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.dataset(p)
    options.manifest(p)
    options.output(p)
    options.shards(p)
    options.annotation_folder(
        p, " for the aesthetic scores that decide the copy kept (without it: the lowest id)"
    )
    options.id_col(p)
    p.add_argument(
        "--source", choices=("auto", "tar", "parquet"), default="auto",
        help="where hashes come from: auto uses the Parquet's sha256 column when it has one",
    )  # fmt: skip


def run(args: argparse.Namespace) -> Result:
    from airflow_curator.core.dedup.hash import hash_shards

    return hash_shards(
        args.dataset, args.output, args.shards, id_col=args.id_col,
        annotations=args.annotations, source=args.source, manifest=args.manifest,
    )  # fmt: skip
