"""The console in a real headless Chromium (Debian's `chromium`, driven by Playwright) against the local
development server (devtools/serve.py) on Azurite and the OpenAPI-checked SendGrid simulator.

One server and one sample run (the bundled sample segment through the blob trigger) for the module; each
test opens a fresh browser context (a new tab: empty sessionStorage). What the page shows is compared with
what the API answers for the same run. Screenshots go to artifacts/screenshots/; the destination view at
1280 px is copied to docs/images/console.png for the README.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.functions_host import fire_blob_trigger
from devtools.local_env import (
    SAMPLE_BLOB,
    SAMPLE_CONFIG,
    SAMPLE_SEGMENT,
    local_settings,
    prepare_simulator,
    upload_segment,
)
from devtools.serve import DevServer
from sendgrid_simulator import Simulator
from shared.service.export_service import reset_service
from tests.azurite import Azurite
from tests.sendgrid_fixture import running_simulator

try:
    from playwright import sync_api as playwright_api
except ImportError:  # CI installs requirements-dev.txt: there a missing Playwright is a failure, not a skip
    if os.environ.get("CI") or os.environ.get("REQUIRE_BROWSER"):
        raise
    pytest.skip("playwright is not installed (requirements-dev.txt)", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "artifacts" / "screenshots"
README_IMAGE = ROOT / "docs" / "images" / "console.png"
DESTINATION = "vip-customers"
TIMEOUT_MS = 30_000


@dataclass
class Served:
    server: DevServer
    sim: Simulator
    first_run: str

    def api(self, path: str, *, raw: bool = False) -> Any:
        request = urllib.request.Request(f"{self.server.url}/api/{path}", headers={"x-functions-key": self.server.key})
        with urllib.request.urlopen(request, timeout=30) as answer:
            body = answer.read()
        return body if raw else json.loads(body)


@pytest.fixture(scope="module")
def served(azurite: Azurite) -> Iterator[Served]:
    if not CHROMIUM.exists():
        message = "Debian's chromium is not installed (scripts/setup.sh installs it as root)"
        if os.environ.get("CI") or os.environ.get("REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    config_text = SAMPLE_CONFIG.read_text(encoding="utf-8")
    tag = uuid.uuid4().hex[:10]
    patch = pytest.MonkeyPatch()
    for simulator in running_simulator():
        try:
            prepare_simulator(simulator, json.loads(config_text))
            simulator.set_api_keys({"SG.console-test-key": None})
            for name in ("KEY_VAULT_URL", "AZURE_CLIENT_ID", "IDENTITY_ENDPOINT", "WEBSITE_INSTANCE_ID"):
                patch.delenv(name, raising=False)
            settings = local_settings(azurite.connection_string, simulator.base_url, config_text,
                                      segments=f"segments-{tag}", runs=f"runs-{tag}",
                                      sendgrid_key="SG.console-test-key")
            for name, value in settings.items():
                patch.setenv(name, value)
            reset_service(None)
            upload_segment(azurite.connection_string, f"segments-{tag}", SAMPLE_BLOB, SAMPLE_SEGMENT.read_bytes())
            fire_blob_trigger(f"segments-{tag}", SAMPLE_BLOB)
            server = DevServer(retry_delay=0.1)
            server.start()
            try:
                served = Served(server, simulator, "")
                (destination,) = served.api("destinations")["destinations"]
                served.first_run = destination["last_run"]["run_id"]
                yield served
            finally:
                server.stop()
        finally:
            reset_service(None)
            patch.undo()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Any]:
    """A new tab at 1280 px whose console errors (CSP violations included) and page errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    # expect() waits 5 s by default: a run started on a busy 2-core CI machine can take longer to show
    playwright_api.expect.set_options(timeout=TIMEOUT_MS)
    problems: list[str] = []
    tab.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    tab.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    yield tab
    context.close()
    allowed = ("401",)  # the browser itself logs a refused request ("Failed to load resource: ... 401")
    assert [p for p in problems if not any(a in p for a in allowed)] == []


