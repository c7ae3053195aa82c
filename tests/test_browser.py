"""The dashboard in a real browser (Debian Chromium via Playwright) against the live server.

A Panel app that raises still answers HTTP 200, so only a browser sees a broken page: these tests
fail on any console error or page error, and wait on Bokeh models (titles are drawn on canvas).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

# Every view re-renders on a control change; on a loaded 2-core CI machine that can take seconds.
expect.set_options(timeout=15_000)

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

#: True once Bokeh has a document (the websocket session is up and models are synced).
BOKEH_READY = "() => window.Bokeh !== undefined && Bokeh.documents.length > 0"
#: True once the heat raster arrived: an RGBA image glyph whose source holds a non-empty, non-blank image.
#: Data rows of the anomaly table (the "more rows" note excluded).
ROWS = "table.csh-anomalies tbody tr:not(.more)"
HEAT_READY = """() => [...Bokeh.documents[0].all_models].some(m =>
    m.glyph !== undefined && m.glyph !== null && m.glyph.type === 'ImageRGBA'
    && m.data_source.data.image !== undefined && m.data_source.data.image.length > 0
    && Array.from(m.data_source.data.image[0]).some(v => v > 0))"""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One headless Chromium for the module (skipped when the Debian package is not installed)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install it with `apt-get install -y chromium` to run the browser tests")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


class Problems:
    """Console errors and uncaught page errors seen by one page."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda msg: self.errors.append(f"console: {msg.text} @ {msg.location}") if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))


def _open(chromium: Browser, url: str) -> tuple[Page, Problems]:
    """``url`` in a fresh page, once the heat raster and the table have rendered."""
    page = chromium.new_page(viewport={"width": 1440, "height": 900})
    problems = Problems(page)
    page.set_default_timeout(30_000)
    page.goto(url)
    page.wait_for_function(BOKEH_READY)
    traceback = page.get_by_text("Traceback")
    assert traceback.count() == 0, f"the Panel app raised (the page shows a traceback):\n{traceback.first.inner_text()}"
    page.wait_for_function(HEAT_READY)
    page.locator(ROWS).first.wait_for()
    return page, problems


@pytest.fixture
def dashboard(chromium: Browser, live_server: str) -> Iterator[tuple[Page, Problems]]:
    """The dashboard loaded in a fresh page, with the heat raster and the table rendered."""
    page, problems = _open(chromium, f"{live_server}/dashboard")
    try:
        yield page, problems
    finally:
        page.close()


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


def _query(page: Page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}


def test_a_copied_link_reopens_the_same_view(dashboard: tuple[Page, Problems], chromium: Browser) -> None:
    page, problems = dashboard
    expect(page).to_have_url(re.compile(r"[?&]level=neighborhood"))  # the full state is in the URL once loaded
    page.get_by_label("Admin level").select_option("borough")
    expect(page).to_have_url(re.compile(r"[?&]level=borough"), timeout=15_000)  # the views re-render first
    page.get_by_label("Category").select_option("HEAT/HOT WATER")
    expect(page).to_have_url(re.compile(r"[?&]category=HEAT%2FHOT\+WATER"), timeout=15_000)
    link = page.url
    assert {"city", "level", "since", "until", "category", "kinds", "time_bin", "min_z", "q"} <= set(_query(page))
    assert _query(page)["since"] == "2026-10-25"  # ISO dates
    copy, copy_problems = _open(chromium, link)
    try:
        assert copy.get_by_label("Admin level").input_value() == "borough"
        assert copy.get_by_label("Category").input_value() == "HEAT/HOT WATER"
        for label in ("Since (UTC)", "Until (UTC, exclusive)", "Time bin", "Minimum z-score"):
            assert copy.get_by_label(label).input_value() == page.get_by_label(label).input_value(), label
        rows = copy.locator(ROWS)
        expect(rows.filter(has_not_text="HEAT/HOT WATER")).to_have_count(0)
        assert _query(copy) == _query(page)
        assert copy_problems.errors == []
    finally:
        copy.close()
    assert problems.errors == []


def test_a_bad_link_value_shows_a_message_and_keeps_the_default(chromium: Browser, live_server: str) -> None:
    page, problems = _open(chromium, f"{live_server}/dashboard?level=county")
    try:
        expect(page.get_by_text("level = “county”")).to_be_visible()
        assert page.get_by_label("Admin level").input_value() == "neighborhood"
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
    assert download.value.suggested_filename == "csh_anomalies_nyc_neighborhood_2026-10-25_2026-11-01.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    shown = page.get_by_text(re.compile(r"^\d+ anomalies with")).inner_text()
    assert len(rows) == int(shown.split()[0]) > 0
    assert {r["category"] for r in rows} == {"HEAT/HOT WATER"}
    assert problems.errors == []
