"""Accessibility of the dashboard in a real browser (WCAG 2.2 AA): an axe-core audit of the loaded
page, a keyboard-only path through the main task, the tiles reachable and selectable by keyboard,
and a data-table alternative for each chart.

axe-core comes from npm (``make axe``, pinned in package.json) and is injected into the Playwright
page; the audit fails on any serious or critical violation and names each one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.browser import ARTIFACTS, NYC_LEVELS, Problems

ROOT = Path(__file__).resolve().parents[1]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
#: The WCAG 2.x A/AA rule sets (2.2 included) plus axe's best practices that concern structure.
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now (every impact level)."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is absent: `make axe` installs axe-core from package.json")
    page.add_script_tag(path=str(AXE))
    result: dict[str, Any] = page.evaluate(
        "async (tags) => await axe.run(document, {runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']})", AXE_TAGS
    )
    return list(result["violations"])


def _describe(violations: list[dict[str, Any]]) -> str:
    lines = []
    for v in violations:
        targets = [", ".join(map(str, n["target"])) for n in v["nodes"][:3]]
        lines.append(f"{v['impact']}: {v['id']} ({v['help']}) x{len(v['nodes'])}: {targets}")
    return "\n".join(lines)


def open_table_cards(page: Page) -> None:
    """Open every chart's data-table card (by keyboard: focus its header button, press Enter)."""
    for title in ("Table of the heat map", "Table of the tilegram", "Table of the sparkbands"):
        header = page.get_by_role("button", name=re.compile(title))
        header.focus()
        page.keyboard.press("Enter")
    for table in ("csh-heat-table", "csh-tile-table", "csh-band-table"):
        page.locator(f"table.{table}").wait_for()


def test_axe_finds_no_serious_or_critical_violation(dashboard: tuple[Page, Problems]) -> None:
    page, problems = dashboard
    page.get_by_role("button", name=re.compile("^Show ")).first.wait_for()  # the narratives have rendered
    open_table_cards(page)  # audit the tables too, not only what shows at first
    violations = axe_violations(page)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "axe.json").write_text(json.dumps(violations, indent=1))
    blocking = [v for v in violations if v["impact"] in {"serious", "critical"}]
    assert blocking == [], "axe-core found:\n" + _describe(blocking)
    assert "color-contrast" not in {v["id"] for v in violations}  # text contrast >= 4.5:1 (WCAG 1.4.3)
    assert problems.errors == []


#: The focused element, through Panel's shadow roots: its tag, accessible name and focus ring.
FOCUSED = r"""() => {
  let e = document.activeElement;
  while (e && e.shadowRoot && e.shadowRoot.activeElement) { e = e.shadowRoot.activeElement; }
  if (!e || e === document.body) { return null; }
  const text = (n) => n.nodeType === Node.TEXT_NODE ? n.textContent
    : ['STYLE', 'SCRIPT'].includes(n.nodeName) ? ''
    : [...(n.shadowRoot ? n.shadowRoot.childNodes : []), ...n.childNodes].map(text).join(' ');
  const label = (e.labels && e.labels.length) ? e.labels[0].textContent : '';
  const squash = (t) => (t || '').replace(/\s+/g, ' ').trim();
  const name = (squash(e.getAttribute('aria-label')) || squash(label) || squash(text(e)) || squash(e.getAttribute('title'))).slice(0, 200);
  const style = getComputedStyle(e);
  const ring = (style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0) || style.boxShadow !== 'none';
  const canvas = e.classList.contains('bk-events');
  return {tag: e.tagName.toLowerCase(), name: name, ring: ring, canvas: canvas, html: e.outerHTML.slice(0, 200)};
}"""


def summary(page: Page) -> Locator:
    """The page's live summary of the anomaly list (the tilegram keeps a live region of its own)."""
    return page.get_by_role("status").filter(has_text=re.compile(r"anomal(y|ies) in "))


def tab_to(page: Page, name: str | re.Pattern[str], limit: int = 120) -> dict[str, Any]:
    """Press Tab until the focused control's accessible name matches ``name``; every stop on the
    way must have an accessible name and a visible focus indicator."""
    trail: list[str] = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        focused: dict[str, Any] | None = page.evaluate(FOCUSED)
        if focused is None:
            trail.append("(body)")
            continue
        trail.append(f"{focused['tag']} {focused['name']!r}")
        assert focused["ring"], f"{focused['tag']} {focused['name']!r} shows no focus indicator (after {trail})"
        assert focused["name"], f"a focusable {focused['tag']} has no accessible name: {focused['html']} (after {trail})"
        hit = re.search(name, focused["name"]) if isinstance(name, re.Pattern) else focused["name"].startswith(name)
        if hit:
            return focused
    raise AssertionError(f"no control named {name!r} within {limit} Tab presses: {trail}")


