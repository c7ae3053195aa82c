const key = "_tilegram_raf_" + tiles.id;
if (window[key] != null) { cancelAnimationFrame(window[key]); window[key] = null; }
const sources = [ghost, tiles];
function paint(t) {
  for (const s of sources) {
    const d = s.data;
    const n = d.x == null ? 0 : d.x.length;
    for (let i = 0; i < n; i++) {
      d.x[i] = d.x0[i] + (d.x1[i] - d.x0[i]) * t;
      d.y[i] = d.y0[i] + (d.y1[i] - d.y0[i]) * t;
      const span = Math.max(d.f1[i] - d.f0[i], 1e-6);
      const u = Math.min(1, Math.max(0, (t - d.f0[i]) / span));
      d.alpha[i] = d.a0[i] + (d.a1[i] - d.a0[i]) * u;
    }
    s.change.emit();
  }
}
function moving() {
  for (const s of sources) {
    const d = s.data;
    const n = d.x == null ? 0 : d.x.length;
    for (let i = 0; i < n; i++) {
      if (d.x0[i] !== d.x1[i] || d.y0[i] !== d.y1[i] || d.a0[i] !== d.a1[i]) { return true; }
    }
  }
  return false;
}
const reduced = window.matchMedia != null && window.matchMedia("(prefers-reduced-motion: reduce)").matches;
if (reduced || !moving()) { paint(1); return; }
paint(0);  // before the browser paints the new data at its end state
const start = performance.now();
const run = window.__cshMorph = {start: start, last: start, end: null, frames: 0};  // timing, read by tests
function step(now) {
  const p = Math.min(1, (now - start) / duration);
  const t = p < 0.5 ? 4 * p * p * p : 1 - Math.pow(-2 * p + 2, 3) / 2;  // ease in and out
  paint(t);
  run.frames += 1;
  if (p < 1) { run.last = now; window[key] = requestAnimationFrame(step); } else { run.end = now; window[key] = null; }
}
window[key] = requestAnimationFrame(step);
