#!/usr/bin/env bash
# The main job end to end on local defaults: Azurite + the SendGrid simulator + the bundled sample segment.
# Uploads samples/segments/... to Azurite, fires the blob-triggered function, prints the run report.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m devtools.run_local "$@"
