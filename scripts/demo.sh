#!/usr/bin/env bash
# The built-in demo on a fresh machine: set up the venv, then run the shipped workflow headless.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash scripts/setup_venv.sh
exec "${ZOODIP_VENV:-$REPO/.venv}/bin/python" -m devtools.demo "$@"
