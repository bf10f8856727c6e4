"""``airflow-curator plan-reshard``: assign kept records to output shards; return output groups."""

from __future__ import annotations

import argparse
from typing import Any

from airflow_curator.core.dataset.discovery import GROUP_BYTES, MAX_GROUPS
from airflow_curator.core.reshard.plan import plan_reshard

HELP = (
    "Plan a reshard: read the filter column of each shard's metadata, assign every kept record "
    "its output shard and position, write the plan under OUTPUT/_work and return output groups."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_plan_arguments(p)
    p.add_argument("--max-groups", type=int, default=MAX_GROUPS, help="most output groups")
    p.add_argument(
        "--group-bytes", type=int, default=GROUP_BYTES, help="target bytes per output group"
    )


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """What a reshard keeps and how it names it (also used by ``to-webdataset``)."""
    p.add_argument("--dataset", required=True, help="input dataset folder URI (tars, idx)")
    p.add_argument("--output", required=True, help="output dataset folder URI")
    p.add_argument(
        "--metadata",
        help="folder of the per-shard metadata Parquet with the filter column "
        "(omitted: the dataset's own Parquet)",
    )
    p.add_argument(
        "--filter-column", default="passes_curation", help="boolean column: keep if true"
    )
    p.add_argument("--id-col", default="key", help="record id column")
    p.add_argument("--samples-per-shard", type=int, default=10000, help="records per output shard")
    p.add_argument("--max-shards", type=int, default=5, help="digits of the output shard number")
    p.add_argument("--old-id-col", help="keep each record's old id in this column")
    p.add_argument("--shards", help="only these input shard numbers, e.g. 0-99; omitted: all")


def plan_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``make_plan`` from ``add_plan_arguments``' options."""
    return {
        "metadata": args.metadata,
        "id_col": args.id_col,
        "samples_per_shard": args.samples_per_shard,
        "max_shards": args.max_shards,
        "old_id_col": args.old_id_col,
        "shards": args.shards,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    return plan_reshard(
        args.dataset,
        args.output,
        args.filter_column,
        max_groups=args.max_groups,
        group_bytes=args.group_bytes,
        **plan_options(args),
    )
