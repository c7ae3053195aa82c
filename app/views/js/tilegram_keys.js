if (window.__cshTileKeys) { return; }
window.__cshTileKeys = true;
const HELP = "arrow keys move between tiles, Enter or Space selects or unselects, Escape clears the selection";
const CURSOR = "#1a56db", SELECTED = "#1a1a1a";
const deep = () => { let e = document.activeElement; while (e && e.shadowRoot && e.shadowRoot.activeElement) { e = e.shadowRoot.activeElement; } return e; };
const tilegram = (el) => [...Bokeh.index.query((v) => v.model != null && v.model.name === "tilegram" && v.canvas_view != null
  && v.canvas_view.events_el === el)][0];
const source = (view) => view.model.renderers.map((r) => r.data_source).find((s) => s != null && s.name === "tiles");
let cursor = null;  // {view, unit, line, lw}
let live = null;
function say(text) {
  if (live == null || !live.isConnected) {
    live = document.createElement("div");
    live.setAttribute("role", "status");
    live.setAttribute("aria-live", "polite");
    live.style.cssText = "position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap";
    (document.getElementById("main") ?? document.body).appendChild(live);
  }
  live.textContent = text;
}
function selected(view) {  // the tiles the server outlines as selected (the lens selection, however it was made)
  const d = source(view).data, out = [];
  for (let j = 0; j < d.unit_id.length; j++) {
    const line = cursor != null && cursor.view === view && cursor.unit === d.unit_id[j] ? cursor.line : d.line[j];
    if (line === SELECTED) { out.push(j); }
  }
  return out;
}
function describe(view, i) {
  const d = source(view).data, n = d.unit_id.length;
  const chosen = selected(view).includes(i) ? ", selected" : "";
  return `Tile ${i + 1} of ${n}: ${d.name[i]}, strongest anomaly z ${d.z_text[i]}${chosen}`;
}
function label(view, el) {
  const i = cursor != null && cursor.view === view ? source(view).data.unit_id.indexOf(cursor.unit) : -1;
  el.setAttribute("role", "application");
  el.setAttribute("aria-roledescription", "tilegram");
  el.setAttribute("aria-label", `Tilegram: ${i >= 0 ? describe(view, i) + ". " : ""}${HELP}.`);
}
function paint(view, i) {
  const s = source(view), d = s.data;
  if (cursor != null && cursor.view === view) {
    const j = d.unit_id.indexOf(cursor.unit);
    if (j >= 0 && d.line[j] === CURSOR) { d.line[j] = cursor.line; d.lw[j] = cursor.lw; }  // unless the server redrew it
  }
  cursor = {view: view, unit: d.unit_id[i], line: d.line[i], lw: d.lw[i]};
  d.line[i] = CURSOR;
  d.lw[i] = Math.max(3, d.lw[i]);
  s.change.emit();
}
function step(view, i, key) {
  const d = source(view).data, n = d.x.length;
  const dir = {ArrowRight: [1, 0], ArrowLeft: [-1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1]}[key];
  let best = i, score = Infinity;
  for (let j = 0; j < n; j++) {
    const dx = d.x[j] - d.x[i], dy = d.y[j] - d.y[i];
    const along = dx * dir[0] + dy * dir[1], across = Math.abs(dx * dir[1] - dy * dir[0]);
    if (along <= 1e-9 || across > 2 * along) { continue; }
    const cost = along + 2 * across;
    if (cost < score) { score = cost; best = j; }
  }
  return best;
}
// Every chart canvas is a tab stop (Bokeh's): give each a name, the tilegram's saying how to use it.
// Checked twice a second, since views are drawn after the page loads and replaced on changes
// (focus events inside a shadow root do not reliably reach the document).
const NAMES = {
  "sparkbands": "Sparkbands: released counts per unit against their baseline band; the table below lists them",
  "sparkbands-overview": "Timeline of released counts: drag across it to set the window (the Since and Until fields do the same)",
};
const HEAT = "Heat map of events: drag to pan, scroll to zoom, click a unit to select it; the table below lists released counts per unit";
function name_canvases() {
  for (const view of Bokeh.index.query((v) => v.canvas_view != null && v.canvas_view.events_el != null && v.model != null)) {
    const el = view.canvas_view.events_el;
    if (view.model.name === "tilegram") {
      if (!el.__csh) { el.__csh = true; el.addEventListener("focus", () => label(view, el)); }
      if (!el.hasAttribute("aria-label")) { label(view, el); }
    } else if (!el.hasAttribute("aria-label") || el.dataset.cshGeneric) {
      // A canvas is named at once (a re-drawn heat map may not hold its image yet: "Chart" until it does).
      const heat = view.model.renderers != null && view.model.renderers.some((r) => r.glyph != null && r.glyph.type === "ImageRGBA");
      const text = NAMES[view.model.name] ?? (heat ? HEAT : null);
      el.setAttribute("role", "figure");
      if (text != null) {
        el.setAttribute("aria-label", text);
        delete el.dataset.cshGeneric;
      } else if (!el.hasAttribute("aria-label")) {
        el.setAttribute("aria-label", "Chart");
        el.dataset.cshGeneric = "1";
      }
    }
  }
}
name_canvases();
setInterval(name_canvases, 250);
document.addEventListener("keydown", (event) => {
  const el = deep();
  const view = tilegram(el);
  if (view == null) { return; }
  const s = source(view), d = s.data, n = d.unit_id.length;
  if (n === 0) { return; }
  let i = cursor != null && cursor.view === view ? d.unit_id.indexOf(cursor.unit) : -1;
  if (event.key.startsWith("Arrow")) {
    i = i < 0 ? 0 : step(view, i, event.key);
    paint(view, i);
  } else if ((event.key === "Enter" || event.key === " ") && i >= 0) {
    const now = selected(view);
    s.selected.indices = now.includes(i) ? now.filter((k) => k !== i) : [...now, i];  // as a shift-click: the server applies it
  } else if (event.key === "Escape") {
    s.selected.indices = [];
  } else {
    return;
  }
  event.preventDefault();
  event.stopPropagation();
  if (i >= 0) { say(describe(view, i)); label(view, el); }
}, true);
