"""The dashboard of a server whose store holds only Chicago (real shared data) in Debian Chromium:
it renders without console errors, opens on Chicago, and shows names (city, levels, kinds, units)
rather than ids. Skipped like the other browser tests when Chromium or the shared data is absent."""

from __future__ import annotations

import re

from playwright.sync_api import Browser, Page, expect

from tests.browser import BOKEH_READY, HEAT_READY, Problems

RENDERED = "[data-csh-rendered]"  # the page's stamp: every view has taken the lens state


def _open(chromium: Browser, url: str, *ready: str) -> tuple[Page, Problems]:
    """``url`` in a fresh page once Bokeh is up, no traceback shows and every view has rendered
    (not :func:`tests.browser.open_page`: a window of the 2022 file has no points to draw)."""
    page = chromium.new_page(viewport={"width": 1440, "height": 900})
    problems = Problems(page)
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_function(BOKEH_READY)
    page.locator(RENDERED).wait_for(state="attached")
    traceback = page.get_by_text("Traceback")
    assert traceback.count() == 0, f"the Panel app raised:\n{traceback.first.inner_text()}"
    for condition in ready:
        page.wait_for_function(condition)
    return page, problems


def _labels(page: Page, control: str) -> list[str]:
    return [text.strip() for text in page.get_by_label(control).locator("option").all_inner_texts()]


def test_chicago_dashboard_renders_with_names(chromium: Browser, chicago_server: str) -> None:
    page, problems = _open(chromium, f"{chicago_server}/dashboard")
    try:
        assert page.title() == "City Service Heat"
        assert page.get_by_label("City").input_value() == "Chicago"  # the store's only city, by its name
        assert _labels(page, "City") == ["Chicago"]
        assert page.get_by_label("Admin level").input_value() == "Community area"
        assert _labels(page, "Admin level") == ["Census tract", "Community area", "Side", "City"]
        assert page.get_by_label("Incidents").count() == 1  # Chicago crimes: the one kind it has
        assert page.get_by_label("Service requests").count() == page.get_by_label("Road closures").count() == 0
        expect(page.get_by_text("newest Chicago event")).to_be_visible()
        expect(page.get_by_text(re.compile(r"anomalies with q ≤ .* at community area level"))).to_be_visible()
        expect(page).to_have_url(re.compile(r"[?&]city=chicago"))
        assert problems.errors == []
    finally:
        page.close()


def test_chicago_located_window_shows_sides_by_name(chromium: Browser, chicago_server: str) -> None:
    """A week of the 2012 export (rows with points) at the side level: the heat map draws, and its
    table lists the sides by name."""
    page, problems = _open(chromium, f"{chicago_server}/dashboard?level=borough&since=2012-01-29&until=2012-02-05", HEAT_READY)
    try:
        assert page.get_by_label("Admin level").input_value() == "Side"
        header = page.get_by_role("button", name=re.compile("Table of the heat map"))
        header.focus()
        page.keyboard.press("Enter")
        table = page.locator("table.csh-heat-table")
        table.wait_for()
        expect(table.locator("thead th").first).to_have_text("side")
        names = [n.strip() for n in table.locator("tbody tr td:first-child").all_inner_texts()]
        assert len(names) == 9
        assert "Far North Side" in names
        assert not any(re.fullmatch(r"[a-z-]+", n) for n in names), names  # "far-north-side" is the id
        assert problems.errors == []
    finally:
        page.close()
