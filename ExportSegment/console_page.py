"""The operator console: one static page (HTML, CSS, JS shipped in ExportSegment/console/) served anonymously.

The page holds no data and no secret, so it needs no key: everything it shows it fetches from the operate API
with the function key the person types in (kept in the tab's sessionStorage by the page). A fixed allow-list
maps each URL to one file, so no request can name another file of the package; the Content-Security-Policy
allows only this origin's scripts, styles and API (no inline script, no CDN, no framing).
"""

from __future__ import annotations

from pathlib import Path

import azure.functions as func

bp = func.Blueprint()

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
FILES = {  # URL name -> (file in CONSOLE_DIR, content type)
    "": ("index.html", "text/html; charset=utf-8"),
    "index.html": ("index.html", "text/html; charset=utf-8"),
    "console.css": ("console.css", "text/css; charset=utf-8"),
    "console.js": ("console.js", "text/javascript; charset=utf-8"),
}
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # A new deployment's page and script must not be mixed with a cached older one.
    "Cache-Control": "no-cache",
}


@bp.function_name("Console")
@bp.route(route="console/{file?}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def console(req: func.HttpRequest) -> func.HttpResponse:
    name = req.route_params.get("file") or ""
    if not name and req.url.split("?", 1)[0].endswith("/"):
        # `/api/console/` would resolve the page's relative `console/console.js` one level too deep.
        return func.HttpResponse(status_code=308, headers={"Location": "../console", **SECURITY_HEADERS})
    entry = FILES.get(name)
    if entry is None:
        return func.HttpResponse("not found", status_code=404, mimetype="text/plain", headers=SECURITY_HEADERS)
    filename, content_type = entry
    body = (CONSOLE_DIR / filename).read_bytes()
    return func.HttpResponse(body, status_code=200, headers={"Content-Type": content_type, **SECURITY_HEADERS})
