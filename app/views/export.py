"""Exports of what the dashboard released: CSVs of the anomaly list and of the window totals per
unit, and a PNG of the view as drawn (:data:`VIEW_PNG_JS`, in the browser).

Both take the lens' already-gated frames and keep a fixed whitelist of columns, so an export can
never carry more than the page and the API publish: engine-internal columns of the anomaly frame
(trailing sums, component scores) stay out, and a withheld count stays an empty cell.
"""

from __future__ import annotations

from datetime import UTC, datetime, time

import polars as pl

from app.views.scripts import script

__all__ = ["ANOMALY_COLUMNS", "UNIT_COLUMNS", "VIEW_PNG_JS", "anomalies_csv", "export_filename", "unit_counts_csv", "view_caption"]

#: Export heading -> lens column of ``lens.anomalies()[0]``: the released fields the API's
#: ``AnomalyOut`` also publishes (the table's columns plus the identifiers a spreadsheet needs).
ANOMALY_COLUMNS = {
    "level": "level",
    "unit_id": "unit_id",
    "name": "name",
    "category": "category",
    "window_start": "bin_start",
    "window_end": "bin_end",
    "observed": "observed",
    "expected": "expected",
    "zscore": "zscore",
    "q": "q",
    "effect": "effect",
    "rolled_up_from": "rolled_up_from",
    "narrative": "narrative",
}

#: Columns of ``lens.unit_counts()`` that are exported (centroids are geometry, not numbers to share).
UNIT_COLUMNS = ("unit_id", "name", "count", "suppressed", "rollup_level", "rollup_unit_id", "rollup_count")

#: Text starting with one of these is read as a formula by spreadsheets (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _iso_utc(column: str) -> pl.Expr:
    """A datetime column as ISO 8601 UTC text with a ``Z``: unambiguous in every spreadsheet locale."""
    return pl.col(column).dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _defused(frame: pl.DataFrame) -> pl.DataFrame:
    """Text cells that a spreadsheet would run as a formula get a leading apostrophe.

    Names and categories come from third-party feeds; a cell such as ``=HYPERLINK(...)`` must
    open as text, not as a live formula, in whoever's spreadsheet the export lands.
    """
    risky = [c for c, dtype in frame.schema.items() if dtype == pl.String]
    return frame.with_columns(
        pl.when(pl.any_horizontal(pl.col(c).str.starts_with(s) for s in _FORMULA_START))
        .then(pl.lit("'") + pl.col(c))
        .otherwise(pl.col(c))
        .alias(c)
        for c in risky
    )


def _csv(frame: pl.DataFrame) -> bytes:
    """UTF-8 CSV with a header row (no byte-order mark: it would become part of the first heading
    for most CSV readers other than Excel); nulls are empty cells."""
    return _defused(frame).write_csv(null_value="").encode("utf-8")


def anomalies_csv(released: pl.DataFrame) -> bytes:
    """The released anomalies as CSV, strongest first, with the :data:`ANOMALY_COLUMNS` only.

    ``released`` is ``lens.anomalies()[0]``; an empty or column-less frame (no window, nothing
    found) gives the header row alone, so a download never fails.
    """
    lens_columns = list(ANOMALY_COLUMNS.values())
    if released.is_empty() or not set(lens_columns).issubset(released.columns):
        schema = dict.fromkeys(ANOMALY_COLUMNS, pl.String)
        return _csv(pl.DataFrame(schema=schema))
    frame = released.select(
        *(_iso_utc(src).alias(out) if src in ("bin_start", "bin_end") else pl.col(src).alias(out) for out, src in ANOMALY_COLUMNS.items())
    )
    # q is published to 4 significant digits; printing the float itself would show binary noise.
    frame = frame.with_columns(pl.col("q").map_elements(lambda v: f"{v:.4g}", return_dtype=pl.String))
    return _csv(frame)


def unit_counts_csv(units: pl.DataFrame) -> bytes:
    """Window totals per unit (``lens.unit_counts()``) as CSV with the :data:`UNIT_COLUMNS` only.

    A withheld unit keeps an empty ``count`` and ``suppressed = true``; its ``rollup_*`` cells say
    which coarser released total covers it.
    """
    if not set(UNIT_COLUMNS).issubset(units.columns):
        return _csv(pl.DataFrame(schema=dict.fromkeys(UNIT_COLUMNS, pl.String)))
    return _csv(units.select(UNIT_COLUMNS))


def _stamp(value: datetime | None) -> str:
    if value is None:
        return "open"
    value = value.astimezone(UTC)
    return f"{value:%Y-%m-%d}" if value.time() == time(0) else f"{value:%Y-%m-%dT%H%M}"


def export_filename(kind: str, city: str, level: str, since: datetime | None, until: datetime | None, ext: str = "csv") -> str:
    """``csh_<kind>_<city>_<level>_<since>_<until>.<ext>`` (``until`` exclusive, UTC), so two
    downloads of different views never overwrite each other in a downloads folder."""
    return f"csh_{kind}_{city}_{level}_{_stamp(since)}_{_stamp(until)}.{ext}"


def view_caption(city: str, level: str, since: datetime | None, until: datetime | None, category: str, privacy: str) -> str:
    """The line printed on a PNG of the view: a picture passed around without its link still says
    what it shows and under which release rule its colours were computed."""
    window = f"{_stamp(since)} to {_stamp(until)} (UTC, end exclusive)"
    return f"City Service Heat · {city} · {level} · {window} · category: {category} · privacy: {privacy}"


#: Browser side of "Download view (PNG)": the heat map and the tilegram as drawn now, side by side
#: under a caption line, saved as one PNG. Client side on purpose: the server never has the
#: rendered pixels (the heat raster is re-shaded on every pan and zoom, the tilegram is drawn by
#: BokehJS), and it needs no headless browser or export dependency on the server. ``button.tags``
#: holds ``[filename, caption]``, kept current by the server as the lens changes. The plots are
#: found among the page's Bokeh views: the tilegram by its figure name, the heat map as the plot
#: drawing an RGBA image (HoloViews gives it no name). ``PlotView.export("png")`` repaints a plot
#: into an off-screen canvas layer (toolbars and other widgets are not part of it).
VIEW_PNG_JS = script("view_png.js")
