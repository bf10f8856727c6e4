"""Options the dedup steps share (job output, annotations folder), defined once."""

from __future__ import annotations

import argparse


def add_job_arguments(
    p: argparse.ArgumentParser, *, shards: bool = True, id_col: bool = True
) -> None:
    p.add_argument(
        "--output", required=True, help="job output URI (dedup files go to OUTPUT/_work)"
    )
    if shards:
        p.add_argument("--shards", help="only these shard numbers, e.g. 0-3 (default: all)")
    p.add_argument("--annotations", help="annotations folder (default: OUTPUT/_work/annotations)")
    if id_col:
        p.add_argument("--id-col", default="key", help="record id column of the annotations")


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