def shot(page: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def enter_key(page: Any, served: Served, key: str | None = None) -> None:
    page.goto(served.server.console_url)
    page.get_by_label("Function key", exact=True).fill(key if key is not None else served.server.key)
    page.get_by_role("button", name="Use this key").click()


def no_horizontal_overflow(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def counts_in(row: Any, fields: list[str]) -> dict[str, int]:
    return {f: int(row.locator(f'[data-field="{f}"]').first.inner_text().replace(",", "")) for f in fields}


# -- the views ---------------------------------------------------------------------------------------------

def test_the_console_shows_the_sample_destination_its_run_and_the_runs_detail(page: Any, served: Served) -> None:
    enter_key(page, served)
    card = page.locator(f'article[data-destination="{DESTINATION}"]')
    playwright_api.expect(card).to_be_visible()
    (api_destination,) = served.api("destinations")["destinations"]
    last = api_destination["last_run"]
    playwright_api.expect(card.locator(".badge")).to_have_text(last["status"].replace("_", " "))
    assert last["status"] == "succeeded" and last["run_id"] == served.first_run
    shown = counts_in(card, ["exported", "unchanged_skipped", "rejected_count", "removed_from_list"])
    assert shown == {k: last["counts"][k] for k in shown}
    assert shown["exported"] > 0 and shown["rejected_count"] > 0  # the sample has both
    playwright_api.expect(card).to_contain_text(api_destination["segments"][0]["current_file"]["blob"])
    playwright_api.expect(card).to_contain_text(api_destination["consent"]["by"])
    playwright_api.expect(card).to_contain_text(api_destination["list_id"])
    shot(page, "01-destinations-1280")
    assert served.server.key not in page.url and page.evaluate("document.cookie") == ""
    assert page.evaluate("Object.values(sessionStorage)") == [served.server.key]

    card.get_by_role("link", name=api_destination["display_name"]).click()
    row = page.locator("#history tbody tr", has=page.get_by_role("link", name=served.first_run))
    playwright_api.expect(row).to_be_visible()
    fields = ["rows_read", "exported", "unchanged_skipped", "rejected_count", "removed_from_list"]
    assert counts_in(row, fields) == {k: last["counts"][k] for k in fields}
    assert page.locator(f'svg.chart g.bar[data-run="{served.first_run}"] rect').count() >= 2
    shot(page, "02-history-1280")

    row.get_by_role("link", name=served.first_run).click()
    report = served.api(f"runs/{served.first_run}")
    playwright_api.expect(page.get_by_role("heading", level=1)).to_contain_text(served.first_run)
    accounting = {r.locator("th").inner_text(): int(r.locator("td").inner_text().replace(",", ""))
                  for r in page.locator("#accounting tbody tr").all()}
    assert accounting["Rows read"] == report["rows_read"]
    assert accounting["Exported"] == report["exported"] and accounting["Rejected"] == report["rejected_count"]
    assert sum(v for k, v in accounting.items() if k != "Rows read") == report["rows_read"]  # what `balanced` checks
    playwright_api.expect(page.locator("#balanced")).to_contain_text("Balanced")
    assert page.locator("#rejected-rows tbody tr").count() == len(report["rejected"])
    by_field = {r.locator("th").inner_text(): int(r.locator("td").inner_text())
                for r in page.locator("#rejects-by-field tbody tr").all()}
    assert by_field == report["rejected_by_field"]
    assert page.locator("#rejects-by-reason tbody tr").count() == sum(map(len, report["rejected_by_reason"].values()))
    assert page.locator("#batches tbody tr").count() == len(report["batches"])
    with page.expect_download() as download:
        page.get_by_role("button", name="Download the rejects CSV").click()
    assert Path(download.value.path()).read_bytes() == served.api(f"runs/{served.first_run}/rejects", raw=True)
    assert download.value.url.startswith("blob:")  # fetched with the key in a header, never `?code=` in a URL
    shot(page, "03-run-detail-1280")


def test_preview_shows_the_mapped_contacts_and_the_rejects(page: Any, served: Served) -> None:
    enter_key(page, served)
    page.goto(f"{served.server.console_url}#/destinations/{DESTINATION}")
    with page.expect_response(lambda r: r.url.endswith(f"/destinations/{DESTINATION}/exports")) as answer:
        page.get_by_role("button", name="Preview").click()
    dry_run = answer.value.json()
    assert answer.value.status == 200 and dry_run["status"] == "dry_run" and dry_run["preview"]
    playwright_api.expect(page.locator("#action-result")).to_contain_text("nothing was sent")
    contacts = page.locator("#preview-contacts tbody tr")
    rejects = page.locator("#preview-rejects tbody tr")
    assert contacts.count() == len(dry_run["preview"])
    assert contacts.first.locator("td").first.inner_text() == dry_run["preview"][0]["email"]
    first = served.api(f"runs/{served.first_run}")
    assert rejects.count() == len(dry_run["rejected"]) == first["rejected_count"]  # the same file, the same rejects
    assert {r.locator("th").inner_text() for r in rejects.all()} == {str(r["row"]) for r in first["rejected"]}
    assert served.sim.list_contacts(dry_run["list_id"]).keys() == served.sim.list_contacts(first["list_id"]).keys()
    shot(page, "04-preview-1280")


def test_export_now_shows_the_run_it_started_and_it_appears_in_the_history(page: Any, served: Served) -> None:
    enter_key(page, served)
    page.goto(f"{served.server.console_url}#/destinations/{DESTINATION}")
    page.get_by_role("button", name="Export now").click()
    started = page.locator("#action-result .started .run-id")
    playwright_api.expect(started).to_be_visible()
    run_id = started.inner_text()
    playwright_api.expect(page.locator("#action-status .badge")).to_have_text("succeeded", timeout=60_000)
    assert served.server.wait_until_idle(30)
    report = served.api(f"runs/{run_id}")
    assert report["status"] == "succeeded" and report["triggered_by"] != "blob"
    row = page.locator("#history tbody tr", has=page.get_by_role("link", name=run_id))
    playwright_api.expect(row.locator(".badge")).to_have_text("succeeded")
    assert counts_in(row, ["rows_read", "exported", "unchanged_skipped"]) == \
        {k: report[k] for k in ("rows_read", "exported", "unchanged_skipped")}
    playwright_api.expect(page.locator(f'svg.chart g.bar[data-run="{run_id}"]')).to_have_count(1)
    path = shot(page, "05-export-now-1280")
    README_IMAGE.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, README_IMAGE)


def test_full_resend_sends_every_contact_again_and_shows_its_run(page: Any, served: Served) -> None:
    enter_key(page, served)
    page.goto(f"{served.server.console_url}#/destinations/{DESTINATION}")
    playwright_api.expect(page.locator("#history")).to_be_visible()
    page.get_by_role("button", name="Full re-send").focus()
    page.keyboard.press("Enter")  # from the keyboard, as a person without a mouse would
    started = page.locator("#action-result .started .run-id")
    playwright_api.expect(started).to_be_visible()
    playwright_api.expect(page.locator("#action-status .badge")).to_have_text("succeeded", timeout=60_000)
    report = served.api(f"runs/{started.inner_text()}")
    first = served.api(f"runs/{served.first_run}")
    assert report["full"] is True and report["status"] == "succeeded"
    assert (report["exported"], report["unchanged_skipped"]) == (first["exported"], 0)  # all of them, again
    row = page.locator("#history tbody tr", has=page.get_by_role("link", name=report["run_id"]))
    playwright_api.expect(row).to_contain_text("(full)")
    assert counts_in(row, ["exported", "unchanged_skipped"]) == {"exported": first["exported"], "unchanged_skipped": 0}


def test_a_wrong_key_is_refused_with_a_clear_message(page: Any, served: Served) -> None:
    requests: list[Any] = []
    page.on("request", lambda request: requests.append(request))  # noqa: PLW0108 - a bound method is refused
    enter_key(page, served, "not-the-key")
    alert = page.get_by_role("alert")
    playwright_api.expect(alert).to_contain_text("That key was refused")
    playwright_api.expect(page.get_by_label("Function key", exact=True)).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0  # a refused key is not kept
    api_calls = [r for r in requests if "/api/destinations" in r.url]
    assert api_calls and all(r.headers.get("x-functions-key") == "not-the-key" for r in api_calls)
    assert all("not-the-key" not in r.url for r in requests)
    shot(page, "06-wrong-key-1280")


# -- widths, keyboard, labels ----------------------------------------------------------------------------

def test_every_view_fits_a_phone_width_screen(browser: Any, served: Served) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 812}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        enter_key(page, served)
        playwright_api.expect(page.locator("article.destination")).to_be_visible()
        assert no_horizontal_overflow(page)
        shot(page, "07-destinations-375")
        page.goto(f"{served.server.console_url}#/destinations/{DESTINATION}")
        playwright_api.expect(page.locator("#history")).to_be_visible()
        assert no_horizontal_overflow(page)
        # The chart scrolls inside its box: it opens on the newest run (drawn last, on the right), not on
        # the empty slots of older runs.
        box = page.locator(".chart-box").bounding_box()
        newest = page.locator("svg.chart g.bar").last.bounding_box()
        assert box and newest and box["x"] <= newest["x"] and newest["x"] + newest["width"] <= box["x"] + box["width"]
        shot(page, "08-history-375")
        page.goto(f"{served.server.console_url}#/runs/{served.first_run}")
        playwright_api.expect(page.locator("#accounting")).to_be_visible()
        assert no_horizontal_overflow(page)
        shot(page, "09-run-detail-375")
    finally:
        context.close()


