"""``airflow-curator dedup-result``: the per-shard ``is_unique`` column, per input shard group."""

from __future__ import annotations

import argparse

from airflow_curator.core.stats import Result
from airflow_curator.runtime import options

HELP = (
    "Write OUTPUT/_work/dedup/result/NNNNN.parquet per shard (id, is_unique, duplicate_of), an "
    "annotations folder save-metadata can merge; needs dedup done for every cluster group."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.output(p)
    options.shards(p)
    options.annotation_folder(p)
    options.id_col(p)
    p.add_argument("--column", default="is_unique", help="name of the boolean result column")


def run(args: argparse.Namespace) -> Result:
    from airflow_curator.core.dedup.result import write_results

    return write_results(
        args.output, args.shards, annotations=args.annotations, id_col=args.id_col,
        column=args.column,
    )  # fmt: skip
