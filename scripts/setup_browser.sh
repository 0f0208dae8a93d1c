#!/usr/bin/env bash
# Headless Chromium + chromedriver (Debian packages) and Selenium (in the venv) for tests/browser.
#
# Idempotent, and never fails its caller: whatever is missing at the end, the browser tests skip
# with the reason. System packages are only installed on CI (CI=true) or when asked
# (ZOODIP_INSTALL_BROWSER=1), as root, with apt-get; a developer's machine is not changed unasked.
# No browser is ever downloaded by Selenium: the tests pass the driver's path, so Selenium Manager
# is not used.
#
#   ZOODIP_INSTALL_BROWSER=1  install chromium + chromium-driver with apt-get outside CI too
#   ZOODIP_SKIP_BROWSER=1     do nothing (the browser tests skip)
#   ZOODIP_VENV               the venv that gets selenium (default: <repo>/.venv)
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ZOODIP_VENV:-$REPO/.venv}"
PY="$VENV/bin/python"
SELENIUM_SPEC="selenium>=4.11"

say() { echo "[setup_browser] $*"; }

browser_path() {
  local c
  for c in chromium chromium-browser google-chrome; do
    if command -v "$c" >/dev/null 2>&1; then command -v "$c"; return 0; fi
  done
  return 1
}

driver_path() {
  if command -v chromedriver >/dev/null 2>&1; then command -v chromedriver; return 0; fi
  if [[ -x /usr/lib/chromium/chromedriver ]]; then echo /usr/lib/chromium/chromedriver; return 0; fi
  return 1
}

have_browser() { browser_path >/dev/null && driver_path >/dev/null; }

if [[ "${ZOODIP_SKIP_BROWSER:-}" == "1" ]]; then
  say "ZOODIP_SKIP_BROWSER=1: nothing to do (the browser tests will skip)"
  exit 0
fi

if have_browser; then
  say "browser: $(browser_path), driver: $(driver_path)"
elif [[ "${CI:-}" == "true" || "${ZOODIP_INSTALL_BROWSER:-}" == "1" ]]; then
  if [[ "$(id -u)" != "0" ]]; then
    say "not root: cannot install chromium with apt-get; the browser tests will skip"
  elif ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get (not Debian/Ubuntu): install Chromium and chromedriver yourself; the browser tests will skip"
  else
    start=$SECONDS
    say "apt-get install chromium chromium-driver"
    if DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; then
      say "installed in $((SECONDS - start))s: $(browser_path 2>/dev/null || echo '?')"
    else
      say "apt-get failed (see above); the browser tests will skip"
    fi
  fi
else
  say "no Chromium/chromedriver: the browser tests will skip (ZOODIP_INSTALL_BROWSER=1 installs them as root on Debian)"
fi

if have_browser && [[ -x "$PY" ]]; then
  if "$PY" -c "import selenium" >/dev/null 2>&1; then
    say "selenium: $("$PY" -c 'import selenium; print(selenium.__version__)')"
  else
    say "pip install $SELENIUM_SPEC"
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 "$PY" -m pip install -q "$SELENIUM_SPEC" ||
      say "pip install selenium failed; the browser tests will skip"
  fi
fi
exit 0
