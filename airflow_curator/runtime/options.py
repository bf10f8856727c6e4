"""The options several steps take, each declared once: the same name, meaning and default in
every step's ``--help`` (and in the argv the operators build from them)."""

from __future__ import annotations

import argparse
from typing import Any

from airflow_curator.core.groups import GROUP_BYTES, MAX_GROUPS

Parser = argparse.ArgumentParser


def dataset(
    p: Parser, what: str = "dataset folder URI (local path, gs://, any fsspec URL)"
) -> None:
    p.add_argument("--dataset", required=True, help=what)


def manifest(p: Parser) -> None:
    p.add_argument(
        "--manifest",
        help="the dataset manifest discover wrote (every shard group carries its URI): the "
        "shards are read from it, the dataset folder is not listed again; omitted: one listing",
    )


def output(p: Parser, what: str = "job output URI (work files go to OUTPUT/_work)") -> None:
    p.add_argument("--output", required=True, help=what)


def shards(p: Parser, what: str = "shard") -> None:
    p.add_argument("--shards", help=f"only these {what} numbers, e.g. 0-99,120; omitted: all")


def id_col(p: Parser) -> None:
    p.add_argument("--id-col", default="key", help="record id column (Parquet and .json)")


def annotation_folder(p: Parser, why: str = "") -> None:
    p.add_argument(
        "--annotations", help=f"annotations folder{why} (default: OUTPUT/_work/annotations)"
    )


def device(p: Parser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")


def force(p: Parser, what: str) -> None:
    p.add_argument("--force", action="store_true", help=what)


def workers(p: Parser, what: str, default: int = 0) -> None:
    p.add_argument("--workers", type=int, default=default, help=what)


def plan(p: Parser) -> None:
    p.add_argument("--plan", required=True, help="plan URI written by plan-reshard")


def filter_column(p: Parser, what: str) -> None:
    p.add_argument("--filter-column", default="passes_curation", help=what)


def metadata(p: Parser, what: str) -> None:
    p.add_argument("--metadata", help=what)


def groups(p: Parser, what: str) -> None:
    """How a step's result is cut into groups for mapped tasks (``core.groups``)."""
    p.add_argument(
        "--max-groups",
        type=int,
        default=MAX_GROUPS,
        help=f"at most this many {what} groups (Airflow's max_map_length)",
    )
    p.add_argument(
        "--group-bytes", type=int, default=GROUP_BYTES, help=f"target bytes per {what} group"
    )


def _languages(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


# (flag, type, metavar, rule): the curation filters of ``core.dataset.thresholds``
FILTERS: tuple[tuple[str, Any, str, str], ...] = (
    ("--min-aesthetic", float, "X", "aesthetic_score >= X"),
    ("--max-nsfw", float, "X", "nsfw_score <= X"),
    ("--min-clip-score", float, "X", "clip_score >= X"),
    (
        "--clip-score-top-fraction",
        float,
        "F",
        "clip_score is in the run's top fraction F (the clip-threshold step's exact threshold; "
        "ties at it pass)",
    ),
    ("--min-image-side", int, "N", "the decoded image's smaller side >= N px"),
    ("--max-aspect-ratio", float, "X", "longer side / shorter side <= X"),
    ("--min-caption-words", int, "N", "caption_words >= N"),
    ("--min-caption-chars", int, "N", "caption_chars >= N"),
    (
        "--caption-languages",
        _languages,
        "LANGS",
        "caption_language (fastText lid.176) is one of LANGS, comma separated (en,de)",
    ),
    ("--min-language-score", float, "X", "caption_language_score >= X"),
)


def thresholds(p: Parser, template: str) -> None:
    """The curation filters and their preset; ``template`` says what the step does with
    ``{rule}``. A record with an error, or a null value a filter needs, never passes."""
    from airflow_curator.core.dataset.thresholds import PRESETS

    for flag, kind, metavar, rule in FILTERS:
        p.add_argument(flag, type=kind, metavar=metavar, help=template.format(rule=rule))
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a filter recipe; the flags given override its values. datacomp-basic: "
        "DataComp's basic filtering (caption language en, >= 3 words, >= 6 characters, "
        "smaller side >= 200 px, aspect ratio <= 3)",
    )


def threshold_values(args: argparse.Namespace) -> dict[str, Any]:
    """The filter values ``thresholds`` parsed, by ``Thresholds`` field name (None: not given)."""
    return {
        flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
        for flag, *_ in FILTERS
    }


def reshard_plan(p: Parser) -> None:
    """What a reshard keeps and how it names it (plan-reshard and to-webdataset)."""
    dataset(p, "input dataset folder URI (tars, idx)")
    manifest(p)
    output(p, "output dataset folder URI")
    metadata(
        p,
        "folder of the per-shard metadata Parquet with the filter column "
        "(omitted: the dataset's own Parquet)",
    )
    filter_column(p, "boolean column: keep if true")
    id_col(p)
    p.add_argument("--samples-per-shard", type=int, default=10000, help="records per output shard")
    p.add_argument("--max-shards", type=int, default=5, help="digits of the output shard number")
    p.add_argument("--old-id-col", help="keep each record's old id in this column")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an output folder that holds files this job did not plan (refused "
        "otherwise): its shard files (NNNNN.tar/.parquet/.idx) are removed, others kept",
    )
    shards(p, "input shard")


def plan_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``make_plan`` from ``reshard_plan``'s options."""
    return {
        "metadata": args.metadata,
        "id_col": args.id_col,
        "samples_per_shard": args.samples_per_shard,
        "max_shards": args.max_shards,
        "old_id_col": args.old_id_col,
        "shards": args.shards,
        "manifest": args.manifest,
        "overwrite": args.overwrite,
    }


def run_id(p: Parser) -> None:
    """The run a step of the reshard belongs to: who holds the output's lease."""
    p.add_argument(
        "--run-id",
        help="the run this step is part of: the steps and mapped tasks of one run share the "
        "output's lease, another run writing there is refused (the operators pass "
        "<dag_id>/<run_id>); default: the Airflow task's DAG run, else this process alone",
    )


def writers(p: Parser) -> None:
    """Options of the output shard writers (reshard and to-webdataset)."""
    workers(p, "parallel writers (0: one per CPU, at most the number of output shards)")
    p.add_argument(
        "--direct-io",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write local tars with direct I/O, around the page cache (turn off for a network "
        "file system that serves it slowly)",
    )


def sync(p: Parser) -> None:
    p.add_argument(
        "--sync",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="flush local output files to disk before writing _SUCCESS",
    )
