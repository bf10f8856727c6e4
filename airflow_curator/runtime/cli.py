"""Entry point of ``airflow-curator``: parse, run one step, write its JSON result, exit.

Exit codes are the contract of ``core.errors``: 0 done, 1 the data is at fault, 2 the request
is wrong (argparse's own errors too), 75 storage unavailable (retried), 70 a bug (traceback
logged, retried). Failures end with one line, ``airflow-curator <step>: error: <reason>``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys

from airflow_curator.core.errors import BUG_EXIT, CuratorError
from airflow_curator.core.io import storage
from airflow_curator.core.stats import Result
from airflow_curator.runtime.registry import STEPS, build_parser, step_module

logger = logging.getLogger("airflow_curator")
# set in pods to the container's terminationMessagePath, so the failure shows the reason
TERMINATION_LOG_ENV = "CURATOR_TERMINATION_LOG"


def write_result(result: Result, path: str | None) -> None:
    text = json.dumps(result, sort_keys=True)
    if path is None:
        print(text)
    else:
        storage.write_bytes(path, text.encode())


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    step = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(only=step if step in STEPS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result = step_module(args.step).run(args)
        write_result(result, args.result_json)
    except CuratorError as e:
        return fail(args.step, str(e), e.exit_code)
    except Exception as e:  # a bug: the traceback is what a maintainer needs
        logger.exception("airflow-curator %s failed", args.step)
        return fail(args.step, f"{type(e).__name__}: {e}", BUG_EXIT)
    return 0


def fail(step: str, reason: str, code: int) -> int:
    """Print the step's one-line reason (and write it to the termination log in a pod)."""
    line = f"airflow-curator {step}: error: {reason}"
    print(line, file=sys.stderr)
    path = os.environ.get(TERMINATION_LOG_ENV)
    if path:
        with contextlib.suppress(OSError), open(path, "wb") as f:
            f.write(" ".join(line.split()).encode()[:4096])  # what Kubernetes keeps
    return code


def entry() -> None:
    """The console script: ``main``, then exit without the interpreter's last collections
    walking every object (tens of milliseconds per step once pyarrow is loaded)."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
