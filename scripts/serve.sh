#!/usr/bin/env bash
# The console and the app's HTTP functions on localhost, against Azurite + the SendGrid simulator + the
# bundled sample segment: a development server for this app's own functions, not a replacement for
# `func start`. Prints the console URL and a function key; queued exports run as the queue trigger would.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m devtools.serve "$@"
