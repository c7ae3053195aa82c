"""The benchmark's reporting: one ``BENCH <name> <value> <unit>`` line per figure and a JSON file
of the same figures (the real measurements run with ``python -m bench.run``, not here)."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pytest

from app.data.geography import tract_parents
from app.data.registry import get_source
from app.data.snapshot import Snapshot
from app.data.sources import adapter_for
from app.data.sources.socrata import SocrataAdapter
from app.engine.baselines import BASELINE, BIN_LENGTH, fit_baseline
from app.engine.bins import cube_counts, filter_events
from app.engine.detect import level_cells
from app.engine.evaluate import Evaluation
from app.engine.scores import score_cells
from bench.pandas_reference import extrapolated_seconds, lookups, pandas_score_cells, sample_series, to_pandas_cells
from bench.run import format_line, ingest_rows_per_s, planted_figures, report, soda_rows

FAKE = {"demo_build_s": (12.5, "s"), "heat_aggregate_ms": (3.25, "ms"), "tract_join_rows_per_s": (812345, "rows/s"), "zero_ms": (0.0, "ms")}
LINE = re.compile(r"^BENCH (\S+) (-?\d+(?:\.\d+)?) (\S+)$")


def test_report_prints_one_parseable_line_per_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = report(FAKE, tmp_path / "results.json")
    printed = capsys.readouterr().out.splitlines()
    assert printed == lines
    parsed = [LINE.match(line) for line in printed]
    assert all(parsed), printed
    assert [(m.group(1), float(m.group(2)), m.group(3)) for m in parsed if m] == [(k, float(v), u) for k, (v, u) in FAKE.items()]


def test_report_writes_the_same_figures_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.json"
    path.write_text('{"stale": {"value": 1, "unit": "s"}}')
    report(FAKE, path)
    capsys.readouterr()
    data = json.loads(path.read_text())
    assert data == {name: {"value": value, "unit": unit} for name, (value, unit) in FAKE.items()}
    assert all(isinstance(v["value"], int | float) and isinstance(v["unit"], str) for v in data.values())


@pytest.mark.parametrize(("name", "unit"), [("two words", "s"), ("x", "per second"), ("", "s"), ("x", "")])
def test_names_and_units_must_be_single_tokens(name: str, unit: str) -> None:
    with pytest.raises(ValueError, match="single tokens"):
        format_line(name, 1.0, unit)


@pytest.mark.parametrize(
    ("value", "text"), [(1.5, "1.5"), (812345, "812345"), (0.0, "0.0"), (12.0, "12.0"), (1e-05, "0.00001"), (2.5e7, "25000000.0")]
)
def test_values_print_in_plain_decimal(value: float, text: str) -> None:
    assert format_line("x", value, "u") == f"BENCH x {text} u"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_values_are_refused(value: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        format_line("x", value, "u")


# ---- the ingest benchmark's workload -------------------------------------------------------------


def test_soda_rows_are_shaped_as_a_soda_page(tiny_snap: Snapshot) -> None:
    """What ``json.loads`` of a SODA page gives: every value a string but the GeoJSON ``location``
    object, absent fields left out, a share of rows located only by ``location``, a few unlocated."""
    spec = get_source("nyc311")
    rows = soda_rows(tiny_snap.events("nyc"), 3_000, spec.timezone, seed=1, page_size=1_000)
    assert json.loads(json.dumps(rows)) == rows
    assert {type(v) for r in rows for k, v in r.items() if k != "location"} == {str}
    assert {type(r["location"]) for r in rows if "location" in r} == {dict, str}  # GeoJSON; WKT for a few
    assert all(set(r["location"]) == {"type", "coordinates"} for r in rows if isinstance(r.get("location"), dict))
    assert any("closed_date" not in r for r in rows)
    assert any("descriptor" not in r for r in rows)
    only_location = [r for r in rows if "location" in r and "latitude" not in r]
    assert any(isinstance(r["location"], dict) for r in only_location)
    assert any(isinstance(r["location"], str) for r in only_location)
    assert 0 < sum("location" not in r for r in rows) < 0.05 * len(rows)
    frame = adapter_for(spec).normalize(rows)
    assert frame.height == len(rows)
    assert frame["lon"].null_count() == sum("location" not in r for r in rows)


def test_ingest_figure_times_the_socrata_adapter(tiny_snap: Snapshot, monkeypatch: pytest.MonkeyPatch) -> None:
    """The figure is the product's path: ``SocrataAdapter.normalize`` on the row dicts, then ``canonical_rows``."""
    calls: list[int] = []
    normalize = SocrataAdapter.normalize

    def counted(self: SocrataAdapter, rows: list[dict[str, Any]]) -> pl.DataFrame:
        calls.append(len(rows))
        return normalize(self, rows)

    monkeypatch.setattr(SocrataAdapter, "normalize", counted)
    assert ingest_rows_per_s(tiny_snap.events("nyc"), n=2_000) > 0
    assert calls
    assert set(calls) == {2_000}


