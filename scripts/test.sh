#!/usr/bin/env bash
# Set up .venv if needed, lint, then run the whole test suite (GPU and cluster tests skip
# themselves without a GPU / cluster). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/pytest -q "$@"
