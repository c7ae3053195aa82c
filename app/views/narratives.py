"""Narratives: the ranked anomalies of the lens as sentences with their driver bars; activating one
selects its unit in the shared selection (the map zooms to it, tiles and sparkbands follow).

Everything shown comes from ``lens.anomalies()``: released numbers only. Bars carry their share as
text, so no information is given by colour or length alone.
"""

from __future__ import annotations

import html
from typing import Any

import panel as pn
import param

from app.views.base import LENS_STATE, LensView

__all__ = ["Narratives", "driver_bars_html"]

_DEPENDS_ON = LENS_STATE
_BAR = "#08519c"


def driver_bars_html(drivers: list[dict[str, Any]] | None) -> str:
    """Horizontal bars of driver shares, each labelled with its category and percentage."""
    if not drivers:
        return ""
    rows = []
    for d in drivers:
        share = max(0.0, min(1.0, float(d["share"])))
        label = html.escape(str(d["category"]))
        rows.append(
            '<div style="display:flex;align-items:center;gap:6px;font-size:12px;margin:1px 0">'
            f'<span style="min-width:11em;max-width:16em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap" title="{label}">{label}</span>'
            f'<span role="img" aria-label="{share:.0%} of the excess" style="display:inline-block;height:9px;width:{share * 120:.0f}px;'
            f'background:{_BAR}"></span><span>{share:.0%}</span></div>'
        )
    return "".join(rows)


class Narratives(LensView):
    """The top anomalies as sentences, strongest first.

    >>> pn.panel(Narratives(lens=Lens(snapshot=store.current())))   # doctest: +SKIP
    """

    top = param.Integer(default=15, bounds=(1, 200), doc="Most anomalies listed.")

    def activate(self, unit_id: str) -> None:
        """Activate one anomaly: select its unit (the shared selection the other views follow)."""
        self._lens.selection = [unit_id]

    def _activator(self, unit_id: str) -> Any:
        def on_click(_event: object) -> None:
            self.activate(unit_id)

        return on_click

    def _cards(self, *_: Any) -> pn.viewable.Viewable:
        found, withheld = self._lens.anomalies()
        if found.height == 0:
            return pn.pane.Markdown(f"No anomaly published in this window ({withheld} withheld by the privacy rule).")
        cards = []
        for row in found.head(self.top).iter_rows(named=True):
            button = pn.widgets.Button(label=f"Show {row['name']}", width=200, margin=(2, 5))
            button.on_click(self._activator(str(row["unit_id"])))
            when = row["bin_start"].strftime("%a %d %b %Y" if row["time_bin"] != "hour" else "%a %d %b %H:%M")
            text = pn.pane.HTML(
                f'<div style="font-size:13px"><b>{html.escape(str(row["name"]))}</b> · {when} UTC · z = {row["zscore"]:.1f} · '
                f"{html.escape(str(row['effect']))}<br>{html.escape(str(row['narrative']))}</div>{driver_bars_html(row['drivers'])}",
                sizing_mode="stretch_width",
            )
            cards.append(pn.Column(text, button, styles={"border-bottom": "1px solid #ddd"}, sizing_mode="stretch_width"))
        more = found.height - len(cards)
        footer = pn.pane.Markdown(f"{more} more in the table." if more > 0 else "", styles={"font-size": "12px"})
        return pn.Column(*cards, footer, sizing_mode="stretch_width")

    def __panel__(self) -> pn.viewable.Viewable:
        p = self._lens.param
        return pn.Column(pn.bind(self._cards, *[p[name] for name in _DEPENDS_ON]), sizing_mode="stretch_width")
