"""``airflow-curator discover``: list and pair the shards, write the manifest, return groups."""

from __future__ import annotations

import argparse

from airflow_curator.core.dataset.discovery import (
    discover,
    input_group,
    make_groups,
    save_manifest,
)
from airflow_curator.core.stats import Result, Stats
from airflow_curator.runtime import options

HELP = "Find the shards of a dataset, write its manifest and split it into groups for mapping."


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.dataset(p)
    p.add_argument("--manifest", help="where to write the dataset manifest JSON")
    options.groups(p, "shard")
    options.shards(p)
    p.add_argument(
        "--on-invalid",
        choices=("error", "skip"),
        default="error",
        help="a shard with a missing tar/Parquet or a bad name: fail, or skip and report",
    )
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="a folder without shards is an empty dataset (default: an error, exit 2, that "
        "says what the folder holds instead)",
    )
    p.add_argument(
        "--no-count",
        dest="count",
        action="store_false",
        help="do not read Parquet footers for record counts",
    )


def run(args: argparse.Namespace) -> Result:
    stats = Stats()
    manifest = discover(
        args.dataset,
        count_records=args.count,
        on_invalid=args.on_invalid,
        allow_empty=args.allow_empty,
    )
    if args.shards:
        manifest.shards = manifest.select(args.shards)
    if args.manifest:
        save_manifest(manifest, args.manifest)
    groups = make_groups(manifest.shards, args.max_groups, args.group_bytes)
    return stats.result(
        dataset=args.dataset,
        manifest=args.manifest,
        shards=len(manifest.shards),
        records=manifest.records,
        bytes=manifest.bytes,
        skipped=manifest.skipped,
        ignored=len(manifest.ignored),
        indexed=sum(1 for s in manifest.shards if s.idx_fresh),
        groups=[input_group(g, args.dataset, args.manifest) for g in groups],
    )
