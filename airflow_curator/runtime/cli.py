"""Entry point of ``airflow-curator``: parse, run one step, write its JSON result, exit.

Exit codes are the contract of ``core.errors``: 0 done, 1 the data is at fault, 2 the request
is wrong (argparse's own errors too), 75 storage unavailable (retried), 70 a bug (traceback
logged, retried). Failures end with one line, ``airflow-curator <step>: error: <reason>``.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from typing import Any

from airflow_curator.core.errors import BUG_EXIT, CuratorError
from airflow_curator.core.io import storage
from airflow_curator.runtime.registry import STEPS, build_parser, step_module

logger = logging.getLogger("airflow_curator")


def write_result(result: dict[str, Any], path: str | None) -> None:
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
        print(f"airflow-curator {args.step}: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # a bug: the traceback is what a maintainer needs
        logger.exception("airflow-curator %s failed", args.step)
        print(f"airflow-curator {args.step}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return BUG_EXIT
    return 0


def entry() -> None:
    """The console script: ``main``, then exit without the interpreter's last collections
    walking every object (tens of milliseconds per step once pyarrow is loaded)."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
