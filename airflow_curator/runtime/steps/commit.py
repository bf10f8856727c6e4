"""``airflow-curator commit``: verify a reshard's outputs, write the manifest and ``_SUCCESS``."""

from __future__ import annotations

import argparse

from airflow_curator.core.stats import Result
from airflow_curator.runtime import options

HELP = (
    "Finish a reshard: check every planned output shard, remove leftovers of failed attempts, "
    "write _manifest.json (counts, sizes, sha256) and the _SUCCESS marker last."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.plan(p)
    p.add_argument(
        "--verify-hashes",
        action="store_true",
        help="re-read every output file and check its sha256 (otherwise: sizes and markers)",
    )
    options.sync(p)
    options.run_id(p)


def run(args: argparse.Namespace) -> Result:
    from airflow_curator.core.reshard.commit import commit

    return commit(args.plan, verify_hashes=args.verify_hashes, sync=args.sync, run_id=args.run_id)
