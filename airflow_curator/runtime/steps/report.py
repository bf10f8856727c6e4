"""``airflow-curator report``: the self-contained HTML curation report, ``<output>/report.html``."""

from __future__ import annotations

import argparse

from airflow_curator.core.dataset.thresholds import Thresholds
from airflow_curator.core.report.page import write_report
from airflow_curator.core.stats import Result
from airflow_curator.runtime import options

HELP = "Write the curation report (counts, score histograms, thumbnails) next to the output."


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.output(p, "the curated output folder URI")
    p.add_argument("--report", help="where to write the page (default: OUTPUT/report.html)")
    options.metadata(p, "merged metadata folder (default: OUTPUT/_work/metadata)")
    p.add_argument("--manifest", help="dataset manifest (default: OUTPUT/_work/manifest.json)")
    p.add_argument(
        "--run-json",
        help="run record with params and step results (default: OUTPUT/_work/run.json)",
    )
    options.filter_column(p, "the kept/dropped column")
    options.id_col(p)
    options.thresholds(p, "draw the threshold {rule} (default: the run's params)")
    p.add_argument("--cards", type=int, default=12, help="record cards per random grid")
    p.add_argument("--seed", type=int, default=0, help="seed of the random grids")


def run(args: argparse.Namespace) -> Result:
    return write_report(
        args.output,
        args.report,
        metadata=args.metadata,
        manifest=args.manifest,
        run_json=args.run_json,
        filter_column=args.filter_column,
        id_col=args.id_col,
        thresholds=Thresholds.build(args.preset, **options.threshold_values(args)).as_dict(),
        per_grid=args.cards,
        seed=args.seed,
    )
