"""``airflow-curator plan-reshard``: assign kept records to output shards; return output groups."""

from __future__ import annotations

import argparse

from airflow_curator.core.reshard.plan import plan_reshard
from airflow_curator.core.stats import Result
from airflow_curator.runtime import options

HELP = (
    "Plan a reshard: read the filter column of each shard's metadata, assign every kept record "
    "its output shard and position, write the plan under OUTPUT/_work and return output groups."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.reshard_plan(p)
    options.groups(p, "output")
    options.run_id(p)


def run(args: argparse.Namespace) -> Result:
    return plan_reshard(
        args.dataset,
        args.output,
        args.filter_column,
        max_groups=args.max_groups,
        group_bytes=args.group_bytes,
        run_id=args.run_id,
        **options.plan_options(args),
    )
