// The alerts page's chart canvases are tab stops (Bokeh's): give each a role and a name saying what it
// shows and where the same is done or read by keyboard. Checked four times a second, since Bokeh draws
// the views after the page loads and re-creates them when a pane is shown again.
const NAMES = {
  "csh-alerts-map": "Map of the city: click to place a radius rule's centre or pick an area's unit, or draw a " +
    "polygon with the polygon tool; the form's fields set the same by keyboard",
  "csh-alerts-days": "Bar chart of matches per local day; the table of the daily counts lists them",
};
function name_canvases() {
  for (const view of Bokeh.index.query((v) => v.canvas_view != null && v.canvas_view.events_el != null && v.model != null)) {
    const text = NAMES[view.model.name];
    const el = view.canvas_view.events_el;
    if (text != null && el.getAttribute("aria-label") !== text) {
      el.setAttribute("role", "figure");
      el.setAttribute("aria-label", text);
    }
  }
}
name_canvases();
setInterval(name_canvases, 250);
