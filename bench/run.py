"""Measure the figures that decide whether the app feels instant, on the default-size demo city.

    python -m bench.run            # prints one ``BENCH <name> <value> <unit>`` line per figure
                                   # and writes bench/results.json ({"<name>": {"value": v, "unit": u}})

Figures: ``demo_build_s`` (cold build of the default demo, geography load included),
``heat_aggregate_ms`` (warm tract totals of a 7-day lens), ``heat_raster_ms`` (warm datashader
800x600 count of the window's located points) and ``tract_join_rows_per_s`` (point-in-tract join).
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

import numpy as np
import structlog

__all__ = ["RESULTS", "Figures", "format_line", "main", "measure", "report"]

RESULTS = Path(__file__).with_name("results.json")
#: Figure name -> (value, unit).
Figures = dict[str, tuple[float, str]]
_TOKEN = re.compile(r"^\S+$")
_RUNS = 7
_JOIN_POINTS = 1_000_000


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
    }


def main() -> None:
    """Run every benchmark in a throw-away data dir and report (the app's info logs are muted)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="csh-bench-") as tmp:
        report(measure(Path(tmp)))


if __name__ == "__main__":
    main()
