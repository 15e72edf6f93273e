"""The console's HTTP function (static files, allow-list, security headers) and the local development server
(devtools/serve.py): the host's routing, key check and queue delivery, against Azurite and the simulator.
The page itself is driven in a real browser by tests/test_console_browser.py."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.functions_host import _route_params, find_route, http_routes
from devtools.serve import DevServer, describe
from ExportSegment.console_page import CONSOLE_DIR, FILES
from shared.pipeline.report import SegmentPart
from shared.service import history
from tests.test_functions import VIP_LIST, Env, csv_bytes, env, http, person, sim  # noqa: F401 - fixtures
from tests.test_infra_settings import _funcignore, _funcignored

ROOT = Path(__file__).resolve().parent.parent


# -- the console function ------------------------------------------------------------------------------

def test_the_console_is_served_anonymously_with_a_strict_content_security_policy() -> None:
    route, params = find_route("GET", "console") or pytest.fail("no console route")
    assert (route.name, route.auth_level, route.methods, params) == ("Console", "ANONYMOUS", ("GET",), {})
    assert find_route("POST", "console") is None
    page = http("GET", "console").response
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.get_body() == (CONSOLE_DIR / "index.html").read_bytes()
    for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
        asset = http("GET", f"console/{name}").response
        assert asset.status_code == 200 and asset.headers["Content-Type"].startswith(kind)
        assert asset.get_body() == (CONSOLE_DIR / name).read_bytes()
        assert "Content-Security-Policy" in asset.headers


def test_the_console_is_the_only_route_without_a_key() -> None:
    levels = {route.name: route.auth_level for route in http_routes()}
    assert [name for name, level in levels.items() if level != "FUNCTION"] == ["Console"]
    assert len(levels) >= 6  # the export, run and operate routes are all there


@pytest.mark.parametrize("name", ["__init__.py", "..%2Fconsole_page.py", "host.json", "CONSOLE.JS", "x.html"])
def test_only_the_console_files_are_served(name: str) -> None:
    result = http("GET", f"console/{name}").response
    assert result.status_code == 404 and result.get_body() == b"not found"


def test_the_page_loads_nothing_from_elsewhere_and_keeps_the_key_out_of_urls_cookies_and_logs() -> None:
    html = (CONSOLE_DIR / "index.html").read_text(encoding="utf-8")
    script = (CONSOLE_DIR / "console.js").read_text(encoding="utf-8")
    references = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert sorted(references) == ["console/console.css", "console/console.js", "data:,"]
    assert all(ref.removeprefix("console/") in FILES for ref in references if ref.startswith("console/"))
    assert "<script>" not in html and " style=" not in html  # nothing inline: the CSP forbids it
    assert re.findall(r"https?://[^'\"]+", script) == ["http://www.w3.org/2000/svg"]  # the SVG namespace only
    for forbidden in ("localStorage", "document.cookie", "console.log", "innerHTML", "?code=", "eval("):
        assert forbidden not in script
    assert "sessionStorage" in script and "'x-functions-key'" in script


def test_the_run_views_show_every_outcome_that_balanced_adds_up() -> None:
    """The console's accounting table is the sum `balanced` checks: an outcome the pipeline adds (as
    `suppressed` was) must get a row, or the page says "Balanced" over rows that do not add up."""
    script = (CONSOLE_DIR / "console.js").read_text(encoding="utf-8")
    block = re.search(r"const OUTCOMES = \[(.*?)\];", script, flags=re.S)
    assert block is not None
    shown = re.findall(r"\['(\w+)', '[^']*'\]", block.group(1))
    outcomes = [f.name for f in dataclasses.fields(SegmentPart) if f.type == "int" and f.name != "rows_read"]
    assert sorted(shown) == sorted(outcomes)
    segments_table = script[script.index("'Each segment\\'s part'"):script.index("r.segments));")]
    assert sorted(re.findall(r"c\('(\w+)'", segments_table)) == sorted(["rows_read", *outcomes])


def test_the_history_never_asks_for_a_page_larger_than_the_api_gives() -> None:
    """After "Show older runs" the history holds more than one page; reloading it after an action asks for
    as many runs, capped at the API's limit (a larger one is a 400 that would read as the action failing)."""
    script = (CONSOLE_DIR / "console.js").read_text(encoding="utf-8")
    constants = dict(re.findall(r"const (MAX_PAGE|CHART_RUNS) = (\d+);", script))
    assert int(constants["MAX_PAGE"]) == history.MAX_LIMIT and int(constants["CHART_RUNS"]) <= history.MAX_LIMIT
    limits = re.findall(r"runs\?limit=\$\{([^}]*)\}", script)
    assert limits and all(limit == "CHART_RUNS" or limit.startswith("Math.min(MAX_PAGE,") for limit in limits)


