"""``airflow-curator save-metadata``: join annotations into each shard's Parquet, atomically."""

from __future__ import annotations

import argparse

from airflow_curator.core.stats import Result
from airflow_curator.runtime import options

HELP = (
    "Merge per-shard annotations into the shards' metadata Parquet by record id, optionally "
    "keep a subset of columns and write a boolean curation filter column from thresholds."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.dataset(p)
    options.manifest(p)
    p.add_argument(
        "--annotations",
        required=True,
        action="append",
        help="folder of NNNNN.parquet annotations; repeat to join several (e.g. the dedup result)",
    )
    p.add_argument(
        "--path",
        help="folder for the merged NNNNN.parquet; omitted: replace the dataset's own, atomically",
    )
    p.add_argument("--columns", help="keep only these columns, comma separated (id always kept)")
    options.id_col(p)
    options.thresholds(p, "pass if {rule}")
    p.add_argument(
        "--clip-threshold",
        help="the clip-threshold step's file, for --clip-score-top-fraction "
        "(the DAG's: OUTPUT/_work/clip-threshold.json)",
    )
    options.filter_column(p, "name of the boolean filter column")
    p.add_argument(
        "--require",
        action="append",
        default=[],
        help="a boolean column that must be true to pass (e.g. is_unique); repeatable",
    )
    options.shards(p)
    options.workers(p, "shards merged in parallel (threads)", default=8)


def run(args: argparse.Namespace) -> Result:
    from airflow_curator.core.dataset.save_metadata import Thresholds, save_metadata

    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    return save_metadata(
        args.dataset,
        annotations=args.annotations,
        path=args.path,
        columns=columns,
        id_col=args.id_col,
        thresholds=Thresholds.build(
            args.preset, require=args.require, **options.threshold_values(args)
        ),
        clip_threshold=args.clip_threshold,
        filter_column=args.filter_column,
        shards=args.shards,
        workers=args.workers,
        manifest=args.manifest,
    )
