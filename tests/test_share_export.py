"""Sharing and exporting in a real browser: a link carries the selection and cannot lower the
privacy rule, Back and Forward walk through the views, and "Download view (PNG)" saves a picture
of the map and tilegram as drawn (client side, so only a browser can test it)."""

from __future__ import annotations

import io
import re
import struct
from pathlib import Path

from PIL import Image
from playwright.sync_api import Browser, Page, expect

from tests.browser import ARTIFACTS, NYC_LEVELS, open_page, url_query

#: Unit ids whose tilegram tile carries the selection outline (the tile source's ``line`` colour).
OUTLINED = """() => {
    const tiles = Bokeh.documents[0].get_model_by_name('tiles')
    if (tiles == null || tiles.data.unit_id === undefined) return null
    return tiles.data.unit_id.filter((id, i) => tiles.data.line[i] !== 'white').sort()
}"""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _outlined(page: Page) -> list[str] | None:
    value = page.evaluate(OUTLINED)
    assert value is None or isinstance(value, list)
    return value


def _wait_outlined(page: Page, expected: list[str]) -> None:
    """Wait until exactly ``expected`` tiles are outlined (the tilegram re-renders after the lens)."""
    page.wait_for_function(f"(want) => JSON.stringify(({OUTLINED})()) === JSON.stringify(want)", arg=sorted(expected))


def test_a_link_with_a_selection_reopens_with_those_units_selected(chromium: Browser, live_server: str) -> None:
    page, problems = open_page(chromium, f"{live_server}/dashboard?level=borough&sel=QN,BK")
    try:
        _wait_outlined(page, ["BK", "QN"])
        assert _outlined(page) == ["BK", "QN"]
        expect(page).to_have_url(re.compile(r"[?&]sel=BK,QN(&|$)"))  # sorted, commas literal
        assert page.get_by_label("Admin level").input_value() == NYC_LEVELS["borough"]
        assert page.get_by_text("This link holds values").count() == 0
        assert problems.errors == []
    finally:
        page.close()


def test_a_link_selection_with_unknown_ids_applies_the_others_and_says_so(chromium: Browser, live_server: str) -> None:
    # Queens: a borough with anomalies in the tiny demo's week, so the page has table rows to wait for.
    page, problems = open_page(chromium, f"{live_server}/dashboard?level=borough&sel=QN,ZZ9")
    try:
        expect(page.get_by_text("sel = “ZZ9” (no such borough in nyc)")).to_be_visible()
        _wait_outlined(page, ["QN"])
        expect(page).to_have_url(re.compile(r"[?&]sel=QN(&|$)"))
        assert problems.errors == []
    finally:
        page.close()


def test_a_link_asking_for_less_privacy_keeps_the_servers_rule_and_says_so(chromium: Browser, live_server: str) -> None:
    page, problems = open_page(chromium, f"{live_server}/dashboard?privacy=none")
    try:
        expect(page.get_by_text("privacy = “none” (this server publishes with suppress, k = 11)")).to_be_visible()
        expect(page).to_have_url(re.compile(r"[?&]privacy=suppress&privacy_k=11(&|$)"))
        assert page.get_by_text("withheld by the privacy rule").count() >= 1  # still suppressing
        assert problems.errors == []
    finally:
        page.close()


def test_back_and_forward_walk_through_the_views(chromium: Browser, live_server: str) -> None:
    page, problems = open_page(chromium, f"{live_server}/dashboard")
    try:
        level, category = page.get_by_label("Admin level"), page.get_by_label("Category")
        expect(page).to_have_url(re.compile(r"[?&]level=neighborhood"))
        start = page.url
        level.select_option(label=NYC_LEVELS["borough"])
        expect(page).to_have_url(re.compile(r"[?&]level=borough"))
        at_borough = page.url
        category.select_option("HEAT/HOT WATER")
        expect(page).to_have_url(re.compile(r"[?&]category=HEAT%2FHOT\+WATER"))
        page.go_back()
        expect(category).to_have_value("All")
        expect(level).to_have_value(NYC_LEVELS["borough"])
        assert page.url == at_borough
        page.go_back()
        expect(level).to_have_value(NYC_LEVELS["neighborhood"])
        assert page.url == start
        page.go_forward()
        expect(level).to_have_value(NYC_LEVELS["borough"])
        expect(category).to_have_value("All")
        page.go_forward()
        expect(category).to_have_value("HEAT/HOT WATER")
        page.wait_for_timeout(500)  # a restored view must not write a new entry (that would cut off Forward)
        assert url_query(page)["category"] == "HEAT/HOT WATER"
        page.go_back()
        expect(category).to_have_value("All")
        page.go_forward()  # Forward still there
        expect(category).to_have_value("HEAT/HOT WATER")
        # Back to the entry the page was opened with (a bare link, before the URL showed the state):
        # its view is every default, and showing it writes nothing, so the URL stays bare.
        for _ in range(3):
            page.go_back()
        expect(level).to_have_value(NYC_LEVELS["neighborhood"])
        page.wait_for_timeout(500)
        assert page.url == f"{live_server}/dashboard"
        page.go_forward()
        assert page.url == start
        page.go_forward()
        expect(level).to_have_value(NYC_LEVELS["borough"])
        assert problems.errors == []
    finally:
        page.close()


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG header (IHDR is the first chunk, right after the signature)."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def test_view_png_holds_the_map_and_tilegram_with_a_caption(chromium: Browser, live_server: str) -> None:
    page, problems = open_page(chromium, f"{live_server}/dashboard?level=borough&sel=BK")
    try:
        _wait_outlined(page, ["BK"])
        page.wait_for_timeout(300)  # let the canvases paint
        with page.expect_download() as download:
            page.get_by_role("button", name="Download view (PNG)").click()
        assert download.value.suggested_filename == "csh_view_nyc_borough_2026-10-25T0400_2026-11-01T0400.png"
        data = Path(download.value.path()).read_bytes()
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "view.png").write_bytes(data)
        width, height = _png_size(data)
        assert width >= 800, width  # two plots side by side, not one
        assert height >= 400, height
        assert len(data) > 20_000
        image = Image.open(io.BytesIO(data)).convert("RGB")
        assert image.size == (width, height)
        colors = image.getcolors(maxcolors=1 << 20)
        assert colors is not None
        assert len(colors) > 100, "the picture is (nearly) blank"
        # The heat map's dark background fills much of the left half; the tilegram's white, the right.
        left = image.crop((0, height // 4, width // 2, height)).getcolors(maxcolors=1 << 20)
        assert left is not None
        assert sum(n for n, rgb in left if rgb == (0x10, 0x14, 0x18)) > 0.1 * (width // 2) * (height * 3 // 4)
        # The caption line: dark text pixels in the top band.
        top = image.crop((0, 0, width, 40)).getcolors(maxcolors=1 << 20)
        assert top is not None
        assert sum(n for n, rgb in top if max(rgb) < 100) > 200
        assert problems.errors == []
    finally:
        page.close()