def test_the_console_files_ship_in_the_package() -> None:
    patterns = _funcignore()
    shipped = [f"ExportSegment/console/{name}" for name, _ in FILES.values()]
    assert sorted({Path(p).name for p in shipped}) == sorted(p.name for p in CONSOLE_DIR.iterdir())
    assert [path for path in shipped if _funcignored(patterns, path)] == []


def test_the_readme_documents_every_http_route() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## HTTP API"):readme.index("\n## Console")]

    def shape(route: str) -> str:  # the README may name a parameter otherwise ({name} for {destination})
        return re.sub(r"\{[^}]*\}", "{}", route)

    documented = {shape(row) for row in re.findall(r"^\| `((?:GET|POST|PUT|PATCH|DELETE) /api/[^`?]+)", section, re.M)}
    registered = {shape(f"{method} /api/{re.sub(r'/{[^}]*[?]}', '', route.template)}")
                  for route in http_routes() for method in route.methods or ()}
    assert registered - documented == set()
    assert documented - registered == set()


def test_route_templates_match_as_the_host_matches_them() -> None:
    assert _route_params("console/{file?}", "console") == {}
    assert _route_params("console/{file?}", "Console/app.js") == {"file": "app.js"}
    assert _route_params("console/{file?}", "console/a/b") is None
    assert _route_params("runs/{run_id}/rejects", "RUNS/r-1/Rejects") == {"run_id": "r-1"}
    assert _route_params("items/{id:int}", "items/42") == {"id": "42"}
    assert _route_params("files/{*rest}", "files/a/b.csv") == {"rest": "a/b.csv"}
    assert _route_params("runs/{run_id}", "runs/r-1/rejects") is None


# -- the development server ----------------------------------------------------------------------------

@pytest.fixture
def server(env: Env) -> Iterator[DevServer]:  # noqa: F811 - env is the harness's fixture
    env.install()
    dev = DevServer(retry_delay=0.05)
    dev.start()
    yield dev
    dev.stop()


def call(server: DevServer, method: str, path: str, *, key: str | None = None,
         body: dict[str, object] | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"x-functions-key": key} if key is not None else {}
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(f"{server.url}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def test_function_routes_need_the_key_as_the_host_asks_for_it(server: DevServer, env: Env) -> None:  # noqa: F811
    assert call(server, "GET", "/api/destinations")[::2] == (401, b"")
    assert call(server, "GET", "/api/destinations", key="wrong")[::2] == (401, b"")
    status, headers, body = call(server, "GET", "/api/destinations", key=server.key)
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert "vip-customers" in [d["name"] for d in json.loads(body)["destinations"]]
    assert call(server, "GET", f"/api/destinations?code={server.key}")[0] == 200  # the host takes ?code= too
    assert call(server, "GET", "/api/console")[0] == 200  # anonymous
    assert call(server, "GET", "/api/nothing-here", key=server.key)[::2] == (404, b"")
    assert call(server, "DELETE", "/api/destinations", key=server.key)[0] == 404  # GET only
    assert f"function key: {server.key}" in describe(server) and server.console_url in describe(server)


def test_a_queued_export_runs_after_the_response_as_the_queue_trigger_would(server: DevServer, env: Env) -> None:  # noqa: F811
    env.upload("vip/segment.csv", csv_bytes([person(n) for n in range(1, 4)]))
    status, headers, body = call(server, "POST", "/api/destinations/vip-customers/exports", key=server.key, body={})
    answer = json.loads(body)
    assert status == 202 and answer["status"] == "queued"
    assert headers["location"] == f"{server.url}/api/runs/{answer['run_id']}"
    assert server.wait_until_idle(60)
    report = json.loads(call(server, "GET", f"/api/runs/{answer['run_id']}", key=server.key)[2])
    assert report["status"] == "succeeded" and report["exported"] == 3
    assert len(env.sim.list_contacts(VIP_LIST)) == 3


def test_a_failing_queue_message_is_retried_up_to_max_dequeue_count(server: DevServer,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="devserver"):
        server.enqueue("no-function-reads-this", "{}")
        assert server.wait_until_idle(30)
    attempts = [r.getMessage() for r in caplog.records if "no-function-reads-this" in r.getMessage()]
    assert server.max_dequeue == 5 and len(attempts) == 5
    assert "poison" in attempts[-1]


def test_the_server_logs_paths_without_the_query_that_may_hold_the_key(server: DevServer,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="devserver"):
        call(server, "GET", f"/api/destinations?code={server.key}")
    assert any("GET /api/destinations -> 200" in r.getMessage() for r in caplog.records)
    assert server.key not in caplog.text
