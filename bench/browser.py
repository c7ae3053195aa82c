"""Browser figures of the dashboard on the default demo city, measured in headless Chromium:

``fcp_ms`` (first contentful paint), ``views_rendered_ms`` (navigation start until every view is
on screen: heat raster, table rows, tiles, sparkbands and the render stamp after them, then two
frames), ``linked_update_p95_ms`` (a control change until every linked view has taken it and
painted, 95th percentile of alternating changes; see :func:`_linked_updates`), ``frame_p95_ms``
(requestAnimationFrame intervals while the heat map is dragged, 95th percentile), ``bokeh_doc_kb``
(the page's Bokeh document as JSON, where first-load time goes besides the runtime) and
``own_js_css_gzip_kb`` / ``runtime_js_gzip_kb`` (gzip size of our own JS/CSS versus the
Bokeh/Panel runtime the page loads).

Our own JS/CSS are the module-level string constants named ``*_JS`` or ``*_CSS`` in ``app/views``
(CustomJS code, stylesheets) plus any ``.js``/``.css`` file under ``app/``; keep them there so they
are counted.
"""

from __future__ import annotations

import ast
import gzip
import statistics
import time
from pathlib import Path

from bench.serve import served

__all__ = ["browser_figures", "own_assets_gzip_bytes"]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
BOKEH_READY = "() => window.Bokeh !== undefined && Bokeh.documents.length > 0"
HEAT_READY = """() => window.Bokeh !== undefined && Bokeh.documents.length > 0 && [...Bokeh.documents[0].all_models].some(m =>
    m.glyph !== undefined && m.glyph !== null && m.glyph.type === 'ImageRGBA'
    && m.data_source.data.image !== undefined && m.data_source.data.image.length > 0)"""
#: True once the other views' data is in the browser too: the tilegram's tiles and the sparkbands' lines.
VIEWS_READY = """() => { const ms = [...Bokeh.documents[0].all_models];
  const has = (name, col) => ms.some(m => m.name === name && m.data !== undefined && m.data[col] !== undefined && m.data[col].length > 0);
  return has('tiles', 'x') && has('sparkbands-line', 'xs'); }"""
#: The page's render stamp: with ``after`` -1, its change number (-1 if absent); else whether a
#: stamp newer than ``after`` whose state holds ``token`` (a ``key=value`` query pair) is in the DOM.
#: Panel renders inside shadow roots, so the search descends into them (the root that held the
#: stamp is remembered: the pane's root outlives the re-rendered ``<div>``).
_STAMP = """(args) => {
  const find = (root) => {
    const hit = root.querySelector('[data-csh-rendered]');
    if (hit) { window.__cshStampRoot = root; return hit; }
    for (const el of root.querySelectorAll('*')) if (el.shadowRoot) { const f = find(el.shadowRoot); if (f) return f; }
    return null;
  };
  const cached = window.__cshStampRoot;
  const el = (cached && (cached === document || cached.host.isConnected) && cached.querySelector('[data-csh-rendered]')) || find(document);
  const seen = el ? Number(el.dataset.cshRendered) : -1;
  if (args.after < 0) return seen;
  return seen > args.after && el.dataset.cshState.split('&').includes(args.token);
}"""
#: Resolves after two animation frames: whatever the last update scheduled has painted.
_PAINTED = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))"
_FRAMES_START = """(ms) => {
  window.__cshFrames = []; let last = performance.now(); const stop = last + ms;
  function tick(t) { window.__cshFrames.push(t - last); last = t; if (t < stop) requestAnimationFrame(tick); }
  requestAnimationFrame(tick);
}"""


#: Size of the rendered page's Bokeh document as JSON (what the server sent to build it, near enough:
#: every model with its non-default properties and the data sources' columns).
_DOC_BYTES = "() => new TextEncoder().encode(JSON.stringify(Bokeh.documents[0].to_json(false))).length"


def own_assets_gzip_bytes(root: Path = ROOT / "app") -> int:
    """Gzip size of our own JS and CSS (see the module docstring)."""
    chunks: list[str] = []
    for path in sorted(root.rglob("*")):
        if path.suffix in {".js", ".css"}:
            chunks.append(path.read_text())
        elif path.suffix == ".py" and "views" in path.parts:
            for node in ast.walk(ast.parse(path.read_text())):
                named = isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id.endswith(("_JS", "_CSS")) for t in node.targets
                )
                if named and isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                    chunks.append(node.value.value)
    return len(gzip.compress("\n".join(chunks).encode(), compresslevel=9))


