"""Azure Functions entry point (Python v2 model): registers the blueprints; reads no setting at import."""

import logging

import azure.functions as func

from ExportSegment import bp as export_segment_bp
from OnSchedule import bp as on_schedule_bp

# The worker forwards Python logging to Application Insights; host.json's logLevel categories do not reach
# these libraries' loggers. azure-core logs every storage and Key Vault request at INFO (headers redacted,
# but noise and cost); httpx logs every SendGrid request. Our own modules log one summary line per run.
for _chatty in ("azure.core.pipeline.policies.http_logging_policy", "azure.identity", "httpx"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(export_segment_bp)
app.register_functions(on_schedule_bp)
