"""Narratives: the ranked anomalies of the lens as sentences with their driver bars; activating one
selects its unit in the shared selection (the map zooms to it, tiles and sparkbands follow).

Everything shown comes from ``lens.anomalies()``: released numbers only. Bars carry their share as
text, so no information is given by colour or length alone.
"""

from __future__ import annotations

import html
from typing import Any
from zoneinfo import ZoneInfo

import panel as pn
import param

from app.views.base import LENS_STATE, LensView

__all__ = ["Narratives", "driver_bars_html"]

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
        self.bound.selection = [unit_id]

    def __panel__(self) -> pn.viewable.Viewable:
        return NarrativeCards(self).panel


class NarrativeCards:
    """One rendering of :class:`Narratives`: a pool of cards built once and patched on each change
    (text, button label, visibility), because building fifteen cards of new widgets per change
    cost more than computing the anomalies they show."""

    def __init__(self, view: Narratives) -> None:
        self.view = view
        self.units: list[str] = []  # unit of each shown card, read when its button is pressed
        self.texts: list[pn.pane.HTML] = []
        self.buttons: list[pn.widgets.Button] = []
        self.cards: list[pn.Column] = []
        self.empty = pn.pane.Markdown("", visible=False)
        self.footer = pn.pane.Markdown("", styles={"font-size": "12px"})
        self.panel = pn.Column(self.empty, sizing_mode="stretch_width")
        self._grow(view.top)
        view.bound.param.watch(self.update, list(LENS_STATE))
        view.param.watch(self.update, ["top"])
        self.update()

    def _grow(self, size: int) -> None:
        """At least ``size`` cards in the pool (hidden until used); the footer stays last."""
        new = []
        for i in range(len(self.cards), size):
            text = pn.pane.HTML("", sizing_mode="stretch_width")
            button = pn.widgets.Button(label="Show", width=200, margin=(2, 5))
            button.on_click(self._activator(i))
            card = pn.Column(text, button, visible=False, styles={"border-bottom": "1px solid #ddd"}, sizing_mode="stretch_width")
            self.texts.append(text)
            self.buttons.append(button)
            self.cards.append(card)
            new.append(card)
        if new:
            self.panel[:] = [self.empty, *self.cards, self.footer]

    def _activator(self, index: int) -> Any:
        def on_click(_event: object) -> None:
            if index < len(self.units):
                self.view.activate(self.units[index])

        return on_click

    def shown(self) -> list[pn.Column]:
        """The cards on view, strongest anomaly first."""
        return [card for card in self.cards if card.visible]

    def update(self, *_: Any) -> None:
        """Fill the first cards with the lens' strongest anomalies and hide the rest."""
        found, withheld = self.view.bound.anomalies()
        top = self.view.top
        self._grow(top)
        rows = list(found.head(top).iter_rows(named=True)) if found.height else []
        self.units = [str(row["unit_id"]) for row in rows]
        zone = ZoneInfo(self.view.bound.tz)
        for i, row in enumerate(rows):
            local = row["bin_start"].astimezone(zone)  # the city's day, as its residents count it
            when = local.strftime("%a %d %b %Y %Z" if row["time_bin"] != "hour" else "%a %d %b %H:%M %Z")
            self.texts[i].object = (
                f'<div style="font-size:13px"><b>{html.escape(str(row["name"]))}</b> · {when} · z = {row["zscore"]:.1f} · '
                f"{html.escape(str(row['effect']))}<br>{html.escape(str(row['narrative']))}</div>{driver_bars_html(row['drivers'])}"
            )
            self.buttons[i].label = f"Show {row['name']}"
        for i, card in enumerate(self.cards):
            card.visible = i < len(rows)
        self.empty.object = "" if rows else f"No anomaly published in this window ({withheld} withheld by the privacy rule)."
        self.empty.visible = not rows
        more = found.height - len(rows)
        self.footer.object = f"{more} more in the table." if more > 0 else ""
