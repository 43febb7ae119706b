#!/usr/bin/env bash
# Set up a virtual environment with every extra (and Debian's chromium for the browser test,
# Debian's nginx for the serving-shards test)
# and run the whole test suite. This is the README's second command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[dev,browser]'
if [ "$(id -u)" = 0 ] || command -v chromium >/dev/null 2>&1; then
  bash scripts/browser-deps.sh
else
  echo "note: not root and no chromium: the browser end-to-end test will skip" >&2
fi
if [ "$(id -u)" = 0 ] || command -v nginx >/dev/null 2>&1; then
  bash scripts/nginx-deps.sh
else
  echo "note: not root and no nginx: the serving-shards end-to-end test will skip" >&2
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python -m pytest -q -p no:cacheprovider "$@"