# ---- the pandas reference of the engine's scoring ------------------------------------------------

#: Columns the reference must reproduce, to 1e-9 relative.
_SCORE_COLS = ("observed", "trailing", "expected", "variance", "phi", "zscore", "p", "q")
_KEYS = ["unit_id", "category", "bin_start"]


def _synthetic_cells(time_bin: str) -> tuple[pl.DataFrame, datetime, datetime]:
    """Sparse cells of a small level over 35 days (or the hours of 35 days): Poisson series of
    different levels, a spike, a unit with no events before the window (no prior: the floor) and a
    category first seen in the window (no profile, no dispersion: the defaults)."""
    rng = np.random.default_rng(3)
    step = BIN_LENGTH[time_bin]
    start = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday, so weekly bins sit on the grid
    n_bins = int(timedelta(days=35) / step)
    bins = [start + i * step for i in range(n_bins)]
    rows = []
    for unit, rate in (("A", 3.0), ("B", 0.4), ("C", 0.05)):
        for category, share in (("noise", 1.0), ("heat", 0.5), ("rodent", 0.1)):
            counts = rng.poisson(rate * share * (24 if time_bin == "day" else 1 if time_bin == "hour" else 168) / 24, n_bins)
            rows += [(unit, category, b, int(c)) for b, c in zip(bins, counts, strict=True) if c]
    since = start + timedelta(days=28)
    until = start + timedelta(days=35)
    last = until - step  # the window's last bin (its only one with weekly bins)
    rows += [("A", "noise", since, 100), ("D", "noise", last, 2), ("B", "graffiti", since, 3), ("B", "graffiti", last, 1)]
    frame = pl.DataFrame(
        rows,
        schema=[("unit_id", pl.String), ("category", pl.String), ("bin_start", pl.Datetime("us", "UTC")), ("count", pl.Int64)],
        orient="row",
    )
    return frame.group_by(_KEYS).agg(pl.col("count").sum()).sort(_KEYS), since, until


def _assert_same_scores(engine: pl.DataFrame, reference: pd.DataFrame, cols: tuple[str, ...] = _SCORE_COLS) -> None:
    ref = pl.from_pandas(reference)
    both = engine.join(ref, on=_KEYS, how="full", suffix="_pd", coalesce=True)
    assert both.height == engine.height == ref.height, "the two score different cells"
    for col in cols:
        np.testing.assert_allclose(
            both[f"{col}_pd"].to_numpy().astype(float), both[col].to_numpy().astype(float), rtol=1e-9, atol=0, err_msg=col
        )


@pytest.mark.parametrize(("time_bin", "extra_variance"), [("day", 0.0), ("day", 2.5), ("hour", 0.0), ("week", 0.0)])
def test_pandas_reference_equals_the_engine(time_bin: str, extra_variance: float) -> None:
    cells, since, until = _synthetic_cells(time_bin)
    model = fit_baseline(cells, time_bin, since)
    engine = score_cells(cells, since, until, time_bin, 5, model=model, extra_variance=extra_variance)
    reference = pandas_score_cells(to_pandas_cells(cells), since, until, time_bin, 5, model, extra_variance=extra_variance)
    assert engine.height >= 7
    _assert_same_scores(engine, reference)
    # The fixture reaches the branches it is meant to: the prior floor and the missing lookups.
    assert ("D", "noise") not in lookups(model).prior
    assert "graffiti" not in lookups(model).phi
    spike = reference[(reference["unit_id"] == "A") & (reference["observed"] >= 100)]
    assert len(spike) == 1
    assert float(spike["q"].iloc[0]) < 1e-6


