#!/usr/bin/env bash
# The test command: installs what the tests need, checks lint and types, then runs the whole suite
# (Azurite, the SendGrid simulator and the Key Vault stand-in are started by the tests themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy --strict shared/"
.venv/bin/mypy
echo "== checkov (infra)"
scripts/checkov.sh
echo "== pytest"
.venv/bin/python -m pytest "$@"
