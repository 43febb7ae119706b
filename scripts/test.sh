#!/usr/bin/env bash
# Set up a virtual environment with every extra and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[dev]'
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python -m pytest -q -p no:cacheprovider "$@"
