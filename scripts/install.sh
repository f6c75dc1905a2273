#!/usr/bin/env bash
# Creates .venv (if needed) and installs FuseRank with one extra: `dev` (default: everything the tests use)
# or `demo` (only what `fuserank demo` runs). Shows pip's progress (one line per package); does nothing when
# that extra is already installed from this setup.py.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA=${1:-dev}
PY=${PYTHON:-python3}
stamp=".venv/.installed-$EXTRA"
want=$(sha256sum setup.py | cut -c1-16)
for done in "$stamp" .venv/.installed-dev; do   # dev holds everything demo does
  if [ -f "$done" ] && [ "$(cat "$done")" = "$want" ] && [ -x .venv/bin/fuserank ]; then
    exit 0
  fi
done
case "$EXTRA" in
  demo) echo "install: .venv/ with fuserank[demo] (first run: a few minutes and 2.3 GB; see README)" ;;
  *)    echo "install: .venv/ with fuserank[$EXTRA] (first run: a few minutes and 2.7 GB; see README)" ;;
esac
[ -x .venv/bin/python ] || "$PY" -m venv .venv
progress() { grep --line-buffered -E '^(Collecting|Installing collected|Successfully installed)' || true; }
.venv/bin/python -m pip install --disable-pip-version-check --upgrade pip setuptools wheel | progress
.venv/bin/python -m pip install --disable-pip-version-check -e ".[$EXTRA]" | progress
echo "$want" > "$stamp"
echo "install: done"
