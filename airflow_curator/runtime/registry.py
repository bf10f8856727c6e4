"""The steps of the command line. Adding a step: a module in ``runtime/steps`` with
``HELP``, ``add_arguments(parser)`` and ``run(args) -> dict``, then one line here."""

from __future__ import annotations

import argparse
import functools
import importlib
from types import ModuleType

PROGRAM = "airflow-curator"

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
    "clip-threshold": "clip_threshold",
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


def _configure(parser: argparse.ArgumentParser, module: ModuleType) -> None:
    module.add_arguments(parser)
    parser.add_argument(
        "--result-json",
        metavar="PATH",
        help="write the step's JSON result here (a pod uses /airflow/xcom/return.json); "
        "default: standard output",
    )


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; ``only`` builds just that step's subcommand, so a step's process
    does not import every other step's module (a tenth of a second per process)."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
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
        _configure(p, module)
    return parser


@functools.cache
def step_parser(name: str) -> argparse.ArgumentParser:
    """One step's own parser (what its subcommand parses after the step name)."""
    module = step_module(name)
    parser = argparse.ArgumentParser(prog=f"{PROGRAM} {name}", description=module.HELP)
    _configure(parser, module)
    return parser


@functools.cache
def accepted_options(name: str) -> dict[str, argparse.Action]:
    """Option dest -> argparse action of a step: what it accepts, for building its argv. The
    one place that reads argparse's private ``_actions``."""
    return {a.dest: a for a in step_parser(name)._actions if a.option_strings}
