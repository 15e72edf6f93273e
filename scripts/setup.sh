#!/usr/bin/env bash
# Installs everything the local run and the tests need, from scratch or incrementally:
# a Python 3.11+ virtualenv in .venv with requirements-dev.txt, Azurite from package-lock.json, and
# Debian's chromium for the console's browser test.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements-installed
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ] \
    || [ constraints-dev.txt -nt "$stamp" ]; then
  echo "setup: installing Python packages (requirements-dev.txt, pinned by constraints-dev.txt)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements-dev.txt -c constraints-dev.txt
  touch "$stamp"
fi
if [ ! -x node_modules/.bin/azurite-blob ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing Azurite (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
fi
# The console's browser test drives Debian's Chromium through Playwright (whose own browser download is
# blocked here and not used). CI runs as root on a fresh machine: install it there; elsewhere say how.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's chromium (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: /usr/bin/chromium is missing: 'sudo apt-get install chromium' for the console's browser test" >&2
  fi
fi
