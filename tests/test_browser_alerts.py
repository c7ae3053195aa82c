"""The ``/alerts`` page in Debian's Chromium against the real server over the tiny demo: a bad key
is refused on the page; a key made here signs in, a click on the map places a radius rule's
centre, the preview shows the count :func:`~app.alerts.preview.preview_rule` computes, the rule is
saved with a new email endpoint, listed, paused, and the page passes axe-core with no violation.

The server gets an alerts store of this module's own (``CSH_ALERTS_URL``), so the key made here
is one the server checks, and the shared tiny data dir stays untouched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from app.alerts.preview import preview_rule
from app.alerts.rules import Filters, RadiusRule
from app.alerts.store import AlertStore
from app.data.snapshot import Snapshot
from app.views.alerts_map import MAP_NAME
from bench.serve import served
from tests.browser import ARTIFACTS, BOKEH_READY, Problems
from tests.test_a11y import FOCUSED, _describe, axe_violations, tab_to

#: Page position of the map's centre and its view's Web Mercator ranges.
MAP_CENTRE = f"""() => {{
  const view = [...Bokeh.index.query((v) => v.model != null && v.model.name === '{MAP_NAME}')][0];
  const canvas = view.canvas_view.el.getBoundingClientRect();
  return {{x: canvas.left + view.frame.bbox.hcenter, y: canvas.top + view.frame.bbox.vcenter}};
}}"""
#: Rows of each named renderer of the map (the rule's circle, the preview's matches, ...), and its x range.
MAP_DRAWN = f"""() => {{
  const fig = [...Bokeh.documents[0].all_models].find((m) => m.name === '{MAP_NAME}');
  const rows = Object.fromEntries(fig.renderers.map((r) => [r.name, r.data_source.get_length()]));
  return {{rows: rows, width: fig.x_range.end - fig.x_range.start}};
}}"""


@pytest.fixture(scope="module")
def alerts_server(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The real server over the tiny demo with an alerts store of its own; (base URL, store URL)."""
    work = tmp_path_factory.mktemp("alerts-page")
    url = f"sqlite:///{work / 'alerts.sqlite'}"
    AlertStore(url).close()  # created and migrated before the server opens it
    log_path = work / "server.log"
    with log_path.open("wb") as log, pytest.MonkeyPatch.context() as mp:
        mp.setenv("CSH_ALERTS_URL", url)
        try:
            with served(tiny_dir, log, timeout=90) as base:
                mp.undo()
                yield base, url
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{log_path.read_text(errors='replace')}") from exc


@pytest.fixture
def alerts_page(chromium: Browser, alerts_server: tuple[str, str]) -> Iterator[tuple[Page, Problems]]:
    page = chromium.new_page(viewport={"width": 1440, "height": 1000})
    problems = Problems(page)
    page.set_default_timeout(30_000)
    page.goto(f"{alerts_server[0]}/alerts")
    page.wait_for_function(BOKEH_READY)
    assert page.get_by_text("Traceback").count() == 0
    try:
        yield page, problems
    finally:
        page.close()


def _sign_in(page: Page, token: str) -> None:
    page.get_by_label("API key").fill(token)
    page.get_by_role("button", name="Sign in").click()


def test_a_bad_key_is_refused_by_keyboard(alerts_page: tuple[Page, Problems]) -> None:
    page, problems = alerts_page
    page.keyboard.press("Tab")
    assert page.evaluate(FOCUSED)["name"] == "Skip to the alerts"
    field = tab_to(page, "API key")
    assert field["tag"] == "input"
    page.keyboard.type("csh_not-a-real-key")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("This key is not valid or has been revoked.")
    expect(page.get_by_label("API key")).to_have_value("")  # the field does not keep what was typed
    assert "csh_" not in page.url
    assert problems.errors == []


def test_sign_in_place_preview_save_pause(alerts_page: tuple[Page, Problems], alerts_server: tuple[str, str], tiny_snap: Snapshot) -> None:
    page, problems = alerts_page
    alerts = AlertStore(alerts_server[1])
    key, token = alerts.create_key("browser test")
    _sign_in(page, token)
    expect(page.get_by_text("Signed in with the key")).to_be_visible()
    assert token not in page.url
    page.get_by_label("Rule name").fill("Around the map's centre")
    radius = page.get_by_label("Radius (m)")
    radius.fill("1500")
    radius.press("Enter")

    assert page.evaluate(MAP_DRAWN)["width"] > 30_000  # the whole city at first
    spot = page.evaluate(MAP_CENTRE)
    page.mouse.click(spot["x"], spot["y"])
    lat_field, lon_field = page.get_by_label("Latitude of the centre"), page.get_by_label("Longitude of the centre")
    expect(lat_field).not_to_have_value("")
    expect(lon_field).not_to_have_value("")
    lat, lon = float(lat_field.input_value()), float(lon_field.input_value())
    assert 40.4 < lat < 41.0, lat
    assert -74.3 < lon < -73.6, lon

    page.get_by_role("button", name="Preview the last 30 days").click()
    expected = preview_rule(tiny_snap, "nyc", RadiusRule(lat=lat, lon=lon, radius_m=1500), Filters(), timezone="America/New_York")
    assert expected.total > 0
    expect(page.locator(".csh-preview-count")).to_have_text(str(expected.total))
    located = len([m for m in expected.matches if m.lon is not None])
    page.wait_for_function(f"() => ({MAP_DRAWN})().rows.matches === {located}")
    drawn = page.evaluate(MAP_DRAWN)
    assert drawn["rows"]["watched"] == 1  # the radius circle
    assert drawn["rows"]["centre"] == 1
    assert drawn["width"] < 20_000, drawn  # framed around the 1.5 km circle, not the whole city
    page.locator("main").evaluate("m => m.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "alerts_preview.png"))

    page.get_by_label("New endpoint kind").select_option("email")
    page.get_by_label("New endpoint target (URL or email address)").fill("ops@example.org")
    page.get_by_role("button", name="Add this endpoint").click()
    expect(page.get_by_role("status").filter(has_text="Added email ops@example.org")).to_be_visible()
    expect(page.get_by_role("checkbox", name="email ops@example.org")).to_be_checked()
    page.get_by_role("button", name="Save the rule").click()
    expect(page.get_by_role("status").filter(has_text="Saved the rule")).to_be_visible()
    [rule] = alerts.rules(key.id)
    assert rule.name == "Around the map's centre"
    assert rule.params["radius_m"] == 1500
    assert rule.params["lat"] == pytest.approx(lat, abs=1e-6)
    assert rule.params["lon"] == pytest.approx(lon, abs=1e-6)
    assert rule.timezone == "America/New_York"
    expect(page.get_by_text(re.compile("Around the map's centre · radius · New York City · active"))).to_be_visible()

    page.get_by_role("button", name="Pause “Around the map's centre”").click()
    expect(page.get_by_role("button", name="Resume “Around the map's centre”")).to_be_visible()
    stored = alerts.get_rule(key.id, rule.id)
    assert stored is not None
    assert stored.paused
    page.locator("main").evaluate("m => m.scrollTo(0, m.scrollHeight)")
    page.screenshot(path=str(ARTIFACTS / "alerts_rules.png"))

    violations = axe_violations(page)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "axe_alerts.json").write_text(json.dumps(violations, indent=1))
    assert violations == [], "axe-core found:\n" + _describe(violations)
    assert problems.errors == []
    alerts.close()
