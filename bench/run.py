"""Measure the figures that decide whether the app feels instant, on the default-size demo city.

    python -m bench.run            # prints one ``BENCH <name> <value> <unit>`` line per figure
                                   # and writes bench/results.json ({"<name>": {"value": v, "unit": u}})

Figures: ``demo_build_s`` (cold build of the default demo, geography load included),
``heat_aggregate_ms`` (warm tract totals of a 7-day lens), ``heat_raster_ms`` (warm datashader
800x600 count of the window's located points), ``tract_join_rows_per_s`` (point-in-tract join) and
``ingest_rows_per_s`` (normalise + tract join of 1,000,000 SODA-shaped all-string rows, made from the
demo's events, as the Socrata adapter and :func:`app.data.ingest.canonical_rows` process a page).
Warm figures are medians of several runs after one untimed call.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import structlog

if TYPE_CHECKING:
    from app.data.registry import SourceSpec

__all__ = ["RESULTS", "Figures", "format_line", "main", "measure", "normalise_soda", "report", "soda_page"]

RESULTS = Path(__file__).with_name("results.json")
#: Figure name -> (value, unit).
Figures = dict[str, tuple[float, str]]
_TOKEN = re.compile(r"^\S+$")
_RUNS = 7
_JOIN_POINTS = 1_000_000
_INGEST_ROWS = 1_000_000


def format_line(name: str, value: float, unit: str) -> str:
    """One result line, ``BENCH <name> <value> <unit>``; names and units are single tokens."""
    if not (_TOKEN.match(name) and _TOKEN.match(unit)):
        raise ValueError(f"name and unit must be single tokens: {name!r} {unit!r}")
    if not np.isfinite(value):
        raise ValueError(f"{name} is not a finite number: {value!r}")
    text = str(value) if isinstance(value, int) else np.format_float_positional(value, precision=6, trim="0")
    return f"BENCH {name} {text} {unit}"


def report(figures: Figures, path: Path = RESULTS) -> list[str]:
    """Print one line per figure and write them all as JSON to ``path``; returns the lines."""
    lines = [format_line(name, value, unit) for name, (value, unit) in figures.items()]
    for line in lines:
        print(line, flush=True)
    path.write_text(json.dumps({name: {"value": value, "unit": unit} for name, (value, unit) in figures.items()}, indent=2) + "\n")
    return lines


def _median_ms(fn: Callable[[], object], runs: int = _RUNS) -> float:
    """Median wall time of ``fn`` in milliseconds, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 2)


def measure(data_dir: Path) -> Figures:
    """Build the default demo into ``data_dir`` and measure every figure on it."""
    # Imported here so the reporting helpers (and their test) load without the numeric stack.
    import datashader as ds
    import shapely

    from app.data.demo import DemoSpec
    from app.data.geography import load_geography, tract_join
    from app.data.store import Store
    from app.engine.lens import Lens
    from app.pipeline import build_demo

    t0 = time.perf_counter()
    snap = build_demo(Store(data_dir), DemoSpec(), force=True)
    build_s = time.perf_counter() - t0
    counts = snap.row_counts()
    n_events = counts["request"] + counts["incident"] + counts["closure"]
    if n_events < 1_000_000:
        raise RuntimeError(f"the default demo has only {n_events} events; the figures assume >= 1,000,000")

    lens = Lens(snapshot=snap, level="tract")  # the default release rule, as users get it
    aggregate_ms = _median_ms(lens.unit_counts)

    points = lens.points().to_pandas()
    geo = load_geography("nyc")
    x0, y0, x1, y1 = (float(v) for v in shapely.total_bounds(geo.tract_geoms))
    canvas = ds.Canvas(plot_width=800, plot_height=600, x_range=(x0, x1), y_range=(y0, y1))
    raster_ms = _median_ms(lambda: canvas.points(points, "lon", "lat", agg=ds.count()))

    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(x0, x1, _JOIN_POINTS), rng.uniform(y0, y1, _JOIN_POINTS)
    tract_join(lon[:1000], lat[:1000], geo)  # builds the tree once, as the app does
    join_ms = _median_ms(lambda: tract_join(lon, lat, geo), runs=3)

    return {
        "demo_build_s": (round(build_s, 2), "s"),
        "heat_aggregate_ms": (aggregate_ms, "ms"),
        "heat_raster_ms": (raster_ms, "ms"),
        "tract_join_rows_per_s": (round(_JOIN_POINTS / (join_ms / 1000)), "rows/s"),
        "ingest_rows_per_s": (ingest_rows_per_s(snap.events("nyc")), "rows/s"),
    }


