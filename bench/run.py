"""Measure the figures that decide whether the app feels instant, and whether its anomalies are
worth reading, on the default-size demo city.

    python -m bench.run            # prints one ``BENCH <name> <value> <unit>`` line per figure
                                   # and writes bench/results.json ({"<name>": {"value": v, "unit": u}})

Figures: ``demo_build_s`` (cold build of the default demo, geography load included),
``heat_aggregate_ms`` (warm tract totals of a 7-day lens), ``heat_raster_ms`` (warm datashader
800x600 count of the window's located points), ``tract_join_rows_per_s`` (point-in-tract join) and
``ingest_rows_per_s`` (1,000,000 SODA rows, made from the demo's events and shaped as ``json.loads`` of
a SODA page gives them, through the product's path: ``SocrataAdapter.normalize`` then
:func:`app.data.ingest.canonical_rows`, the tract join included).
``heat_reaggregate_ms`` (one pan/zoom of the heat map server side: rasterize + shade of the window's
points for a zoomed 800x600 view). Warm figures are medians of several runs after one untimed call.

Detection quality against the demo's planted anomalies (``planted_anomalies.csv``, scored by
:func:`app.engine.evaluate.evaluate`): ``planted_precision``, ``planted_recall`` and ``planted_f1``
of the published scores at the default listing thresholds before the release rule (the same demo
published with privacy ``none``, :func:`~app.engine.evaluate.engine_detections`);
``planted_precision_published`` and ``planted_recall_published`` of what the default ``suppress``
rule lets through (a planted anomaly whose every cell would reveal a small count stays hidden);
``planted_f1_rolling_z`` of the plain 28-day rolling z detector on the same released cells
(:func:`~app.engine.evaluate.rolling_z_detections`) and ``planted_f1_ratio`` (engine F1 / rolling F1).

Release figures (:func:`release_figures`, issue 10): ``released_share_<level>`` (and ``_by_category``),
``new_window_ms``, ``api_p95_ms_c32``/``api_p99_ms_c32``, ``rss_mb_after_first_window`` and
``rss_mb_after_windows`` (:mod:`bench.serving`), the real-data figures (``real_planted_*``,
``window_invariance``: :mod:`bench.real_planted`) and ``attack_cells_recovered`` (:mod:`bench.attack`
against a small demo served by the real server).

Publish cost: ``publish_s`` (a refresh's publish of the demo city on the working database:
:func:`app.pipeline.recompute_anomalies` reads the events, builds the release of every level at its
grain, audits the suppression, fills and scores every cell and stores both tables; median of 3 runs
after one warm-up).

Alerts (issue 11): ``alert_match_s`` (:mod:`bench.alerts`: 10,000 rules of every event kind against
100,000 new events, median of 5) and ``alert_e2e_p95_ms`` (:mod:`bench.alerts_e2e`: a snapshot
published -> its webhooks received by a local verifying receiver, 95th percentile of 25 rounds).
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
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import structlog

if TYPE_CHECKING:
    from app.config import Settings
    from app.data.snapshot import Snapshot
    from app.data.store import Store
    from app.engine.evaluate import Evaluation
    from app.engine.lens import Lens

__all__ = [
    "RESULTS",
    "Figures",
    "format_line",
    "ingest_rows_per_s",
    "main",
    "measure",
    "planted_figures",
    "recompute_seconds",
    "report",
    "soda_rows",
]

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

    from app.config import Settings
    from app.data.demo import DemoSpec
    from app.data.geography import load_geography, tract_join
    from app.data.store import Store
    from app.engine.lens import Lens
    from app.pipeline import PLANTED_FILE, build_demo

    t0 = time.perf_counter()
    store = Store(data_dir)
    snap = build_demo(store, DemoSpec(), force=True)
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

    reaggregate_ms = heat_reaggregate_ms(lens)

    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(x0, x1, _JOIN_POINTS), rng.uniform(y0, y1, _JOIN_POINTS)
    tract_join(lon[:1000], lat[:1000], geo)  # builds the tree once, as the app does
    join_ms = _median_ms(lambda: tract_join(lon, lat, geo), runs=3)

    open_dir = data_dir / "open"  # the same demo published without a privacy rule: the detector itself
    open_snap = build_demo(Store(open_dir), DemoSpec(), force=True, settings=Settings(data_dir=open_dir, privacy_mode="none"))

    return {
        "demo_build_s": (round(build_s, 2), "s"),
        "heat_aggregate_ms": (aggregate_ms, "ms"),
        "heat_raster_ms": (raster_ms, "ms"),
        "heat_reaggregate_ms": (reaggregate_ms, "ms"),
        "tract_join_rows_per_s": (round(_JOIN_POINTS / (join_ms / 1000)), "rows/s"),
        "ingest_rows_per_s": (ingest_rows_per_s(snap.events("nyc")), "rows/s"),
        **planted_quality(snap, open_snap, data_dir / PLANTED_FILE),
        "publish_s": (round(recompute_seconds(store), 2), "s"),
    }


def heat_reaggregate_ms(lens: Lens) -> float:
    """Median server time of one pan/zoom of the heat map: the dashboard's own HoloViews
    ``rasterize`` + ``shade`` of the lens points (Web Mercator) re-run for a zoomed 800x600 view
    (a quarter of the city's extent, centred), i.e. what a RangeXY event triggers."""
    from holoviews.operation.datashader import rasterize, shade

    from app.views.heat import points_element

    points = points_element(lens)
    xs, ys = points.dimension_values("x"), points.dimension_values("y")
    cx, cy, wx, wy = float(np.median(xs)), float(np.median(ys)), float(np.ptp(xs)) / 4, float(np.ptp(ys)) / 4
    x_range, y_range = (cx - wx, cx + wx), (cy - wy, cy + wy)
    return _median_ms(
        lambda: shade(
            rasterize(points, dynamic=False, x_range=x_range, y_range=y_range, width=800, height=600), cmap="fire", cnorm="eq_hist"
        )
    )


def planted_quality(snap: Snapshot, open_snap: Snapshot, truth_path: Path, city: str = "nyc") -> Figures:
    """Precision, recall and F1 of the detector (default listing thresholds on ``open_snap``, the
    city published with privacy ``none``) and of the rolling z reference on the same cells against
    the planted ground truth (see :func:`planted_figures`), plus precision and recall of what the
    default release rule publishes (``snap``)."""
    from app.data.geography import tract_parents
    from app.engine.evaluate import engine_detections, evaluate, rolling_z_detections

    truth = pl.read_csv(truth_path, try_parse_dates=True)
    parents = tract_parents(snap.units(city))
    engine = evaluate(engine_detections(open_snap, city), truth, parents)
    published = evaluate(engine_detections(snap, city), truth, parents)
    rolling = evaluate(rolling_z_detections(open_snap, city), truth, parents)
    return {
        **planted_figures(engine, rolling),
        "planted_precision_published": (round(published.precision, 4), "ratio"),
        "planted_recall_published": (round(published.recall, 4), "ratio"),
    }


def planted_figures(engine: Evaluation, rolling: Evaluation) -> Figures:
    """The planted-anomaly figures of two evaluations; the ratio is undefined (an error, not a
    figure) when the reference found nothing, so a broken reference cannot print a flattering inf."""
    if rolling.f1 <= 0:
        raise ValueError(f"the rolling z reference has F1 {rolling.f1}: no ratio to report ({rolling})")
    return {
        "planted_precision": (round(engine.precision, 4), "ratio"),
        "planted_recall": (round(engine.recall, 4), "ratio"),
        "planted_f1": (round(engine.f1, 4), "ratio"),
        "planted_f1_rolling_z": (round(rolling.f1, 4), "ratio"),
        "planted_f1_ratio": (round(engine.f1 / rolling.f1, 3), "x"),
    }


def recompute_seconds(store: Store, city: str = "nyc", runs: int = 3, settings: Settings | None = None) -> float:
    """Median wall time in seconds, over ``runs`` after one warm-up, of the publish a refresh runs
    on the working database (:func:`app.pipeline.recompute_anomalies` under ``settings``, default
    the process': read the events, release every level at its grain, audit, fill and score every
    cell, replace the stored tables)."""
    from app.pipeline import recompute_anomalies

    with store.writer() as con:
        recompute_anomalies(con, city, settings)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            recompute_anomalies(con, city, settings)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ingest_rows_per_s(events: pl.DataFrame, n: int = _INGEST_ROWS) -> int:
    """Rows per second through ``SocrataAdapter.normalize`` and ``canonical_rows`` on ``n`` SODA rows
    (the row dicts are made before the clock starts, as the HTTP client hands them over)."""
    from datetime import UTC, datetime

    from app.data.ingest import canonical_rows
    from app.data.registry import get_source
    from app.data.sources.socrata import SocrataAdapter

    spec = get_source("nyc311")
    adapter = SocrataAdapter(spec)
    rows = soda_rows(events, n, spec.timezone)

    def run() -> pl.DataFrame:
        return canonical_rows(spec, adapter.normalize(rows), datetime.now(UTC))[0]

    out = run()  # also builds the city's point index once, as the first page of a run does
    located = 1 - out["tract_id"].null_count() / max(out.height, 1)
    if out.height != n or located < 0.9:
        raise RuntimeError(f"ingest benchmark lost rows or locations: {out.height} rows, {located:.1%} located")
    return round(n / (_median_ms(run, runs=3) / 1000))


def soda_rows(events: pl.DataFrame, n: int, timezone: str, seed: int = 0, page_size: int = 50_000) -> list[dict[str, Any]]:
    """``n`` NYC 311 rows as ``json.loads`` of SODA pages gives them (``erm2-nwe9``, pages of
    ``page_size``): every value a string, times floating local ``2024-05-27T02:08:51.000``, absent
    fields left out (open requests have no ``closed_date``, a seventh no ``descriptor``, one in fifty
    no ``incident_zip``). ``location`` is a GeoJSON point object; 1% of rows have only that and 1%
    only a WKT ``location`` text (no ``latitude``/``longitude`` either way); the demo's unlocated
    events (about 1%) have no point at all."""
    rng = np.random.default_rng(seed)
    requests = events.filter(pl.col("kind") == "request")
    sample = requests[rng.integers(0, requests.height, n)]
    shape = pl.Series(rng.choice(["both", "geojson_only", "wkt_only"], n, p=[0.98, 0.01, 0.01]))
    lon, lat = pl.col("lon").cast(pl.String), pl.col("lat").cast(pl.String)
    located = pl.col("lon").is_not_null()
    local = pl.col("ts").dt.convert_time_zone(timezone)
    i = pl.col("i")
    page = sample.with_columns(shape=shape, i=pl.int_range(pl.len())).select(
        unique_key=(i + 60_000_000).cast(pl.String),
        created_date=local.dt.strftime("%Y-%m-%dT%H:%M:%S.000"),
        closed_date=pl.when(i % 5 != 0).then((local + pl.duration(hours=i % 72)).dt.strftime("%Y-%m-%dT%H:%M:%S.000")),
        agency=pl.lit("NYPD"),
        complaint_type=pl.col("category"),
        descriptor=pl.when(i % 7 != 0).then(pl.lit("See complaint type")),
        incident_zip=pl.when(i % 50 != 0).then((10001 + i % 300).cast(pl.String)),
        status=pl.when(i % 5 == 0).then(pl.lit("Open")).otherwise(pl.lit("Closed")),
        community_board=pl.lit("05 MANHATTAN"),
        borough=pl.lit("MANHATTAN"),
        latitude=pl.when(located & (pl.col("shape") == "both")).then(lat),
        longitude=pl.when(located & (pl.col("shape") == "both")).then(lon),
        location=pl.when(located & (pl.col("shape") == "wkt_only"))
        .then(pl.concat_str(pl.lit('"POINT ('), lon, pl.lit(" "), lat, pl.lit(')"')))
        .when(located)
        .then(pl.concat_str(pl.lit('{"type": "Point", "coordinates": ['), lon, pl.lit(", "), lat, pl.lit("]}"))),
    )
    # The page as SODA sends it (nulls left out, location raw JSON), then parsed as the client does.
    strings = [c for c in page.columns if c != "location"]
    members = [pl.when(pl.col(c).is_not_null()).then(pl.struct(c).struct.json_encode().str.slice(1).str.head(-1)) for c in strings]
    location = pl.when(pl.col("location").is_not_null()).then(pl.concat_str(pl.lit('"location": '), pl.col("location")))
    objects = page.select(pl.concat_str(pl.lit("{"), pl.concat_str([*members, location], separator=", ", ignore_nulls=True), pl.lit("}")))
    text = objects.to_series().to_list()
    rows: list[dict[str, Any]] = []
    for start in range(0, n, page_size):
        rows.extend(json.loads("[" + ",\n".join(text[start : start + page_size]) + "]"))
    return rows


def main() -> None:
    """Run every benchmark in a throw-away data dir and report (the app's info logs are muted)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="csh-bench-") as tmp:
        figures = measure(Path(tmp))
        from bench.browser import browser_figures  # Playwright only where the browser figures run

        figures.update(browser_figures(Path(tmp)))
        figures.update(release_figures(Path(tmp)))
        from bench.alerts import alert_figures
        from bench.alerts_e2e import alert_e2e_figures

        figures.update(alert_figures())
        figures.update(alert_e2e_figures())
        report(figures)


def release_figures(data_dir: Path) -> Figures:
    """What the release keeps and costs on the default demo in ``data_dir``, the real-data detection
    figures, and what the HTTP attacker recovers from a small demo city (issue 10's figures)."""
    from datetime import UTC, datetime

    from app.config import Settings
    from app.data.demo import DemoSpec
    from app.data.store import Store
    from app.pipeline import build_demo
    from bench.attack import run_attack
    from bench.real_planted import real_data_figures
    from bench.serve import served
    from bench.serving import api_figures, new_window_ms, released_shares

    snap = Store(data_dir).current()
    assert snap is not None
    out: Figures = {**released_shares(snap), "new_window_ms": (new_window_ms(snap), "ms"), **api_figures(data_dir, snap)}
    out.update(real_data_figures())
    small = data_dir / "attack"
    spec = DemoSpec(seed=7, end=datetime(2026, 11, 1, tzinfo=UTC), days=35, size=20_000)
    small_snap = build_demo(
        Store(small), spec, settings=Settings(data_dir=small, grains="tract=week,neighborhood=day,borough=hour,city=hour")
    )
    with served(small) as url:
        attack = run_attack(url, small_snap)
    out["attack_cells_recovered"] = (float(attack["cells_recovered"]), "cells")
    return out


if __name__ == "__main__":
    main()
