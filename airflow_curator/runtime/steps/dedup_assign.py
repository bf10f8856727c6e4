"""``airflow-curator dedup-assign``: each record's nearest centroid, per input shard group."""

from __future__ import annotations

import argparse

from airflow_curator.core.stats import Result
from airflow_curator.runtime import options

HELP = (
    "Assign the records of the selected shards to their nearest centroid; writes "
    "OUTPUT/_work/dedup/assign/NNNNN.parquet per shard, sorted by cluster."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.output(p)
    options.shards(p)
    options.annotation_folder(p)
    options.id_col(p)
    options.device(p)


def run(args: argparse.Namespace) -> Result:
    from airflow_curator.core.dedup.assign import assign_shards

    return assign_shards(
        args.output, args.shards, annotations=args.annotations, id_col=args.id_col,
        device=args.device,
    )  # fmt: skip
