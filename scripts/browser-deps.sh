#!/usr/bin/env bash
# Installs what tests/e2e/test_ui_promotion.py needs (called from CI before the tests):
#   * Debian's chromium (+ its driver, for anyone who prefers Selenium) -- Playwright's own
#     browser download is not reachable from CI, so the test launches /usr/bin/chromium;
#   * Playwright for Python (the `browser` extra). Never `playwright install`.
# Needs root for apt-get (CI runs as root); run inside the project's virtual environment.
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        chromium chromium-driver fonts-liberation
fi
python -m pip install --quiet 'playwright>=1.44'
chromium --version
python -c "import playwright; from importlib.metadata import version; print('playwright', version('playwright'))"
