#!/usr/bin/env bash
# Installs Debian's nginx for tests/e2e/test_shards_nginx.py (serving shards behind
# `hash ... consistent`); called from scripts/test.sh. Needs root for apt-get (CI runs as
# root). The test runs nginx in the foreground from its own temporary folder; the package's
# service is neither needed nor started here.
set -euo pipefail

if ! command -v nginx >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx
fi
nginx -v
