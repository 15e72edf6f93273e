"""The alert rules (infra/app/alerts.bicep) against the telemetry the app really emits (shared.service.telemetry).

The KQL is taken out of the Bicep; every `customDimensions.<field>` it reads must be a dimension a real run record
carries (captured from a real RunReport through the OpenTelemetry pipeline and the Azure Monitor exporter's own
envelope mapping), every status it filters on must be one a run ends with, and its message filter must be the
record's message. And: no alert email, no alert resources.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from shared.pipeline.report import RunReport
from shared.service import telemetry
from tests.test_infra_settings import _code, _module_params
from tests.test_telemetry import captured_run_records, custom_dimensions

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "infra" / "app" / "alerts.bicep"
MAIN = ROOT / "infra" / "main.bicep"


def queries() -> dict[str, str]:
    """Bicep variable name -> the KQL of its ''' multi-line string."""
    text = ALERTS.read_text(encoding="utf-8")
    found = dict(re.findall(r"^var\s+(\w+)\s*=\s*'''\n(.*?)'''", text, flags=re.M | re.S))
    assert set(found) == {"runNotSucceededQuery", "destinationStaleQuery"}, found.keys()
    return found


def emitted_dimensions() -> set[str]:
    """customDimensions of the `traces` row a real run record becomes (a finished RunReport, stored form)."""
    report = RunReport(run_id="r-alerts", destination="vip", list_id="l", source="vip/x.csv", rows_read=3, exported=3)
    report.finish("succeeded")
    with captured_run_records() as exporter:
        telemetry.emit_run({**report.to_dict(), "triggered_by": "blob", "full": False})
    ((name, message, properties),) = custom_dimensions(exporter)
    assert (name, message) == ("Microsoft.ApplicationInsights.Message", telemetry.RUN_MESSAGE)
    return set(properties)


def fields_read(kql: str) -> set[str]:
    return set(re.findall(r"customDimensions\.(\w+)", kql)) | set(re.findall(r"customDimensions\[\"(\w+)\"\]", kql))


def test_every_field_the_alert_queries_read_is_one_the_app_emits() -> None:
    emitted = emitted_dimensions()
    assert set(telemetry.RUN_DIMENSIONS) | set(telemetry.RUN_COUNTS) <= emitted
    for name, kql in queries().items():
        used = fields_read(kql)
        assert used, f"{name} reads no customDimensions field"
        assert used <= emitted, f"{name} reads fields no run record has: {sorted(used - emitted)}"
        assert used <= set(telemetry.RUN_DIMENSIONS) | set(telemetry.RUN_COUNTS)  # names the module promises
        assert re.search(r"^traces\s*\n\|\s*where message == \"(\w+)\"", kql), f"{name}: not on the run records"
        assert re.findall(r"message == \"(\w+)\"", kql) == [telemetry.RUN_MESSAGE]


def test_the_statuses_filtered_on_are_real_final_statuses() -> None:
    found = queries()
    failing = re.search(r"status in \(([^)]*)\)", found["runNotSucceededQuery"])
    assert failing
    assert set(re.findall(r"\"(\w+)\"", failing.group(1))) == {"failed", "partial", "refused"}
    succeeded = re.findall(r"status == \"(\w+)\"", found["destinationStaleQuery"])
    assert succeeded == ["succeeded"]
    used = set(re.findall(r"\"(\w+)\"", failing.group(1))) | set(succeeded)
    assert used <= set(telemetry.FINAL_STATUSES)
    # and FINAL_STATUSES are the statuses the code really ends runs with (RunReport.finish calls)
    ended = set()
    for path in (ROOT / "shared").rglob("*.py"):
        ended |= set(re.findall(r"\bfinish\(\"(\w+)\"", path.read_text(encoding="utf-8")))
    assert ended == set(telemetry.FINAL_STATUSES)


def test_the_stale_rule_defaults_to_26_hours_and_fits_its_window() -> None:
    code = _code(ALERTS)
    assert re.search(r"param staleAfterHours int = 26\b", code)
    assert "ago(STALE_AFTER_HOURSh)" in queries()["destinationStaleQuery"]
    assert "replace(destinationStaleQuery, 'STALE_AFTER_HOURS', string(staleAfterHours))" in code
    assert "@maxValue(47)" in code and "overrideQueryTimeRange: 'P2D'" in code  # the look-back sees a run 47 h old
    main = _code(MAIN)
    assert re.search(r"param staleAfterHours int = 26\b", main)
    assert _module_params(main, "alerts")["staleAfterHours"] == "staleAfterHours"


def test_no_alert_email_means_no_alert_resources() -> None:
    main = _code(MAIN)
    assert re.search(r"param alertEmail string = ''", main)
    assert re.search(r"module alerts 'app/alerts\.bicep' = if \(!empty\(alertEmail\)\)", main)
    # nothing else makes an action group or an alert rule
    for path in (ROOT / "infra").rglob("*.bicep"):
        if path != ALERTS:
            text = _code(path)
            assert "Microsoft.Insights/actionGroups" not in text and "scheduledQueryRules" not in text, path
    parameters = json.loads((ROOT / "infra" / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert parameters["alertEmail"]["value"] == "${ALERT_EMAIL}"
    assert parameters["staleAfterHours"]["value"] == "${ALERT_STALE_HOURS}"


def test_both_rules_mail_the_action_group_and_watch_application_insights() -> None:
    code = _code(ALERTS)
    assert "emailAddress: alertEmail" in code
    rules = re.findall(r"resource (\w+) 'Microsoft\.Insights/scheduledQueryRules@[^']+'", code)
    assert sorted(rules) == ["destinationStale", "runNotSucceeded"]
    assert code.count("actionGroup.id") == 3  # each rule's actions, and the module's output
    assert code.count("applicationInsights.id") == 2
    assert _module_params(_code(MAIN), "alerts")["applicationInsightsName"] == \
        "monitoring.outputs.applicationInsightsName"
