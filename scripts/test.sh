#!/usr/bin/env bash
# README command 2: install, then run the whole test suite (uses $FUSERANK_TEST_REDIS_URL or starts its own redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest "$@"
