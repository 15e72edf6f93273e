"""Azure Functions entry point (Python v2 model): registers the blueprints. The only setting read at import is
APPLICATIONINSIGHTS_CONNECTION_STRING (run records to Application Insights; a problem there only logs a warning)."""

import logging

import azure.functions as func

from ExportSegment import bp as export_segment_bp
from ExportSegment.console_page import bp as console_bp
from ExportSegment.erasures import bp as erasures_bp
from ExportSegment.operate import bp as operate_bp
from OnSchedule import bp as on_schedule_bp
from shared.service.telemetry import configure_azure_monitor_export

# The worker forwards Python logging to Application Insights; host.json's logLevel categories do not reach
# these libraries' loggers. azure-core logs every storage and Key Vault request at INFO (headers redacted,
# but noise and cost); httpx logs every SendGrid request. Our own modules log one summary line per run.
for _chatty in ("azure.core.pipeline.policies.http_logging_policy", "azure.identity", "httpx"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)

# One structured record per run (shared.service.telemetry), for the alerts in infra/app/alerts.bicep.
configure_azure_monitor_export()

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(export_segment_bp)
app.register_functions(operate_bp)
app.register_functions(erasures_bp)
app.register_functions(on_schedule_bp)
app.register_functions(console_bp)
