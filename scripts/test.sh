#!/usr/bin/env bash
# The single test command: set up the venv, lint, run pytest (extra args go to pytest).
# Exit status: pytest's, except that "no tests collected" (5) and a ruff failure fail too.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="${ZOODIP_VENV:-$REPO/.venv}"
PY="$VENV/bin/python"

start=$SECONDS
bash scripts/setup_venv.sh
echo "[test] venv ready in $((SECONDS - start))s"
bash scripts/setup_browser.sh  # Chromium for tests/browser on CI (skips itself elsewhere)

echo "[test] ruff check ."
ruff_rc=0
"$PY" -m ruff check . || ruff_rc=$?

echo "[test] pytest $*"
pytest_rc=0
"$PY" -m pytest "$@" || pytest_rc=$?
# Nothing more is printed on success: pytest's summary stays the last line.

if [[ $pytest_rc -eq 5 ]]; then
  echo "[test] pytest collected no tests: failing ($((SECONDS - start))s)" >&2
  exit 5
fi
if [[ $pytest_rc -ne 0 ]]; then
  exit "$pytest_rc"
fi
if [[ $ruff_rc -ne 0 ]]; then
  echo "[test] ruff found problems: failing ($((SECONDS - start))s)" >&2
  exit 1
fi