def _p95(values: list[float]) -> float:
    return round(statistics.quantiles(values, n=20)[-1], 1) if len(values) >= 2 else round(values[0], 1)


def browser_figures(data_dir: Path, changes: int = 20) -> dict[str, tuple[float, str]]:
    """Serve ``data_dir`` with ``panel_serve.py`` and measure the figures in Chromium."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is absent: `make chromium` installs it")
    with served(data_dir) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        warm = browser.new_page()
        warm.goto(f"{url}/dashboard")  # first session warms the server's memoised frames, as a real server would be
        warm.wait_for_function(HEAT_READY, timeout=120_000)
        warm.close()
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(f"{url}/dashboard")
        page.wait_for_function(HEAT_READY)
        page.locator(".tabulator-row, table.csh-anomalies tbody tr").first.wait_for()  # the grid widget or the HTML table
        page.wait_for_function(VIEWS_READY)
        page.wait_for_function(f"() => ({_STAMP})({{after: -1, token: ''}}) >= 0")  # the stamp comes after every view
        page.evaluate(_PAINTED)
        rendered = float(page.evaluate("() => performance.now()"))
        fcp = float(page.evaluate("() => (performance.getEntriesByName('first-contentful-paint')[0] || {startTime: NaN}).startTime"))
        doc_bytes = float(page.evaluate(_DOC_BYTES))
        updates = _linked_updates(page, changes)
        frames = _frames_while_dragging(page)
        browser.close()
    runtime = sum(
        len(gzip.compress(p.read_bytes(), compresslevel=9))
        for pkg in ("bokeh/server/static/js", "panel/dist")
        for p in _site_packages().joinpath(pkg).glob("*.min.js")
    )
    return {
        "fcp_ms": (round(fcp, 1), "ms"),
        "views_rendered_ms": (round(rendered, 1), "ms"),
        "linked_update_p95_ms": (_p95(updates), "ms"),
        "frame_p95_ms": (_p95(frames), "ms"),
        "bokeh_doc_kb": (round(doc_bytes / 1024, 1), "kB"),
        "own_js_css_gzip_kb": (round(own_assets_gzip_bytes() / 1024, 2), "kB"),
        "runtime_js_gzip_kb": (round(runtime / 1024, 1), "kB"),
    }


def _linked_updates(page: object, changes: int) -> list[float]:
    """Times from a control change until every linked view shows the new state, and has painted.

    The page's render stamp (``data-csh-rendered``, see :func:`app.views.page.dashboard_page`) is
    written by the lens watcher that runs after every view's, so its message reaches the browser
    after all the views' updates; the wait asks for a stamp newer than the one before the change
    *and* carrying the new value (an alternating value alone would match a stamp two changes old).
    The table summary is checked too, then two animation frames let canvases and the DOM paint.
    """
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    control = page.get_by_label("Minimum z-score")
    times = []
    for i in range(changes):
        value = "4" if i % 2 == 0 else "3.5"  # neither text contains the other
        before = int(page.evaluate(_STAMP, {"after": -1, "token": ""}))
        t0 = time.perf_counter()
        control.fill(value)
        control.press("Enter")
        page.wait_for_function(_STAMP, arg={"after": before, "token": f"min_z={value}"}, polling="raf")
        page.get_by_text(f"z ≥ {value}").first.wait_for()
        page.evaluate(_PAINTED)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _frames_while_dragging(page: object) -> list[float]:
    """requestAnimationFrame intervals while the heat map is dragged for about two seconds."""
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    canvas = page.locator("canvas").first
    box = canvas.bounding_box() or {"x": 300, "y": 300, "width": 400, "height": 400}
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.evaluate(_FRAMES_START, 2000)  # starts recording and returns at once
    page.mouse.move(cx, cy)
    page.mouse.down()
    for i in range(60):
        page.mouse.move(cx + 3 * (i % 20), cy + 2 * (i % 15))
        page.wait_for_timeout(25)
    page.mouse.up()
    page.wait_for_timeout(600)
    deltas: list[float] = page.evaluate("() => window.__cshFrames.slice(1)")
    return [float(d) for d in deltas] or [0.0]


def _site_packages() -> Path:
    import bokeh

    return Path(bokeh.__file__).resolve().parents[1]
