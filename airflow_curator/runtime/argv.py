"""The one place that turns a step and its options into an ``airflow-curator`` argv.

Operators call this for both local and Kubernetes execution, so the pod's arguments and the
subprocess's argv are the same list. Option names are checked against the step's parser.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from airflow_curator.core.errors import UsageError
from airflow_curator.runtime.registry import accepted_options


def build_argv(step: str, options: Mapping[str, Any], result_json: str | None = None) -> list[str]:
    """``build_argv("index", {"dataset": "gs://b/d", "force": True})`` ->
    ``["index", "--dataset", "gs://b/d", "--force"]`` (no program name: it is the entrypoint)."""
    actions = accepted_options(step)
    argv = [step]
    for name, value in options.items():
        dest = name.replace("-", "_")
        if dest not in actions:
            raise UsageError(f"step {step!r} has no option {name!r}")
        action = actions[dest]
        flag = action.option_strings[-1]
        if value is None:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):  # --sync / --no-sync
            argv.append(action.option_strings[0 if value else 1])
            continue
        if action.nargs == 0 and isinstance(action.const, bool):  # store_true / store_false
            if bool(value) is action.const:  # e.g. --no-count (store_false): count=False
                argv.append(flag)
            continue
        if isinstance(value, (list, tuple)):
            for v in value:
                argv += [flag, _text(v)]
            continue
        argv += [flag, _text(value)]
    if result_json is not None:
        argv += ["--result-json", result_json]
    return argv


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
