"""``airflow-curator to-webdataset``: plan-reshard, reshard and commit in one process."""

from __future__ import annotations

import argparse

from airflow_curator.core.stats import Result
from airflow_curator.runtime import options

HELP = (
    "Reshard a dataset in one process: plan, write every output shard with parallel writers, "
    "commit. The same code and output as plan-reshard, reshard and commit, which a DAG runs as "
    "separate tasks."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.reshard_plan(p)
    options.writers(p)
    options.sync(p)
    options.run_id(p)


def run(args: argparse.Namespace) -> Result:
    from airflow_curator.core.reshard.writer import reshard_dataset

    return reshard_dataset(
        args.dataset,
        args.output,
        args.filter_column,
        workers=args.workers,
        sync=args.sync,
        direct_io=args.direct_io,
        run_id=args.run_id,
        **options.plan_options(args),
    )
