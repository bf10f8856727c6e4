"""``airflow-curator report``: the self-contained HTML curation report, ``<output>/report.html``."""

from __future__ import annotations

import argparse
from typing import Any

from airflow_curator.core.report.page import write_report

HELP = "Write the curation report (counts, score histograms, thumbnails) next to the output."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="the curated output folder URI")
    p.add_argument("--report", help="where to write the page (default: OUTPUT/report.html)")
    p.add_argument("--metadata", help="merged metadata folder (default: OUTPUT/_work/metadata)")
    p.add_argument("--manifest", help="dataset manifest (default: OUTPUT/_work/manifest.json)")
    p.add_argument(
        "--run-json",
        help="run record with params and step results (default: OUTPUT/_work/run.json)",
    )
    p.add_argument("--filter-column", default="passes_curation", help="kept/dropped column")
    p.add_argument("--id-col", default="key", help="record id column")
    p.add_argument("--min-aesthetic", type=float, help="threshold to draw (default: run params)")
    p.add_argument("--max-nsfw", type=float, help="threshold to draw (default: run params)")
    p.add_argument("--min-clip-score", type=float, help="threshold to draw (default: run params)")
    p.add_argument("--samples", type=int, default=12, help="thumbnails per random grid")
    p.add_argument("--seed", type=int, default=0, help="seed of the random grids")


def run(args: argparse.Namespace) -> dict[str, Any]:
    return write_report(
        args.output,
        args.report,
        metadata=args.metadata,
        manifest=args.manifest,
        run_json=args.run_json,
        filter_column=args.filter_column,
        id_col=args.id_col,
        thresholds={
            "min_aesthetic": args.min_aesthetic,
            "max_nsfw": args.max_nsfw,
            "min_clip_score": args.min_clip_score,
        },
        per_grid=args.samples,
        seed=args.seed,
    )
