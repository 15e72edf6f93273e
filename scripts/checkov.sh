#!/usr/bin/env bash
# Static security checks of the Bicep templates in infra/ with checkov, offline (--skip-download).
# Exits non-zero on any failed check, on any file checkov cannot parse, and on a .bicep file in which it
# finds no resource or module (its Bicep parser silently drops files using functions it does not know).
# Every skip is written in the template next to the resource: `//checkov:skip=CKV_...:reason`.
# Usage: scripts/checkov.sh [extra checkov options]      CHECKOV=/path/to/checkov to pick the binary.
set -euo pipefail
cd "$(dirname "$0")/.."

checkov="${CHECKOV:-}"
if [ -z "$checkov" ]; then
  if [ -x .venv/bin/checkov ]; then
    checkov=.venv/bin/checkov
  elif command -v checkov >/dev/null 2>&1; then
    checkov="$(command -v checkov)"
  else
    echo "checkov.sh: checkov is not installed (.venv/bin/pip install -r requirements-dev.txt)" >&2
    exit 2
  fi
fi
# The Python that runs checkov (from its entry point's shebang), to reuse checkov's own Bicep parser below.
python="$(head -n1 "$checkov" | sed -n 's/^#! *//p')"
[ -n "$python" ] && [ -x "$python" ] || python=.venv/bin/python

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

status=0
"$checkov" -d infra --framework bicep --skip-download --compact --quiet \
  --output cli --output json --output-file-path "console,$out/results.json" "$@" || status=$?

"$python" - "$out/results.json" <<'PY' || status=1
import json
import sys
from pathlib import Path

from checkov.bicep.parser import Parser

report = json.loads(Path(sys.argv[1]).read_text())
reports = report if isinstance(report, list) else [report]
summary = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0}
for item in reports:
    for key in summary:
        summary[key] += int(item.get("summary", {}).get(key, 0))
problems = []
if summary["failed"]:
    problems.append(f"{summary['failed']} failed check(s)")
if summary["parsing_errors"]:
    problems.append(f"{summary['parsing_errors']} file(s) checkov could not parse")
if summary["passed"] + summary["failed"] == 0:
    problems.append("checkov evaluated no check at all")

parser = Parser()
for path in sorted(Path("infra").rglob("*.bicep")):
    template, _ = parser.parse(path)
    if template is None:
        problems.append(f"{path}: checkov's Bicep parser cannot read it")
        continue
    resources = len(template.get("resources") or {})
    modules = len(template.get("modules") or {})
    if resources + modules == 0:
        problems.append(f"{path}: parsed, but no resource or module found")
    print(f"checkov.sh: {path}: parsed, {resources} resource(s), {modules} module(s)")

print(f"checkov.sh: passed {summary['passed']}, failed {summary['failed']}, skipped {summary['skipped']}, "
      f"parsing errors {summary['parsing_errors']}")
for problem in problems:
    print(f"checkov.sh: FAIL: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
exit "$status"
