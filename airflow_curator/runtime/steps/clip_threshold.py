"""``airflow-curator clip-threshold``: the run's exact CLIP-score threshold for a top fraction."""

from __future__ import annotations

import argparse

from airflow_curator.core.stats import Result
from airflow_curator.runtime import options

HELP = (
    "Read the clip_score column of every annotation file of the job's manifest and write the "
    "exact threshold that keeps the top fraction F of the run to OUTPUT/_work/clip-threshold.json "
    "(save-metadata's --clip-score-top-fraction applies it; ties at the threshold pass)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.output(p)
    options.annotation_folder(p)
    p.add_argument(
        "--clip-score-top-fraction",
        type=float,
        required=True,
        metavar="F",
        help="fraction of the scored records to keep, in (0, 1] (DataComp's baseline: 0.3)",
    )
    options.workers(p, "annotation files read concurrently", default=8)


def run(args: argparse.Namespace) -> Result:
    from airflow_curator.core.dataset.clip_threshold import clip_threshold

    return clip_threshold(
        args.output, args.clip_score_top_fraction, annotations=args.annotations,
        workers=args.workers,
    )  # fmt: skip
