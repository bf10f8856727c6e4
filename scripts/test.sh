#!/usr/bin/env bash
# Set up .venv if needed, lint, then run the whole test suite (GPU and cluster tests skip
# themselves without a GPU / cluster). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The report's screenshot test and the Airflow UI tests (selenium) need a headless browser and its
# driver: Debian's chromium and chromium-driver, where we may install them.
if ! { command -v chromium && command -v chromedriver; } >/dev/null && [ "$(id -u)" = 0 ] \
  && command -v apt-get >/dev/null; then
  { apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver; } \
    >/dev/null 2>&1 || echo "could not install chromium: the browser tests will fail in CI" >&2
fi
export HF_HUB_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy  # core/ and runtime/, configured in pyproject.toml
exec .venv/bin/pytest -q "$@"
