#!/usr/bin/env bash
# Create/refresh the project's venv: torch (CPU-usable build), the ComfyUI host's
# requirements, the pack's requirements and the test tools. Idempotent: a stamp of the
# requirement files + this script skips the installs when nothing changed.
#
#   ZOODIP_VENV    venv location (default: <repo>/.venv)
#   ZOODIP_PYTHON  interpreter to build it with (default: python3.11, 3.12, 3.13, python3)
#   ZOODIP_TORCH   torch pins (default: "torch==2.14.1 torchvision==0.29.1")
#   COMFYUI_PATH   the host (default: ComfyUI root holding this pack, else ../shared/comfyui)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ZOODIP_VENV:-$REPO/.venv}"
TORCH_SPEC="${ZOODIP_TORCH:-torch==2.14.1 torchvision==0.29.1}"
# Not in the host's requirements.txt but imported by its server (app/frontend_management);
# upstream gets it transitively from older huggingface_hub releases, newer ones don't pull it.
HOST_EXTRAS="requests"
TEST_TOOLS="pytest ruff"
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

say() { echo "[setup_venv] $*"; }

# Same lookup as devtools/host_path.py.
find_host() {
  if [[ -n "${COMFYUI_PATH:-}" ]]; then echo "$COMFYUI_PATH"; return; fi
  local parent
  parent="$(dirname "$REPO")"
  if [[ "$(basename "$parent")" == "custom_nodes" && -f "$(dirname "$parent")/nodes.py" ]]; then
    dirname "$parent"; return
  fi
  echo "$REPO/../shared/comfyui"
}

find_python() {
  local c
  for c in ${ZOODIP_PYTHON:-} python3.11 python3.12 python3.13 python3; do
    if command -v "$c" >/dev/null 2>&1 &&
      "$c" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      command -v "$c"; return
    fi
  done
  return 1
}

HOST="$(cd "$(find_host)" 2>/dev/null && pwd)" || { say "no ComfyUI host found (set COMFYUI_PATH)"; exit 1; }
HOST_REQ="$HOST/requirements.txt"
PACK_REQ="$REPO/requirements.txt"
[[ -f "$HOST_REQ" ]] || { say "missing $HOST_REQ"; exit 1; }
say "repo: $REPO"
say "host: $HOST"
say "venv: $VENV"

PY="$VENV/bin/python"
if [[ -x "$PY" ]] && ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  say "existing venv is broken or older than Python 3.11: recreating it"
  rm -rf "$VENV"
fi
if [[ ! -x "$PY" ]]; then
  BASE_PY="$(find_python)" || { say "need Python >= 3.11 (set ZOODIP_PYTHON)"; exit 1; }
  say "creating venv with $BASE_PY ($("$BASE_PY" --version 2>&1))"
  "$BASE_PY" -m venv "$VENV"
fi

STAMP="$VENV/.zoodip-setup.stamp"
want="$(
  {
    echo "$TORCH_SPEC|$HOST_EXTRAS|$TEST_TOOLS"
    "$PY" --version 2>&1
    cat "$HOST_REQ"
    [[ -f "$PACK_REQ" ]] && cat "$PACK_REQ"
    cat "${BASH_SOURCE[0]}"
  } | sha256sum | cut -d' ' -f1
)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  say "up to date (stamp matches): nothing to install"
  exit 0
fi

pip_install() {
  say "pip install $*"
  "$PY" -m pip install "$@"
}

rm -f "$STAMP" # a failed run below must not leave a matching stamp
# torch first, pinned: unpinned 'torch' in later files would otherwise pull a different build.
# shellcheck disable=SC2086
pip_install $TORCH_SPEC
pip_install -r "$HOST_REQ"
# shellcheck disable=SC2086
pip_install $HOST_EXTRAS
if [[ -f "$PACK_REQ" ]]; then
  pip_install -r "$PACK_REQ"
else
  say "no $PACK_REQ yet: skipping the pack's requirements"
fi
# shellcheck disable=SC2086
pip_install $TEST_TOOLS
"$PY" -m pip check || say "pip check reported conflicts (see above); continuing"
echo "$want" >"$STAMP"
say "done"
