"""Browser-test helpers shared by every Playwright test module: the Debian Chromium, a page opener
that waits for the dashboard to render, and a recorder of console and page errors.

The ``chromium`` and ``dashboard`` fixtures built on them live in ``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import Browser, Page, expect

from app.data.cities import level_names

__all__ = ["ARGS", "ARTIFACTS", "BOKEH_READY", "CHROMIUM", "HEAT_READY", "NYC_LEVELS", "ROWS", "Problems", "open_page", "url_query"]

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

#: What the "Admin level" select shows for each NYC level (a select's DOM value is its label).
NYC_LEVELS = level_names("nyc")
#: True once Bokeh has a document (the websocket session is up and models are synced).
BOKEH_READY = "() => window.Bokeh !== undefined && Bokeh.documents.length > 0"
#: Data rows of the anomaly table (the "more rows" note excluded).
ROWS = "table.csh-anomalies tbody tr:not(.more)"
#: True once the heat raster arrived: an RGBA image glyph whose source holds a non-empty, non-blank image.
HEAT_READY = """() => [...Bokeh.documents[0].all_models].some(m =>
    m.glyph !== undefined && m.glyph !== null && m.glyph.type === 'ImageRGBA'
    && m.data_source.data.image !== undefined && m.data_source.data.image.length > 0
    && Array.from(m.data_source.data.image[0]).some(v => v > 0))"""


class Problems:
    """Console errors and uncaught page errors seen by one page."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda msg: self.errors.append(f"console: {msg.text} @ {msg.location}") if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))


def open_page(chromium: Browser, url: str) -> tuple[Page, Problems]:
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


def url_query(page: Page) -> dict[str, str]:
    """The page URL's query values (the first of each key)."""
    return {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}
