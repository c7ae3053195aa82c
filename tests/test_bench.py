"""The benchmark's reporting: one ``BENCH <name> <value> <unit>`` line per figure and a JSON file
of the same figures (the real measurements run with ``python -m bench.run``, not here)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from app.config import Settings
from app.data.demo import DemoSpec
from app.data.registry import get_source
from app.data.snapshot import Snapshot
from app.data.sources import adapter_for
from app.data.sources.socrata import SocrataAdapter
from app.data.store import Store
from app.engine.evaluate import Evaluation
from app.pipeline import build_demo
from bench.run import format_line, ingest_rows_per_s, planted_figures, recompute_seconds, report, soda_rows

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


# ---- the publish and planted figures --------------------------------------------------------------


def test_publish_figure_times_the_publish_on_the_working_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``publish_s`` is the median of ``runs`` timed calls of the product's publish
    (:func:`app.pipeline.recompute_anomalies`) on the working database, after one warm-up."""
    import app.pipeline

    calls: list[tuple[str, Settings | None]] = []
    publish = app.pipeline.recompute_anomalies

    def counted(con: Any, city: str, settings: Settings | None = None) -> int:
        calls.append((city, settings))
        return publish(con, city, settings)

    store = Store(tmp_path)
    rule = Settings(data_dir=tmp_path, privacy_mode="none")  # a small city publishes quickly without suppression
    build_demo(store, DemoSpec(seed=3, end=datetime(2026, 11, 1, tzinfo=UTC), days=10, size=3_000), settings=rule)
    monkeypatch.setattr(app.pipeline, "recompute_anomalies", counted)
    seconds = recompute_seconds(store, runs=2, settings=rule)
    assert calls == [("nyc", rule)] * 3
    assert 0 < seconds < 120
    snap = store.publish()
    assert snap.release("nyc").height > 0  # the timed calls left a release in the working database
    assert snap.release_meta("nyc")["mode"] == "none"


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


def test_the_alert_e2e_bench_runs_rounds_to_a_verifying_receiver(tmp_path: Path) -> None:
    """A short run of ``alert_e2e_p95_ms``'s harness: each round's webhooks arrive, so the
    figure ``make bench`` prints is measured, not lost to a mismatch of message ids."""
    from bench.alerts_e2e import e2e_latencies_ms

    latencies, _ = e2e_latencies_ms(tmp_path, 2)
    assert latencies
    assert all(0 < ms < 60_000 for ms in latencies)