def test_keyboard_only_path_selects_a_borough_and_reads_its_anomalies(dashboard: tuple[Page, Problems], tiny_snap: Any) -> None:
    """The main task without a mouse: switch to boroughs, select one from the tile list, read the
    live summary and the narratives, open the tilegram's table and find the tile marked selected."""
    page, problems = dashboard
    page.keyboard.press("Tab")  # the skip link comes first and says where it goes
    assert page.evaluate(FOCUSED)["name"] == "Skip to the dashboard"
    level = tab_to(page, "Admin level")
    assert level["tag"] == "select"
    boroughs = tiny_snap.units("nyc", "borough")
    for _ in range(2):  # neighborhood -> borough: the next option down
        page.keyboard.press("ArrowDown")
        if page.get_by_label("Admin level").input_value() == NYC_LEVELS["borough"]:
            break
    expect(page.get_by_label("Admin level")).to_have_value(NYC_LEVELS["borough"])
    units = page.get_by_label("Units to select (tiles)")
    expect(units.locator("option")).to_have_count(boroughs.height)
    tab_to(page, "Units to select")
    page.keyboard.type("Brooklyn")  # a list box jumps to the option typed
    page.keyboard.press("Space")
    expect(units).to_have_values(["Brooklyn"])  # only Brooklyn picked (Panel keys options by their label)
    tab_to(page, "Select these units")
    page.keyboard.press("Enter")
    expect(summary(page)).to_contain_text("in Brooklyn")
    expect(page.get_by_text("1 borough unit selected.")).to_be_visible()
    cards = page.get_by_role("button", name=re.compile("^Show "))
    expect(cards.first).to_be_visible()
    for label in cards.all_inner_texts():
        assert label == "Show Brooklyn" or "Brooklyn" in label, label
    header = tab_to(page, re.compile("Table of the tilegram"))
    assert header["tag"] == "button"
    page.keyboard.press("Enter")
    selected = page.locator("table.csh-tile-table tbody tr", has_text="selected")
    expect(selected).to_have_count(1)
    expect(selected).to_contain_text("Brooklyn")
    tab_to(page, "Clear the selection")
    page.keyboard.press("Enter")
    expect(page.get_by_text("Nothing selected: every unit is shown.")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "keyboard_path.png"))
    assert problems.errors == []


def test_tiles_are_reachable_and_selectable_by_keyboard(dashboard: tuple[Page, Problems], tiny_snap: Any) -> None:
    """Tab onto the tilegram, walk the tiles with the arrow keys, select one with Enter: the lens
    selection (live summary, URL) follows, and the canvas names the tile under the cursor."""
    page, problems = dashboard
    page.get_by_label("Admin level").select_option(label=NYC_LEVELS["borough"])
    boroughs = tiny_snap.units("nyc", "borough")
    page.wait_for_function(
        f"() => [...Bokeh.documents[0].all_models].find((m) => m.name === 'tiles').data.unit_id.length === {boroughs.height}"
    )
    page.get_by_label("Units to select (tiles)").focus()  # start from the sidebar, as a keyboard user would
    tilegram = tab_to(page, re.compile("^Tilegram"))
    assert "arrow keys" in tilegram["name"]
    page.keyboard.press("ArrowRight")
    first = page.evaluate(FOCUSED)["name"]
    assert re.search(r"Tile \d of 5: ", first), first
    names = {first}
    for key in ("ArrowLeft", "ArrowUp", "ArrowDown", "ArrowRight"):
        page.keyboard.press(key)
        names.add(page.evaluate(FOCUSED)["name"])
    assert len(names) >= 2, "the arrow keys did not move between tiles"
    page.keyboard.press("Enter")
    name = re.search(r"Tile \d of 5: ([^,]+),", page.evaluate(FOCUSED)["name"]).group(1)  # type: ignore[union-attr]  # asserted above
    unit = str(boroughs.filter(boroughs["name"] == name)["unit_id"][0])
    expect(summary(page)).to_contain_text(f"in {name}")
    expect(page).to_have_url(re.compile(rf"[?&]sel={unit}(&|$)"))
    expect(page.get_by_text("1 borough unit selected.")).to_be_visible()
    page.keyboard.press("Escape")  # clears the selection
    expect(page.get_by_text("Nothing selected: every unit is shown.")).to_be_visible()
    assert problems.errors == []
