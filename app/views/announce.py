"""The live region's sentence: what changed, said once, for screen-reader users ("42 anomalies in
Brooklyn, 3 new"). Pure, so the wording is tested without a browser."""

from __future__ import annotations

import html
from typing import Any

import panel as pn
import polars as pl

from app.data.cities import city_name
from app.engine.lens import Lens
from app.views.base import LENS_STATE, LensView

__all__ = ["LiveRegion", "announcement", "anomaly_keys"]


def anomaly_keys(found: pl.DataFrame) -> frozenset[tuple[str, str, str, str]]:
    """Identity of each listed anomaly (level, unit, category, bin)."""
    if found.height == 0:
        return frozenset()
    rows = found.select("level", "unit_id", "category", pl.col("bin_start").cast(pl.String)).iter_rows()
    return frozenset((str(a), str(b), str(c), str(d)) for a, b, c, d in rows)


def announcement(found: pl.DataFrame, withheld: int, where: str, before: frozenset[tuple[str, str, str, str]] | None) -> str:
    """E.g. "42 anomalies in Brooklyn, 3 new; 5 cells withheld by the privacy rule." (``withheld``:
    the window's cells the rule withheld, which are not scored). ``before`` is the previous list's
    keys (None on first render: nothing is "new" yet)."""
    now = anomaly_keys(found)
    n = len(now)
    noun = "anomaly" if n == 1 else "anomalies"
    text = f"{n} {noun} in {where}"
    if before is not None:
        text += f", {len(now - before)} new"
    if withheld:
        text += f"; {withheld} {'cell' if withheld == 1 else 'cells'} withheld by the privacy rule"
    return text + "."


class LiveRegion(LensView):
    """A polite ARIA live region that says what the anomaly list became after each change."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._before: frozenset[tuple[str, str, str, str]] | None = None

    def sentence(self, *_: Any) -> str:
        """The announcement for the lens' current state (and remember it as "before")."""
        lens = self.bound
        if lens.snapshot is None:
            return "No data published yet."
        found, withheld = lens.anomalies()
        where = _where(lens)
        text = announcement(found, withheld, where, self._before)
        self._before = anomaly_keys(found)
        return text

    def _html(self, *args: Any) -> str:
        return f'<div role="status" aria-live="polite" style="font-size:13px">{html.escape(self.sentence(*args))}</div>'

    def __panel__(self) -> pn.viewable.Viewable:
        p = self.bound.param
        return pn.pane.HTML(pn.bind(self._html, *[p[name] for name in LENS_STATE]), sizing_mode="stretch_width", margin=(0, 10))


def _where(lens: Lens) -> str:
    """The selected units' names, or the city's."""
    assert lens.snapshot is not None
    units = lens.snapshot.units(lens.city)
    if lens.selection:
        names = units.filter(pl.col("unit_id").is_in(lens.selection))["name"].to_list()
        return ", ".join(sorted(names)[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return city_name(lens.city)
