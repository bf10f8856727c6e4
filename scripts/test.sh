#!/usr/bin/env bash
# Set up .venv if needed, lint, then run the whole test suite (GPU and cluster tests skip
# themselves without a GPU / cluster). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The report's screenshot test needs a headless browser: Debian's chromium, where we may install it.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update && apt-get install -y --no-install-recommends chromium; } >/dev/null 2>&1 \
    || echo "could not install chromium: the screenshot test will fail in CI" >&2
fi
export HF_HUB_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/pytest -q "$@"
