"""The steps of the command line. Adding a step: a module in ``runtime/steps`` with
``HELP``, ``add_arguments(parser)`` and ``run(args) -> dict``, then one line here."""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

# subcommand -> module in airflow_curator.runtime.steps
STEPS: dict[str, str] = {
    "discover": "discover",
    "index": "index",
    "save-metadata": "save_metadata",
    "plan-reshard": "plan_reshard",
    "reshard": "reshard",
    "commit": "commit",
    "to-webdataset": "to_webdataset",
    "annotate": "annotate",
    "report": "report",
    "dedup-fit": "dedup_fit",
    "dedup-assign": "dedup_assign",
    "dedup-hash": "dedup_hash",
    "dedup": "dedup",
    "dedup-result": "dedup_result",
}


def step_module(name: str) -> ModuleType:
    if name not in STEPS:
        raise KeyError(f"unknown step {name!r}; steps: {', '.join(STEPS)}")
    return importlib.import_module(f"airflow_curator.runtime.steps.{STEPS[name]}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; ``only`` builds just that step's subcommand, so a step's process
    does not import every other step's module (a tenth of a second per process)."""
    parser = argparse.ArgumentParser(
        prog="airflow-curator",
        description="Curate image-text WebDataset shards. Each step writes a small JSON result.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for name in [only] if only in STEPS else STEPS:
        module = step_module(name)
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(p)
        p.add_argument(
            "--result-json",
            metavar="PATH",
            help="write the step's JSON result here (a pod uses /airflow/xcom/return.json); "
            "default: standard output",
        )
    return parser


def step_parser(name: str) -> argparse.ArgumentParser:
    parser = build_parser(only=name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]
