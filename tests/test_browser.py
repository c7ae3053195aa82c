"""The dashboard in a real browser (Debian Chromium via Playwright) against the live server.

A Panel app that raises still answers HTTP 200, so only a browser sees a broken page: these tests
fail on any console error or page error, and wait on Bokeh models (titles are drawn on canvas).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from urllib.parse import urlencode

from playwright.sync_api import Browser, Page, expect

from tests.browser import ARTIFACTS, NYC_LEVELS, ROWS, Problems, open_page, url_query


def test_dashboard_renders_heat_and_table_without_console_errors(dashboard: tuple[Page, Problems]) -> None:
    page, problems = dashboard
    assert page.title() == "City Service Heat"
    assert page.locator(ROWS).count() > 0
    assert page.get_by_text("withheld by the privacy rule").count() >= 1  # table summary and live region
    assert page.get_by_text("Snapshot").count() >= 1
    for label in ("City", "Admin level", "Since (UTC)", "Until (UTC, exclusive)", "Category", "Time bin", "Minimum z-score"):
        assert page.get_by_label(label).count() == 1, f"no control labelled {label!r}"
    page.wait_for_timeout(300)  # let the canvas paint the raster before the picture is taken
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    page.screenshot(path=str(shot))
    assert problems.errors == []


def test_controls_update_the_table_in_the_browser(dashboard: tuple[Page, Problems]) -> None:
    page, problems = dashboard
    rows = page.locator(ROWS)  # Playwright locators pierce Panel's shadow roots
    page.get_by_label("Category").select_option("HEAT/HOT WATER")
    expect(rows.filter(has_not_text="HEAT/HOT WATER")).to_have_count(0)
    expect(rows.first).to_contain_text("HEAT/HOT WATER")
    minimum = page.get_by_label("Minimum z-score")
    minimum.fill("99")
    minimum.press("Enter")
    expect(page.get_by_text("0 anomalies with q ≤ 0.05 and z ≥ 99")).to_be_visible()
    expect(rows).to_have_count(0)
    assert problems.errors == []


def test_a_copied_link_reopens_the_same_view(dashboard: tuple[Page, Problems], chromium: Browser) -> None:
    page, problems = dashboard
    expect(page).to_have_url(re.compile(r"[?&]level=neighborhood"))  # the full state is in the URL once loaded
    page.get_by_label("Admin level").select_option(label=NYC_LEVELS["tract"])
    expect(page).to_have_url(re.compile(r"[?&]level=tract"), timeout=15_000)  # the views re-render first
    # A category the tract table lists (anomalies are published per category and for all activity, "*").
    page.locator(ROWS).first.wait_for()
    listed = [c for c in page.locator(f"{ROWS} > :nth-child(2)").all_inner_texts() if c != "*"]
    assert listed, "the tiny demo has category anomalies at tract level"
    category = listed[0]
    page.get_by_label("Category").select_option(category)
    expect(page).to_have_url(re.compile(rf"[?&]{re.escape(urlencode({'category': category}, safe=','))}(&|$)"), timeout=15_000)
    link = page.url
    assert {"city", "level", "since", "until", "category", "kinds", "time_bin", "min_z", "q"} <= set(url_query(page))
    assert url_query(page)["since"] == "2026-10-25T04:00:00Z"  # ISO instants: the default window starts at local midnight (EDT)
    copy, copy_problems = open_page(chromium, link)
    try:
        assert copy.get_by_label("Admin level").input_value() == NYC_LEVELS["tract"]
        assert copy.get_by_label("Category").input_value() == category
        for label in ("Since (UTC)", "Until (UTC, exclusive)", "Time bin", "Minimum z-score"):
            assert copy.get_by_label(label).input_value() == page.get_by_label(label).input_value(), label
        rows = copy.locator(ROWS)
        expect(rows.filter(has_not_text=category)).to_have_count(0)
        assert url_query(copy) == url_query(page)
        assert copy_problems.errors == []
    finally:
        copy.close()
    assert problems.errors == []


def test_a_bad_link_value_shows_a_message_and_keeps_the_default(chromium: Browser, live_server: str) -> None:
    page, problems = open_page(chromium, f"{live_server}/dashboard?level=county")
    try:
        expect(page.get_by_text("level = “county”")).to_be_visible()
        assert page.get_by_label("Admin level").input_value() == NYC_LEVELS["neighborhood"]
        expect(page).to_have_url(re.compile(r"[?&]level=neighborhood"))  # the URL now says what is shown
        assert page.locator(ROWS).count() > 0
        assert problems.errors == []
    finally:
        page.close()


def test_csv_download_holds_the_released_table(dashboard: tuple[Page, Problems]) -> None:
    page, problems = dashboard
    page.get_by_label("Category").select_option("HEAT/HOT WATER")
    expect(page.locator(ROWS).filter(has_not_text="HEAT/HOT WATER")).to_have_count(0)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download anomalies (CSV)").click()
    assert download.value.suggested_filename == "csh_anomalies_nyc_neighborhood_2026-10-25T0400_2026-11-01T0400.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    shown = page.get_by_text(re.compile(r"^\d+ anomalies with")).inner_text()
    assert len(rows) == int(shown.split()[0]) > 0
    assert {r["category"] for r in rows} == {"HEAT/HOT WATER"}
    assert problems.errors == []
