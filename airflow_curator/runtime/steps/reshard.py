"""``airflow-curator reshard``: write one group of output shards of a reshard plan."""

from __future__ import annotations

import argparse
from typing import Any

HELP = (
    "Write output shards (tar + idx + parquet) of a reshard plan, copying kept members' bytes "
    "unchanged with new ids."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", required=True, help="plan URI written by plan-reshard")
    p.add_argument("--outputs", help="output shard numbers to write, e.g. 0-3; omitted: all")
    add_writer_arguments(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="rewrite output shards an earlier attempt already finished for this plan",
    )


def add_writer_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the writers (also used by ``to-webdataset``)."""
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="parallel writers (0: one per CPU, at most the number of output shards)",
    )
    p.add_argument(
        "--direct-io",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write local tars with direct I/O, around the page cache (turn off for a network "
        "file system that serves it slowly)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from airflow_curator.core.reshard.writer import reshard

    return reshard(
        args.plan,
        args.outputs,
        workers=args.workers,
        force=args.force,
        direct_io=args.direct_io,
    )
