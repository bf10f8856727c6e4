#!/usr/bin/env bash
# Create .venv at the repo root with the package, its runtime extra (DALI, torch, open_clip) and
# the dev extra. Quick when nothing changed: a stamp of the inputs skips the install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.curator-setup
want=$(cat pyproject.toml scripts/setup.sh scripts/constraints.txt | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
echo "setting up .venv (first time: a few minutes; torch is a large wheel)..." >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
log=.venv/setup.log
{
  .venv/bin/python -m pip install --upgrade pip
  # A CUDA build that also runs on the CPU; torchvision must be its pair (see README).
  .venv/bin/python -m pip install -c scripts/constraints.txt "torch==2.14.1" "torchvision==0.29.1"
  # constraints: the exact versions the suite was last run with, so CI is reproducible
  # compat: a path entry instead of an import hook (10 ms off every step's start)
  .venv/bin/python -m pip install -c scripts/constraints.txt --config-settings editable_mode=compat \
    -e ".[runtime,dev]"
  # The build leaves airflow_curator.egg-info in the checkout, which the path entry puts on
  # sys.path: a second copy of the metadata, so Airflow loads every entry point (the plugin
  # included) twice. The installed .dist-info is the metadata.
  rm -rf airflow_curator.egg-info
} >"$log" 2>&1 || { tail -n 40 "$log" >&2; echo "setup failed: see $log" >&2; exit 1; }
echo "$want" >"$stamp"
echo "set up .venv" >&2
