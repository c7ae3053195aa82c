"""The benchmark's reporting: one ``BENCH <name> <value> <unit>`` line per figure and a JSON file
of the same figures (the real measurements run with ``python -m bench.run``, not here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from app.data.registry import get_source
from app.data.snapshot import Snapshot
from app.data.sources import adapter_for
from bench.run import format_line, ingest_rows_per_s, normalise_soda, report, soda_page

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


def test_soda_page_is_all_strings_and_normalises_as_the_socrata_adapter_does(tiny_snap: Snapshot) -> None:
    """The column-wise normalisation the benchmark times gives the adapter's row-wise frame."""
    spec = get_source("nyc311")
    page = soda_page(tiny_snap.events("nyc"), 3_000, spec.timezone, seed=1)
    assert set(page.schema.values()) == {pl.String}
    assert page["location"].str.starts_with("POINT").any()
    assert page["location"].null_count() > 0
    rows = [{k: v for k, v in row.items() if v is not None} for row in page.to_dicts()]  # SODA omits missing fields
    expected = adapter_for(spec).normalize(rows)
    got = normalise_soda(spec, page)
    assert_frame_equal(got.drop("attrs"), expected.drop("attrs"))
    assert [json.loads(a) for a in got["attrs"]] == [json.loads(a) for a in expected["attrs"]]


def test_ingest_figure_runs_on_a_small_page(tiny_snap: Snapshot) -> None:
    assert ingest_rows_per_s(tiny_snap.events("nyc"), n=2_000) > 0
