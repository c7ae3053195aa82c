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
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import shapely
from holoviews.util.transform import easting_northing_to_lon_lat, lon_lat_to_easting_northing
from playwright.sync_api import Browser, Page, expect

from app.alerts.preview import preview_rule
from app.alerts.rules import AreaRule, Filters, PolygonRule, RadiusRule
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
#: Page position of a Web Mercator point on the map.
MAP_AT = f"""([x, y]) => {{
  const view = [...Bokeh.index.query((v) => v.model != null && v.model.name === '{MAP_NAME}')][0];
  const canvas = view.canvas_view.el.getBoundingClientRect();
  return {{x: canvas.left + view.frame.x_scale.compute(x), y: canvas.top + view.frame.y_scale.compute(y)}};
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


#: The polygon drawn on the map (Web Mercator rings of the "drawn" renderer).
DRAWN_RING = f"""() => {{
  const fig = [...Bokeh.documents[0].all_models].find((m) => m.name === '{MAP_NAME}');
  const data = fig.renderers.find((r) => r.name === 'drawn').data_source.data;
  return {{xs: Array.from(data.xs[0] ?? []), ys: Array.from(data.ys[0] ?? [])}};
}}"""


def _hold(page: Page, x: float, y: float) -> None:
    """A long press (past Bokeh's press threshold) at a page position."""
    page.mouse.move(x, y)
    page.mouse.down()
    page.wait_for_timeout(700)
    page.mouse.up()


def test_keyboard_polygon_area_and_retry(alerts_page: tuple[Page, Problems], alerts_server: tuple[str, str], tiny_snap: Snapshot) -> None:
    """Sign in and walk the form by keyboard (every stop named, with a focus ring), draw a polygon
    with the polygon tool, pick an area by clicking the map, preview both (the counts
    ``preview_rule`` gives), save the area rule and retry its dead delivery from the log."""
    page, problems = alerts_page
    alerts = AlertStore(alerts_server[1])
    key, token = alerts.create_key("keyboard test")
    tab_to(page, "API key")
    page.keyboard.type(token)
    page.keyboard.press("Enter")
    expect(page.get_by_text("Signed in with the key")).to_be_visible()
    page.get_by_label("Rule name").focus()
    tab_to(page, "Save the rule")  # the whole form, in order

    page.get_by_label("Rule kind").select_option(label="Polygon drawn on the map")
    page.locator('[title^="Draw a polygon"]').click()
    spot = page.evaluate(MAP_CENTRE)
    x, y = spot["x"], spot["y"]
    _hold(page, x - 80, y - 50)  # Bokeh's polygon tool: press and hold to start, tap each corner, hold to finish
    page.mouse.click(x + 80, y - 50)
    page.mouse.click(x + 10, y + 70)
    _hold(page, x - 60, y + 40)
    expect(page.get_by_text(re.compile(r"Polygon of \d+ corners drawn"))).to_be_visible()
    ring = page.evaluate(DRAWN_RING)
    lon, lat = easting_northing_to_lon_lat(np.array(ring["xs"]), np.array(ring["ys"]))
    corners = [[round(float(a), 6), round(float(b), 6)] for a, b in zip(lon, lat, strict=True)]
    geometry = {"type": "Polygon", "coordinates": [[*corners, corners[0]]]}
    page.get_by_role("button", name="Preview the last 30 days").click()
    expected = preview_rule(tiny_snap, "nyc", PolygonRule(geometry=geometry), Filters(), timezone="America/New_York")
    expect(page.locator(".csh-preview-count")).to_have_text(str(expected.total))
    page.locator("main").evaluate("m => m.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "alerts_polygon.png"))

    page.get_by_label("Rule kind").select_option(label="Area (a unit of the city)")
    page.get_by_label("Area level").select_option(label="Neighborhood")
    page.locator('[title^="Pan"]').first.click()  # the polygon tool off again
    hoods = tiny_snap.unit_geometries("nyc", "neighborhood").sort("unit_id")
    inside = shapely.point_on_surface(shapely.from_wkb(hoods["geom_wkb"][0]))
    (mx,), (my,) = lon_lat_to_easting_northing(np.array([inside.x]), np.array([inside.y]))
    page.wait_for_function(f"() => ({MAP_DRAWN})().width > 30000")  # the whole city again for a new kind
    spot = page.evaluate(MAP_AT, [float(mx), float(my)])
    page.mouse.click(spot["x"], spot["y"])
    unit = page.get_by_label("Area unit", exact=True)
    expect(unit).to_have_value(re.compile(re.escape(f"({hoods['unit_id'][0]})") + "$"))
    unit_id = re.fullmatch(r".* \((.+)\)", unit.input_value())
    assert unit_id is not None, unit.input_value()
    assert unit_id[1] == hoods["unit_id"][0]
    page.get_by_role("button", name="Preview the last 30 days").click()
    expected = preview_rule(tiny_snap, "nyc", AreaRule(level="neighborhood", unit_id=unit_id[1]), Filters(), timezone="America/New_York")
    expect(page.locator(".csh-preview-count")).to_have_text(str(expected.total))

    page.get_by_label("Rule name").fill("One neighborhood")
    page.get_by_label("New endpoint kind").select_option("email")
    page.get_by_label("New endpoint target (URL or email address)").fill("area@example.org")
    page.get_by_role("button", name="Add this endpoint").click()
    expect(page.get_by_role("checkbox", name="email area@example.org")).to_be_checked()
    page.get_by_role("button", name="Save the rule").click()
    expect(page.get_by_role("status").filter(has_text="Saved the rule")).to_be_visible()
    [rule] = alerts.rules(key.id)
    assert rule.params == {"kind": "area", "level": "neighborhood", "unit_id": unit_id[1]}

    now = datetime.now(UTC)
    alerts.enqueue("nyc", "page-test", now.isoformat(), [(rule.id, "demo", "item-1", {"id": "item-1"})], now=now)
    [(delivery, _, lease)] = alerts.claim(now, kinds=("email",))
    alerts.settle(delivery.id, lease, "dead", None, "500 Internal Server Error: not retried", now, code=500)
    page.get_by_role("button", name="Refresh the log").click()
    log_table = page.locator("table.csh-deliveries")
    expect(log_table).to_contain_text("dead")
    page.get_by_role("button", name="Retry this delivery").click()
    expect(log_table).to_contain_text("pending")
    assert alerts.deliveries(key.id)[0].status == "pending"
    page.get_by_label("Rule name").focus()
    tab_to(page, "Refresh the log", limit=250)  # on through the map's tools, the preview, the rules and the log
    violations = axe_violations(page)
    assert violations == [], "axe-core found:\n" + _describe(violations)
    assert problems.errors == []
    alerts.close()