def test_pandas_reference_notices_a_wrong_trailing_window() -> None:
    """The equality is not vacuous: a model with a different baseline length gives other numbers."""
    cells, since, until = _synthetic_cells("day")
    model = fit_baseline(cells, "day", since)
    engine = score_cells(cells, since, until, "day", 5, model=model)
    shorter = dataclasses.replace(model, baseline=timedelta(days=21))
    reference = pandas_score_cells(to_pandas_cells(cells), since, until, "day", 5, shorter)
    with pytest.raises(AssertionError):
        _assert_same_scores(engine, reference)


def test_pandas_reference_equals_the_engine_on_a_sample_of_the_tiny_demo(tiny_snap: Snapshot) -> None:
    """Tract level, the demo's last week: the sampled series' cells agree with the engine's full
    run (``q`` is left out: BH ranks the sample's p-values among themselves, not the whole family)."""
    events = tiny_snap.events("nyc")
    last = events["ts"].max()
    assert isinstance(last, datetime)
    until = last.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    since = until - timedelta(days=7)
    cube = cube_counts(filter_events(events, since - BASELINE, until), tract_parents(tiny_snap.units("nyc")), "day", ("tract",))
    cells = level_cells(cube, "tract")
    n_units = tiny_snap.units("nyc", "tract").height
    model = fit_baseline(cells, "day", since)
    engine = score_cells(cells, since, until, "day", n_units, model=model)
    chosen = sample_series(cells, since, until, 300, seed=5)
    assert chosen.height == 300
    sample = cells.join(chosen, on=["unit_id", "category"], how="semi")
    reference = pandas_score_cells(to_pandas_cells(sample), since, until, "day", n_units, model, n_categories=cells["category"].n_unique())
    _assert_same_scores(engine.join(chosen, on=["unit_id", "category"], how="semi"), reference, _SCORE_COLS[:-1])


def test_sample_series_is_deterministic_and_only_scored_series() -> None:
    cells, since, until = _synthetic_cells("day")
    active = cells.filter(pl.col("bin_start") >= since).select("unit_id", "category").unique()
    first = sample_series(cells, since, until, 4, seed=1)
    assert first.equals(sample_series(cells, since, until, 4, seed=1))
    assert first.height == 4
    assert first.join(active, on=["unit_id", "category"], how="anti").height == 0
    assert sample_series(cells, since, until, 10_000).height == active.height


@pytest.mark.parametrize(
    ("sample_s", "sample_n", "total_n", "fixed_s", "expected"),
    [(2.0, 3_000, 39_000, 0.0, 26.0), (2.0, 3_000, 39_000, 0.5, 26.5), (1.0, 100, 100, 0.25, 1.25), (0.0, 5, 50, 1.0, 1.0)],
)
def test_extrapolation_scales_the_sample_and_adds_the_fixed_part(
    sample_s: float, sample_n: int, total_n: int, fixed_s: float, expected: float
) -> None:
    assert extrapolated_seconds(sample_s, sample_n, total_n, fixed_s) == pytest.approx(expected)


@pytest.mark.parametrize("args", [(1.0, 0, 10), (-1.0, 5, 10), (1.0, 5, -1), (1.0, 5, 10, -0.1)])
def test_extrapolation_refuses_meaningless_inputs(args: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="positive sample"):
        extrapolated_seconds(*args)  # type: ignore[arg-type]  # bad values on purpose


def test_planted_figures_from_two_evaluations() -> None:
    engine = Evaluation(detections=10, true_detections=8, planted=20, found=12)
    rolling = Evaluation(detections=100, true_detections=10, planted=20, found=10)
    figures = planted_figures(engine, rolling)
    assert figures["planted_precision"] == (0.8, "ratio")
    assert figures["planted_recall"] == (0.6, "ratio")
    assert figures["planted_f1"] == (round(2 * 0.8 * 0.6 / 1.4, 4), "ratio")
    f1_rolling = 2 * 0.1 * 0.5 / 0.6
    assert figures["planted_f1_rolling_z"] == (round(f1_rolling, 4), "ratio")
    assert figures["planted_f1_ratio"][0] == pytest.approx((2 * 0.8 * 0.6 / 1.4) / f1_rolling, abs=1e-3)
    assert all(format_line(name, value, unit) for name, (value, unit) in figures.items())


def test_planted_ratio_is_refused_when_the_reference_found_nothing() -> None:
    engine = Evaluation(detections=10, true_detections=8, planted=20, found=12)
    with pytest.raises(ValueError, match="rolling z reference"):
        planted_figures(engine, Evaluation(detections=5, true_detections=0, planted=20, found=0))