def ingest_rows_per_s(events: pl.DataFrame, n: int = _INGEST_ROWS) -> int:
    """Rows per second through :func:`normalise_soda` and ``canonical_rows`` on ``n`` SODA rows."""
    from datetime import UTC, datetime

    from app.data.ingest import canonical_rows
    from app.data.registry import get_source

    spec = get_source("nyc311")
    page = soda_page(events, n, spec.timezone)

    def run() -> pl.DataFrame:
        return canonical_rows(spec, normalise_soda(spec, page), datetime.now(UTC))[0]

    rows = run()  # also builds the city's point index once, as the first page of a run does
    located = 1 - rows["tract_id"].null_count() / max(rows.height, 1)
    if rows.height != n or located < 0.9:
        raise RuntimeError(f"ingest benchmark lost rows or locations: {rows.height} rows, {located:.1%} located")
    return round(n / (_median_ms(run, runs=3) / 1000))


def soda_page(events: pl.DataFrame, n: int, timezone: str, seed: int = 0) -> pl.DataFrame:
    """``n`` NYC 311 rows as SODA sends them: every value a string, absent fields null. Times are
    floating local ``2024-05-27T02:08:51.000``; ``location`` is a GeoJSON point (as ``erm2-nwe9``
    now ships), or WKT for 1% of rows that also lack ``latitude``/``longitude``; the demo's
    unlocated events (about 1%) have no coordinates at all."""
    rng = np.random.default_rng(seed)
    sample = events.filter(pl.col("kind") == "request")[rng.integers(0, events.filter(pl.col("kind") == "request").height, n)]
    shape = pl.Series(rng.choice(["geojson", "geojson_only", "wkt_only"], n, p=[0.98, 0.01, 0.01]))
    lon, lat = pl.col("lon").cast(pl.String), pl.col("lat").cast(pl.String)
    located = pl.col("lon").is_not_null()
    local = pl.col("ts").dt.convert_time_zone(timezone)
    return sample.with_columns(shape=shape, i=pl.int_range(pl.len())).select(
        unique_key=(pl.col("i") + 60_000_000).cast(pl.String),
        created_date=local.dt.strftime("%Y-%m-%dT%H:%M:%S.000"),
        closed_date=(local + pl.duration(hours=pl.col("i") % 72)).dt.strftime("%Y-%m-%dT%H:%M:%S.000"),
        complaint_type=pl.col("category"),
        descriptor=pl.lit("See complaint type"),
        agency=pl.lit("NYPD"),
        status=pl.when(pl.col("i") % 5 == 0).then(pl.lit("Open")).otherwise(pl.lit("Closed")),
        incident_zip=(10001 + pl.col("i") % 300).cast(pl.String),
        borough=pl.lit("MANHATTAN"),
        community_board=pl.lit("05 MANHATTAN"),
        longitude=pl.when(located & (pl.col("shape") == "geojson")).then(lon),
        latitude=pl.when(located & (pl.col("shape") == "geojson")).then(lat),
        location=pl.when(located & (pl.col("shape") == "wkt_only"))
        .then(pl.concat_str(pl.lit("POINT ("), lon, pl.lit(" "), lat, pl.lit(")")))
        .when(located)
        .then(pl.concat_str(pl.lit('{"type": "Point", "coordinates": ['), lon, pl.lit(", "), lat, pl.lit("]}"))),
    )


def normalise_soda(spec: SourceSpec, page: pl.DataFrame) -> pl.DataFrame:
    """A SODA page (string columns) -> the canonical ``request`` frame, column-wise: what the
    Socrata adapter's row-wise ``request_frame`` does, with the vectorised helpers of ``normalize``."""
    from app.data.normalize import attrs_json_columns, local_to_utc, points_from_columns

    f = spec.fields

    def col(name: str | None) -> pl.Series:
        return page[name] if name and name in page.columns else pl.Series([None] * page.height, dtype=pl.String)

    lon, lat = points_from_columns(col(f.lon), col(f.lat), col(f.location))
    return pl.DataFrame(
        {
            "source_id": col(f.id).replace("", None),
            "ts": local_to_utc(col(f.time), spec.timezone),
            "category": col(f.category).replace("", None),
            "descriptor": col(f.descriptor).replace("", None),
            "lon": lon,
            "lat": lat,
            "attrs": attrs_json_columns(page, f.attrs),
        }
    ).with_columns(pl.col("lon", "lat").fill_nan(None))


def main() -> None:
    """Run every benchmark in a throw-away data dir and report (the app's info logs are muted)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="csh-bench-") as tmp:
        report(measure(Path(tmp)))


if __name__ == "__main__":
    main()
