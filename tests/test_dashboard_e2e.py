"""End-to-end behaviour of the linked views in a real browser: the tilegram's level switch (tile
counts and the morph, skipped under reduced motion), a tile pick filtering the heat map, and a
brushed window filtering the narratives. Screenshots of each step go to ``test-artifacts/``.

Bokeh draws on canvas, so the checks read the Bokeh models and views the page holds (the tile
source, the heat raster and its extent), and click where a tile is drawn on screen.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest
import shapely
from holoviews.util.transform import lon_lat_to_easting_northing
from playwright.sync_api import Browser, Locator, Page, expect

from app.data.snapshot import Snapshot
from app.engine.lens import Lens
from app.views.heat_hover import count_texts
from tests.browser import ARTIFACTS, NYC_LEVELS, Problems

#: The named model of the page's Bokeh document (the tilegram's sources are named).
MODEL = "(name) => [...Bokeh.documents[0].all_models].find((m) => m.name === name)"

#: Records, on every animation frame for ``ms``, the tile and ghost sources' sizes, the first
#: ghost tile's x and the first tile's opacity: enough to see a morph play (or not).
SAMPLE_FRAMES = """(ms) => {
  const find = (name) => [...Bokeh.documents[0].all_models].find((m) => m.name === name);
  const tiles = find('tiles'), ghost = find('ghost');
  window.__cshSamples = [];
  const stop = performance.now() + ms;
  function tick(t) {
    const d = tiles.data, g = ghost.data;
    window.__cshSamples.push({t: t, n: d.x.length, ghosts: g.x.length,
      gx: g.x.length ? g.x[0] : null, gx1: g.x.length ? g.x1[0] : null, alpha: d.alpha.length ? d.alpha[0] : null});
    if (t < stop) { requestAnimationFrame(tick); }
  }
  requestAnimationFrame(tick);
}"""

#: Screen position (page pixels) of tile ``i`` of the tilegram, and its unit id.
TILE_ON_SCREEN = """(i) => {
  const view = [...Bokeh.index.query((v) => v.model != null && v.model.name === 'tilegram' && v.frame != null)][0];
  const tiles = view.model.renderers.map((r) => r.data_source).find((s) => s.name === 'tiles');
  const canvas = (view.canvas_view ?? view.canvas).el.getBoundingClientRect();
  const sx = view.frame.x_scale.compute(tiles.data.x[i]), sy = view.frame.y_scale.compute(tiles.data.y[i]);
  return {x: canvas.left + sx, y: canvas.top + sy, unit: tiles.data.unit_id[i]};
}"""

#: The heat raster on screen: its extent (Web Mercator), pixel size, the extent of its lit pixels
#: and the map's frame (its x and y ranges).
HEAT_LIT = """() => {
  const raster = (v) => v.model.renderers.find((r) => r.glyph != null && r.glyph.type === 'ImageRGBA');
  const shown = [...Bokeh.index.query((v) => v.renderer_views instanceof Map && v.el.getClientRects().length > 0 && raster(v) != null)];
  const view = shown[shown.length - 1];  // the map on screen (a re-framed map replaces its plot)
  const m = raster(view), xr = view.model.x_range, yr = view.model.y_range;
  const d = m.data_source.data, img = d.image[0];
  const h = img.shape[0], w = img.shape[1];
  const x = d.x[0], y = d.y[0], dw = d.dw[0], dh = d.dh[0];
  let lit = 0, x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let r = 0; r < h; r++) {
    for (let c = 0; c < w; c++) {
      if ((img[r * w + c] >>> 24) === 0) { continue; }
      lit++;
      const px = x + (c + 0.5) * dw / w, py = y + (r + 0.5) * dh / h;
      x0 = Math.min(x0, px); x1 = Math.max(x1, px); y0 = Math.min(y0, py); y1 = Math.max(y1, py);
    }
  }
  return {lit: lit, extent: [x, x + dw, y, y + dh], pixel: [dw / w, dh / h], bounds: [x0, x1, y0, y1],
          frame: [xr.start, xr.end, yr.start, yr.end]};
}"""


def _tile_count(page: Page) -> int:
    return int(page.evaluate(f"() => ({MODEL})('tiles').data.unit_id.length"))


def _switch_level_and_sample(page: Page, level: str, count: int) -> list[dict[str, Any]]:
    page.evaluate(SAMPLE_FRAMES, 12_000)
    page.get_by_label("Admin level").select_option(label=NYC_LEVELS[level])
    page.wait_for_function(f"() => ({MODEL})('tiles').data.unit_id.length === {count}", timeout=15_000)
    # Until the morph has ended (a loaded machine draws thousands of tiles slowly), then a few
    # frames more so the sampler has the end state.
    page.wait_for_function("() => window.__cshMorph == null || window.__cshMorph.end != null", timeout=15_000)
    page.wait_for_timeout(300)
    samples: list[dict[str, Any]] = page.evaluate("() => window.__cshSamples")
    return [s for s in samples if s["n"] == count]


def test_level_switch_changes_the_tile_count_and_morphs(dashboard: tuple[Page, Problems], tiny_snap: Snapshot) -> None:
    page, problems = dashboard
    units = {level: tiny_snap.units("nyc", level).height for level in ("tract", "neighborhood", "borough")}
    page.wait_for_function(f"() => ({MODEL})('tiles').data.unit_id.length === {units['neighborhood']}")
    frames = _switch_level_and_sample(page, "borough", units["borough"])
    assert _tile_count(page) == units["borough"] == 5
    moving = [f for f in frames if f["ghosts"] == units["neighborhood"]]  # neighborhood tiles merging into boroughs
    positions = {round(f["gx"], 6) for f in moving}
    assert len(positions) >= 3, f"the merging tiles did not glide (x took {len(positions)} values)"
    assert moving[-1]["gx"] == pytest.approx(moving[-1]["gx1"])  # they end on their borough
    run = page.evaluate("() => window.__cshMorph")
    assert run["end"] is not None, "the morph never finished"
    assert run["frames"] >= 2
    # It ends on the first frame at or after its 550 ms: within 600 ms unless that frame came late
    # (a loaded machine drawing hundreds of tiles in software); the run never outlasts one frame past it.
    assert run["last"] - run["start"] < 600
    assert run["end"] - run["start"] <= 600 or run["end"] - run["last"] > run["end"] - run["start"] - 600
    alphas = [f["alpha"] for f in frames]
    assert min(alphas) < 0.5  # the borough tiles fade in
    assert alphas[-1] == 1.0
    page.screenshot(path=str(ARTIFACTS / "level_borough.png"))
    frames = _switch_level_and_sample(page, "tract", units["tract"])  # and back, finer than before
    assert _tile_count(page) == units["tract"]
    assert frames[-1]["alpha"] == 1.0
    assert problems.errors == []


def test_reduced_motion_switches_levels_without_a_morph(chromium: Browser, live_server: str, tiny_snap: Snapshot) -> None:
    context = chromium.new_context(reduced_motion="reduce", viewport={"width": 1440, "height": 900})
    page = context.new_page()
    problems = Problems(page)
    try:
        page.goto(f"{live_server}/dashboard")
        page.wait_for_function(f"() => window.Bokeh !== undefined && Bokeh.documents.length > 0 && ({MODEL})('tiles') != null")
        neighborhoods = tiny_snap.units("nyc", "neighborhood").height
        page.wait_for_function(f"() => ({MODEL})('tiles').data.unit_id.length === {neighborhoods}", timeout=30_000)
        frames = _switch_level_and_sample(page, "borough", tiny_snap.units("nyc", "borough").height)
        assert frames, "no frame saw the borough tiles"
        assert all(f["gx"] is None or f["gx"] == pytest.approx(f["gx1"]) for f in frames), "tiles moved under reduced motion"
        assert all(f["alpha"] == 1.0 for f in frames), "tiles faded under reduced motion"
        assert problems.errors == []
    finally:
        context.close()


def _mercator_bounds(snap: Snapshot, level: str, unit: str) -> tuple[float, float, float, float]:
    geoms = snap.unit_geometries("nyc", level).filter(pl.col("unit_id") == unit)
    x0, y0, x1, y1 = shapely.total_bounds(shapely.from_wkb(geoms["geom_wkb"].to_numpy()))
    (ex0, ex1), (ny0, ny1) = lon_lat_to_easting_northing(np.array([x0, x1]), np.array([y0, y1]))
    return float(ex0), float(ex1), float(ny0), float(ny1)


def test_a_tile_pick_filters_the_heat_map(dashboard: tuple[Page, Problems], tiny_snap: Snapshot) -> None:
    page, problems = dashboard
    page.get_by_label("Admin level").select_option(label=NYC_LEVELS["borough"])
    page.wait_for_function(f"() => ({MODEL})('tiles').data.unit_id.length === 5")
    page.wait_for_timeout(800)  # the morph has ended: tiles are where they are drawn
    before = page.evaluate(HEAT_LIT)
    tile = page.evaluate(TILE_ON_SCREEN, 0)
    page.mouse.click(tile["x"], tile["y"])
    name = str(tiny_snap.units("nyc", "borough").filter(pl.col("unit_id") == tile["unit"])["name"][0])
    expect(page.get_by_role("status").filter(has_text="anomal")).to_contain_text(f"in {name}")
    expect(page).to_have_url(re.compile(rf"[?&]sel={tile['unit']}(&|$)"))
    page.wait_for_function(
        f"(before) => ({HEAT_LIT})().frame[1] - ({HEAT_LIT})().frame[0] < before", arg=before["frame"][1] - before["frame"][0]
    )
    page.wait_for_timeout(500)  # the zoomed raster has arrived
    after = page.evaluate(HEAT_LIT)
    assert after["lit"] > 0, "the selected borough shows no events"
    x0, x1, y0, y1 = _mercator_bounds(tiny_snap, "borough", tile["unit"])
    px, py = after["pixel"]
    bx0, bx1, by0, by1 = after["bounds"]
    # Every lit pixel lies within the borough's box (one pixel of slack), although the zoomed view
    # also shows its neighbours: events outside the selection are filtered out, not just off-screen.
    lit, box = after["bounds"], (x0, x1, y0, y1)
    assert bx0 >= x0 - px, (lit, box)
    assert bx1 <= x1 + px, (lit, box)
    assert by0 >= y0 - py, (lit, box)
    assert by1 <= y1 + py, (lit, box)
    ex0, ex1, ey0, ey1 = after["frame"]
    assert (ex0 < x0, ex1 > x1, ey0 < y0, ey1 > y1) == (True, True, True, True)  # the view frames the borough with a margin
    page.screenshot(path=str(ARTIFACTS / "tile_selected.png"))
    assert problems.errors == []


#: Screen position (page pixels) of an instant (epoch ms) on the sparkbands' overview timeline, at mid height.
OVERVIEW_AT = """(ms) => {
  const view = [...Bokeh.index.query((v) => v.model != null && v.model.name === 'sparkbands-overview' && v.frame != null)][0];
  const canvas = (view.canvas_view ?? view.canvas).el.getBoundingClientRect();
  const yr = view.model.y_range;
  return {x: canvas.left + view.frame.x_scale.compute(ms), y: canvas.top + view.frame.y_scale.compute((yr.start + yr.end) / 2)};
}"""
#: The date of a narrative card, as the card writes it in the city's local time ("Thu 29 Oct 2026 EDT · z = ...").
CARD_DATE = re.compile(r"· (\w{3} \d{2} \w{3} \d{4}) E[SD]T · z = ")


def _cards(page: Page) -> Locator:
    """The narrative cards on show (hidden ones kept for reuse do not count)."""
    return page.get_by_text(CARD_DATE).filter(visible=True)


def _card_days(page: Page) -> list[str]:
    texts = _cards(page).all_inner_texts()
    return [m.group(1) for t in texts if (m := CARD_DATE.search(t))]


def test_brushing_the_timeline_filters_the_narratives(dashboard: tuple[Page, Problems]) -> None:
    page, problems = dashboard
    expect(_cards(page).first).to_be_visible()
    before = _card_days(page)
    assert len(set(before)) >= 2, f"the tiny demo's window should hold anomalies on several days: {before}"
    # Narratives name New York's local days; the brush snaps to them and the lens window is their UTC span.
    day = datetime.strptime(before[0], "%a %d %b %Y").replace(tzinfo=ZoneInfo("America/New_York"))
    page.get_by_role("heading", name="Against the baseline").scroll_into_view_if_needed()
    start = page.evaluate(OVERVIEW_AT, (day + timedelta(hours=2)).timestamp() * 1000)
    end = page.evaluate(OVERVIEW_AT, (day + timedelta(hours=22)).timestamp() * 1000)
    page.mouse.move(start["x"], start["y"])
    page.mouse.down()
    page.mouse.move((start["x"] + end["x"]) / 2, start["y"], steps=4)
    page.mouse.move(end["x"], end["y"], steps=4)
    page.mouse.up()
    # The brush snaps to whole day bins and becomes the lens window: the URL, the pickers and the
    # narratives all follow.
    lo, hi = day.astimezone(UTC), (day + timedelta(days=1)).astimezone(UTC)
    expect(page).to_have_url(re.compile(rf"[?&]since={lo:%Y-%m-%dT%H}%3A00%3A00Z&until={hi:%Y-%m-%dT%H}%3A00%3A00Z"))
    expect(page.get_by_label("Since (UTC)")).to_have_value(f"{lo:%Y-%m-%d %H:%M}")
    expect(_cards(page).filter(has_not_text=before[0])).to_have_count(0)
    deadline = time.monotonic() + 10  # the cards may still be swapping in on a loaded machine: read until they settle
    while (after := _card_days(page)) and set(after) != {before[0]} and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    assert after, "no narrative left for the brushed day"
    assert set(after) == {before[0]}, after
    assert len(after) < len(before)
    page.screenshot(path=str(ARTIFACTS / "brushed.png"))
    assert problems.errors == []


#: Screen position (page pixels) of a Web Mercator point on the heat map on screen.
HEAT_AT = """([x, y]) => {
  const raster = (v) => v.model.renderers.find((r) => r.glyph != null && r.glyph.type === 'ImageRGBA');
  const shown = [...Bokeh.index.query((v) => v.renderer_views instanceof Map && v.el.getClientRects().length > 0 && raster(v) != null)];
  const view = shown[shown.length - 1];
  const canvas = view.canvas_view.el.getBoundingClientRect();
  return {x: canvas.left + view.frame.x_scale.compute(x), y: canvas.top + view.frame.y_scale.compute(y)};
}"""


def test_hovering_a_unit_on_the_heat_map_shows_its_released_count(dashboard: tuple[Page, Problems], tiny_snap: Snapshot) -> None:
    page, problems = dashboard
    lens = Lens(snapshot=tiny_snap, privacy_mode="suppress", privacy_k=11)  # the server's defaults
    texts = count_texts(lens.unit_counts(), tiny_snap.units("nyc"))
    counts = lens.unit_counts().filter(pl.col("count").is_not_null()).sort("count", descending=True)
    unit, name = str(counts["unit_id"][0]), str(counts["name"][0])
    geom = tiny_snap.unit_geometries("nyc", "neighborhood").filter(pl.col("unit_id") == unit)
    inside = shapely.point_on_surface(shapely.from_wkb(geom["geom_wkb"][0]))
    (x,), (y,) = lon_lat_to_easting_northing(np.array([inside.x]), np.array([inside.y]))
    spot = page.evaluate(HEAT_AT, [float(x), float(y)])
    page.mouse.move(spot["x"] - 3, spot["y"])
    page.mouse.move(spot["x"], spot["y"], steps=3)
    tooltip = page.locator(".bk-tooltip-content").filter(visible=True)
    expect(tooltip).to_contain_text(name)
    expect(tooltip).to_contain_text(texts[unit])
    assert texts[unit] == f"{counts['count'][0]:,} events"  # a released number, never a raw pixel count
    page.screenshot(path=str(ARTIFACTS / "heat_hover.png"))
    assert problems.errors == []