def test_the_console_works_from_the_keyboard_with_labelled_controls(page: Any, served: Served) -> None:
    page.goto(served.server.console_url)
    focused = page.evaluate("document.activeElement.id")
    assert focused == "key-input"  # the key field has focus on arrival
    page.keyboard.type(served.server.key)
    page.keyboard.press("Enter")
    playwright_api.expect(page.locator("article.destination")).to_be_visible()

    page.goto(f"{served.server.console_url}#/destinations/{DESTINATION}")
    playwright_api.expect(page.locator("#history")).to_be_visible()
    reached = []
    for _ in range(40):  # Tab through the page: every action is reachable and shows where focus is
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
        if "full-resend" in reached:
            break
    assert {"export-now", "preview", "full-resend"} <= set(reached)
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")
    unnamed = page.evaluate("""[...document.querySelectorAll('button, a[href], input')]
        .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map((e) => e.outerHTML)""")
    assert unnamed == []
    assert page.evaluate("document.querySelector('svg.chart').getAttribute('role')") == "img"
    assert page.locator("svg.chart > title").text_content().startswith("Last ")


CONTRAST = """(selector) => [...document.querySelectorAll(selector)].map((e) => {
  const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const lum = (c) => {
    const [r, g, b] = rgb(c).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  let node = e; let bg = 'rgba(0, 0, 0, 0)';
  while (node && (bg === 'rgba(0, 0, 0, 0)' || bg === 'transparent')) {
    bg = getComputedStyle(node).backgroundColor;
    node = node.parentElement;
  }
  const [a, b] = [lum(getComputedStyle(e).color), lum(bg)].sort((x, y) => y - x);
  return [e.textContent.trim().slice(0, 30), (a + 0.05) / (b + 0.05)];
})"""


def test_text_meets_wcag_aa_contrast(page: Any, served: Served) -> None:
    enter_key(page, served)
    page.goto(f"{served.server.console_url}#/destinations/{DESTINATION}")
    playwright_api.expect(page.locator("#history")).to_be_visible()
    ratios = page.evaluate(CONTRAST, ".badge, button, a, th, td, .help, .crumbs, caption, .brand, p")
    low = [(text, round(ratio, 2)) for text, ratio in ratios if ratio < 4.5]
    assert ratios and low == []
