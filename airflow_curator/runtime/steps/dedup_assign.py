"""``airflow-curator dedup-assign``: each record's nearest centroid, per input shard group."""

from __future__ import annotations

import argparse
from typing import Any

HELP = (
    "Assign the records of the selected shards to their nearest centroid; writes "
    "OUTPUT/_work/dedup/assign/NNNNN.parquet per shard, sorted by cluster."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output", required=True, help="job output URI (dedup files go to OUTPUT/_work)"
    )
    p.add_argument("--shards", help="only these shard numbers, e.g. 0-3 (default: all)")
    p.add_argument("--annotations", help="annotations folder (default: OUTPUT/_work/annotations)")
    p.add_argument("--id-col", default="key", help="record id column of the annotations")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from airflow_curator.core.clusters import assign_shards

    return assign_shards(
        args.output, args.shards, annotations=args.annotations, id_col=args.id_col,
        device=args.device,
    )  # fmt: skip
