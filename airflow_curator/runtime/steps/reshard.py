"""``airflow-curator reshard``: write one group of output shards of a reshard plan."""

from __future__ import annotations

import argparse

from airflow_curator.core.stats import Result
from airflow_curator.runtime import options

HELP = (
    "Write output shards (tar + idx + parquet) of a reshard plan, copying kept members' bytes "
    "unchanged with new ids."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.plan(p)
    p.add_argument("--outputs", help="output shard numbers to write, e.g. 0-3; omitted: all")
    options.writers(p)
    options.force(p, "rewrite output shards an earlier attempt already finished for this plan")
    options.run_id(p)


def run(args: argparse.Namespace) -> Result:
    from airflow_curator.core.reshard.writer import reshard

    return reshard(
        args.plan,
        args.outputs,
        workers=args.workers,
        force=args.force,
        direct_io=args.direct_io,
        run_id=args.run_id,
    )
