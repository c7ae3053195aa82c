"""Plain HTML tables: the anomaly table and the data-table twin of every chart.

A canvas says nothing to a screen reader, and colour or bar length alone says nothing to some
readers (WCAG 1.1.1, 1.4.1): each chart therefore has a table of the same released numbers. They
are semantic ``<table>`` elements (caption, scoped column headers, right-aligned numbers) inside a
scrolling region that takes keyboard focus, rather than a JavaScript grid, because the grid widget
at hand breaks ARIA grid rules and renders slower than the table does. The chart twins render only
while their card is open, so a closed card costs nothing on a control change.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from typing import Any

import panel as pn
import polars as pl

from app.data.cities import level_name
from app.views.base import LENS_STATE, LensView, level_words
from app.views.sparkbands import pick_units  # the same units the sparkbands draw
from app.views.tilegram import unit_scores  # the tilegram's own rule for a tile's colour

__all__ = ["TABLE_CSS", "BandTable", "HeatTable", "TileTable", "html_table", "table_card", "withheld_text"]

#: Styling of every table (kept as one constant so the bench counts it as our own CSS).
TABLE_CSS = """
.csh-scroll { max-height: 420px; overflow: auto; border: 1px solid #ccc; }
.csh-scroll:focus-visible { outline: 3px solid #1a56db; outline-offset: 2px; }
.csh-table { border-collapse: collapse; width: 100%; font-size: 13px; color: #1a1a1a; }
.csh-table caption { text-align: left; font-size: 12px; color: #444; padding: 4px 6px; caption-side: top; }
.csh-table th, .csh-table td { border-bottom: 1px solid #ddd; padding: 3px 6px; vertical-align: top; text-align: left; }
.csh-table thead th { position: sticky; top: 0; background: #f3f3f3; }
.csh-table .num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.csh-table .more td { color: #444; font-style: italic; }
.csh-anomalies td:last-child { min-width: 24em; }
"""

#: A value's text in a cell: numbers with the column's format, null as the column's null text.
Format = Callable[[Any], str]


def withheld_text(value: Any) -> str:
    """A missing released number, said in words (never a blank that could be read as zero)."""
    return "withheld" if value is None else str(value)


def _cell(value: Any, fmt: Format | None) -> str:
    if fmt is not None:
        return html.escape(fmt(value))
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.1f}"
    return html.escape(str(value))


def html_table(
    frame: pl.DataFrame,
    caption: str,
    *,
    css_class: str,
    numeric: Sequence[str] = (),
    formats: dict[str, Format] | None = None,
    headings: dict[str, str] | None = None,
    max_rows: int = 200,
    more: str = "{n} more rows are in the CSV export.",
) -> str:
    """``frame`` as an accessible HTML table (escaped text; at most ``max_rows`` rows, then a
    row saying how many more there are). ``numeric`` columns are right-aligned, ``formats`` turn a
    column's values into text, ``headings`` rename columns."""
    formats, headings = formats or {}, headings or {}
    columns = frame.columns
    head = "".join(f'<th scope="col"{" class=num" if c in numeric else ""}>{html.escape(headings.get(c, c))}</th>' for c in columns)
    rows = []
    for record in frame.head(max_rows).iter_rows():
        cells = "".join(
            f"<td{' class=num' if c in numeric else ''}>{_cell(v, formats.get(c))}</td>" for c, v in zip(columns, record, strict=True)
        )
        rows.append(f"<tr>{cells}</tr>")
    if frame.height > max_rows:
        rows.append(f'<tr class="more"><td colspan="{len(columns)}">{html.escape(more.format(n=frame.height - max_rows))}</td></tr>')
    if not rows:
        rows.append(f'<tr class="more"><td colspan="{len(columns)}">No rows.</td></tr>')
    label = html.escape(caption)
    return (
        f'<div class="csh-scroll" role="region" tabindex="0" aria-label="{label}">'
        f'<table class="csh-table {css_class}"><caption>{label}</caption><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def table_card(title: str, render: Callable[[], str]) -> tuple[pn.layout.Card, Callable[..., None]]:
    """A closed card holding a chart's table, and its ``refresh``: ``render`` runs when the card
    opens and at each ``refresh`` while it is open (a closed card renders nothing)."""
    card = pn.layout.Card(title=title, collapsed=True, sizing_mode="stretch_width", margin=(4, 10))
    pane = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=[TABLE_CSS])
    card.append(pane)

    def refresh(*_: Any) -> None:
        if not card.collapsed:
            pane.object = render()

    card.param.watch(refresh, "collapsed")
    return card, refresh


class _ChartTable(LensView):
    """A chart's table in a closed card that re-renders with the lens while open."""

    title = "Table"

    def render(self) -> str:
        raise NotImplementedError

    def __panel__(self) -> pn.viewable.Viewable:
        card, refresh = table_card(self.title, self.render)
        self.bound.param.watch(refresh, list(LENS_STATE))
        return card


class HeatTable(_ChartTable):
    """The heat map as a table: released window totals per unit, busiest first."""

    title = "Table of the heat map: events per unit"

    def render(self) -> str:
        lens = self.bound
        if lens.snapshot is None:
            return ""
        counts = lens.unit_counts()
        parents = lens.snapshot.units(lens.city).select(pl.col("unit_id").alias("rollup_unit_id"), pl.col("name").alias("parent"))
        levels = {key: level_name(lens.city, key) for key in lens.param.level.objects}
        frame = (
            counts.join(parents, on="rollup_unit_id", how="left")
            .sort(["count", "name"], descending=[True, False], nulls_last=True)
            .select(
                "name",
                "count",
                pl.when(pl.col("rollup_count").is_not_null())
                .then(pl.format("{} ({}): {}", "parent", pl.col("rollup_level").replace_strict(levels, default=None), "rollup_count"))
                .alias("rollup"),
            )
        )
        since, until = lens.window()
        span = f"{since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC" if since and until else "the window"
        return html_table(
            frame,
            f"Released events per {level_words(lens)}, {span}; a withheld count shows its parent's total",
            css_class="csh-heat-table",
            numeric=["count"],
            formats={"count": withheld_text, "rollup": lambda v: "" if v is None else str(v)},
            headings={"name": level_words(lens), "count": "events", "rollup": "withheld: parent total"},
            more="{n} more units are in the unit-counts CSV export.",
        )


class TileTable(_ChartTable):
    """The tilegram as a table: each unit's strongest released anomaly z, strongest first."""

    title = "Table of the tilegram: strongest anomaly per unit"

    def render(self) -> str:
        lens = self.bound
        if lens.snapshot is None:
            return ""
        units = lens.snapshot.units(lens.city, lens.level).select("unit_id", "name")
        scores = unit_scores(lens.anomalies(everywhere=True)[0], lens.level)  # as the tilegram colours them
        chosen = set(lens.selection)
        frame = (
            units.join(scores, on="unit_id", how="left")
            .sort(["zscore", "name"], descending=[True, False], nulls_last=True)
            .select("name", "zscore", pl.col("unit_id").is_in(list(chosen)).alias("selected"))
        )
        return html_table(
            frame,
            f"Tiles at {level_words(lens)} level: the strongest released anomaly z of each (none: no anomaly released)",
            css_class="csh-tile-table",
            numeric=["zscore"],
            formats={
                "zscore": lambda v: "none released" if v is None else f"{v:.1f}",
                "selected": lambda v: "selected" if v else "",
            },
            headings={"name": level_words(lens), "zscore": "strongest z", "selected": "selection"},
            max_rows=300,
            more="{n} more tiles have no released anomaly.",
        )


class BandTable(_ChartTable):
    """The sparkbands as a table: per drawn unit, released and expected totals and the anomalous bins."""

    title = "Table of the sparkbands: observed against expected"
    top = 12

    def render(self) -> str:
        lens = self.bound
        bands = lens.bands()
        if bands.is_empty():
            return html_table(pl.DataFrame({"unit": []}), "No series in this window", css_class="csh-band-table")
        units = pick_units(bands, self.top)
        assert lens.snapshot is not None
        names = lens.snapshot.units(lens.city, lens.level).select("unit_id", "name")
        stamp = "%Y-%m-%d" if lens.time_bin != "hour" else "%Y-%m-%d %H:%M"
        frame = (
            bands.filter(pl.col("unit_id").is_in(units))
            .group_by("unit_id")
            .agg(
                observed=pl.when(pl.col("count").is_null().any()).then(None).otherwise(pl.col("count").sum()),
                expected=pl.col("expected").sum(),
                bins=pl.len(),
                anomalous=pl.col("bin_start").filter(pl.col("anomalous")).dt.strftime(stamp).sort().str.join(", "),
            )
            .join(names, on="unit_id", how="left")
            .with_columns(order=pl.col("unit_id").replace_strict(units, list(range(len(units))), default=len(units)))
            .sort("order")
            .select("name", "observed", "expected", "bins", "anomalous")
        )
        return html_table(
            frame,
            f"Released counts against the baseline per {level_words(lens)} ({lens.time_bin} bins)",
            css_class="csh-band-table",
            numeric=["observed", "expected", "bins"],
            formats={"observed": withheld_text, "anomalous": lambda v: v or "none"},
            headings={
                "name": level_words(lens),
                "observed": "observed total",
                "expected": "expected total",
                "anomalous": "bins with an anomaly",
            },
        )
