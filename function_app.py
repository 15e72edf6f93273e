"""Azure Functions entry point (Python v2 model): registers the blueprints; reads no setting at import."""

import azure.functions as func

from ExportSegment import bp as export_segment_bp
from OnSchedule import bp as on_schedule_bp

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(export_segment_bp)
app.register_functions(on_schedule_bp)
