"""The column-wise normalisation paths (for whole SODA pages as frames) give exactly what the
row-wise ones give, on the real SODA payloads and on every location shape; the fast path of
``local_to_utc`` agrees with the general one, DST gaps and repeats included; and the JSON-row adapters'
column-wise ``normalize`` gives what their former row-by-row reading gave, whatever the value types."""

from __future__ import annotations

import csv
import gzip
import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from app.data.normalize import _any_to_utc, attrs_json, attrs_json_columns, get_path, local_to_utc, parse_points, points_from_columns
from app.data.registry import SourceSpec, get_source
from app.data.sources import _rows, adapter_for
from app.data.sources.base import CANONICAL_COLUMNS
from app.data.sources.socrata import api_field_name, crime_severity
from conftest import SHARED_DATA

SODA = SHARED_DATA / "events" / "soda_examples"
NYC = SHARED_DATA / "events" / "nyc"
FIELDS = ("longitude", "latitude", "location")
ATTRS = ["agency", "status", "closed_date", "incident_zip", "borough", "community_board", "absent_field"]
#: Every location shape SODA has shipped, plus junk, null island and a partial row.
ODD_ROWS: list[dict[str, Any]] = [
    {"location": "POINT (-73.9 40.7)"},
    {"location": "point(-73.91 40.71)"},
    {"location": "(40.7, -73.9)"},
    {"location": "\n,  \n(40.847, -73.935)"},
    {"location": '{"type": "Point", "coordinates": [-73.1, 40.1]}'},
    {"location": '{"latitude": "40.5", "longitude": "-74.0", "human_address": "{}"}'},
    {"location": '{"type": "LineString", "coordinates": [[0, 1], [2, 3]]}'},
    {"location": "{broken"},
    {"latitude": "40.6", "location": "POINT (-73.8 40.8)"},  # half a pair: the location wins
    {"latitude": "0", "longitude": "0"},
    {"latitude": "91", "longitude": "-73"},
    {"latitude": "abc", "longitude": "", "location": "junk"},
    {},
]


def _real_rows() -> list[dict[str, Any]]:
    path = SODA / "nyc311_erm2-nwe9_soda_response_2024-05-27.json.gz"
    if not path.exists():
        pytest.skip(f"SODA examples not in {SODA}")
    rows: list[dict[str, Any]] = json.loads(gzip.decompress(path.read_bytes()))
    rows += [json.loads(p.read_text()) for p in sorted(SODA.glob("nyc311_erm2-nwe9_row*.json"))]
    for p in sorted(NYC.glob("nyc_311_*_soda_csv_*.csv.gz")):  # WKT and flattened-object locations
        with gzip.open(p, "rt") as f:
            rows += list(csv.DictReader(f))
    return rows


def _as_text_frame(rows: list[dict[str, Any]], fields: list[str] | tuple[str, ...]) -> pl.DataFrame:
    """Rows as String columns, objects as JSON text (a page read column-wise from text)."""

    def cell(v: Any) -> Any:
        return json.dumps(v) if isinstance(v, dict) else v

    return pl.DataFrame({f: [cell(r.get(f)) for r in rows] for f in fields}, schema=dict.fromkeys(fields, pl.String))


def _same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    return np.array_equal(a[0], b[0], equal_nan=True) and np.array_equal(a[1], b[1], equal_nan=True)


@pytest.mark.parametrize("which", ["real", "odd"])
def test_points_from_text_columns_equal_parse_points(which: str) -> None:
    rows = _real_rows() if which == "real" else ODD_ROWS
    frame = _as_text_frame(rows, FIELDS)
    expected = parse_points(rows, *FIELDS)
    assert _same(points_from_columns(frame["longitude"], frame["latitude"], frame["location"]), expected)
    assert np.isfinite(expected[0]).sum() > 0


def test_points_from_struct_locations_equal_parse_points() -> None:
    """A page parsed straight into a frame turns location objects (legacy and GeoJSON) into structs."""
    rows = [r for r in [*_real_rows(), *ODD_ROWS] if not isinstance(r.get("location"), str)]
    frame = pl.DataFrame(rows, infer_schema_length=None)
    assert isinstance(frame.schema["location"], pl.Struct)
    got = points_from_columns(frame["longitude"], frame["latitude"], frame["location"])
    assert _same(got, parse_points(rows, *FIELDS))


def test_points_from_numeric_columns_and_missing_columns() -> None:
    lon, lat = pl.Series([-73.9, None, 0.0, float("nan")]), pl.Series([40.7, 40.0, 0.0, 40.0])
    x, y = points_from_columns(lon, lat)
    assert x[0] == -73.9
    assert np.isnan(x[1:]).all()
    assert np.isnan(y[1:]).all()
    x, y = points_from_columns(None, None, pl.Series(["POINT (1 2)"]))
    assert (x.tolist(), y.tolist()) == ([1.0], [2.0])
    assert points_from_columns(pl.Series([], dtype=pl.String), pl.Series([], dtype=pl.String))[0].shape == (0,)


@pytest.mark.parametrize("which", ["real", "odd"])
def test_attrs_columns_equal_attrs_json(which: str) -> None:
    rows = _real_rows() if which == "real" else [{"agency": 'say "hi"\\ café', "status": None}, {"borough": ""}, {}]
    frame = _as_text_frame(rows, ATTRS[:-1])
    got = attrs_json_columns(frame, ATTRS).to_list()
    assert [json.loads(g) for g in got] == [json.loads(e) for e in attrs_json(rows, ATTRS)]
    assert attrs_json_columns(frame, ["absent_field"]).to_list() == ["{}"] * len(rows)


# ---- local_to_utc: the SODA fast path and the general path agree -----------------------------------

SODA_TIMES = [
    "2024-05-27T02:08:51.000",
    "2024-03-10T01:59:59.999",  # just before the spring gap (New York)
    "2024-03-10T02:30:00.000",  # in the gap: read as 03:30 EDT
    "2024-11-03T01:30:00.000",  # in the autumn repeat: the earlier instant (EDT)
    "2024-11-03T02:00:00.000",
    " 2024-05-27T02:08:51.000 ",
    "2024-02-30T00:00:00.000",  # no such day
    "2024-05-27T02:08:51.000Z",
    "2024-05-27T02:08:51.000+02:00",
    "2024-05-27T02:08:51.12",
    "2024-05-27T02:08:51",
    "05/01/2022 12:00:03 AM",
    "31-DEC-2023 23:59",
    "2023-12-31",
    "",
    "junk",
    None,
]


@pytest.mark.parametrize("tz", ["America/New_York", "America/Chicago", "Europe/London", "UTC"])
def test_fast_path_agrees_with_every_format_path(tz: str) -> None:
    values = pl.Series("created_date", SODA_TIMES, dtype=pl.String)
    got = local_to_utc(values, tz)
    expected = _any_to_utc(pl.DataFrame({"s": values.str.strip_chars()}), tz)
    assert got.to_list() == expected.to_list()
    assert (got.name, got.dtype) == ("created_date", pl.Datetime("us", "UTC"))


def test_dst_edges_in_new_york() -> None:
    got = local_to_utc(pl.Series(SODA_TIMES[1:5]), "America/New_York").to_list()
    assert got == [
        datetime(2024, 3, 10, 6, 59, 59, 999000, tzinfo=UTC),
        datetime(2024, 3, 10, 7, 30, tzinfo=UTC),
        datetime(2024, 11, 3, 5, 30, tzinfo=UTC),
        datetime(2024, 11, 3, 7, 0, tzinfo=UTC),
    ]


# ---- the adapters' column-wise normalize equals the row-wise reading it replaced ---------------------

#: Every JSON type in every field, mixed within a column (as no real provider sends, but the adapters
#: must still read exactly as the row-wise helpers did), and text that needs JSON escaping.
MIXED_VALUES: list[Any] = [
    *[None, "", " x ", 'say "hi"\\ \n\t\x01\x7f', "café 😀", 0, 7, -1.5, 1e20, 100.0, True, False],
    *[{"a": [1, "b"]}, [1, 2], "2024-05-27T02:08:51.000", "05/01/2022 12:00:03 AM", "2024-03-10T02:30:00.000"],
    *["40.7", "-73.9", 40.7, -73.9, "HOMICIDE", " kidnapping ", "3", "POINT (-73.9 40.7)", {"type": "Point", "coordinates": [-73.9, 40.7]}],
]
MIXED_FIELDS = [
    *["unique_key", "created_date", "closed_date", "complaint_type", "descriptor", "agency", "status", "borough", "latitude", "longitude"],
    *[
        "location",
        "id",
        "date",
        "primary_type",
        "description",
        "arrest",
        "domestic",
        "case_number",
        "service_request_id",
        "requested_datetime",
    ],
    *["service_name", "lat", "long", "lng", "created_at", "summary", "request_type", "address", "sev"],
]


def _mixed_rows(n: int, seed: int, objects: bool = True) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    values = [v for v in MIXED_VALUES if objects or not isinstance(v, dict | list)]
    rows = [{f: values[rng.integers(len(values))] for f in MIXED_FIELDS if rng.random() < 0.7} for _ in range(n)]
    for i, row in enumerate(rows[::3]):  # SeeClickFix's nested category, and a flat key spelled like the path
        row["request_type"] = {"title": values[i % len(values)]} if i % 4 else None
        if i % 5 == 0:
            row["request_type.title"] = "flat"
    return rows


def _row_wise(spec: SourceSpec, rows: list[dict[str, Any]]) -> pl.DataFrame:
    """The adapters' former row-by-row normalize (``_rows.request_frame`` and ``socrata._texts``)."""
    f = spec.fields
    lower = spec.table != "request"  # Socrata incidents and closures spelled booleans as SODA's CSV

    def text(path: str | None) -> pl.Series:
        values = [get_path(r, path) for r in rows] if path else [None] * len(rows)
        return pl.Series(
            [None if v is None or v == "" else str(v).lower() if lower and isinstance(v, bool) else str(v) for v in values], dtype=pl.String
        )

    lon, lat = parse_points(rows, f.lon, f.lat, f.location)
    columns: dict[str, Any] = {"source_id": text(f.id), "lon": lon, "lat": lat, "attrs": attrs_json(rows, f.attrs)}
    if spec.table == "request":
        columns |= {"ts": local_to_utc(text(f.time), spec.timezone), "category": text(f.category), "descriptor": text(f.descriptor)}
    elif spec.table == "incident":
        types = text(f.category)
        severity = text(f.severity).cast(pl.Int16, strict=False) if f.severity else crime_severity(types)
        columns |= {"ts": local_to_utc(text(f.time), spec.timezone), "type": types, "severity": severity}
    else:
        columns |= {"start_ts": local_to_utc(text(f.time), spec.timezone), "end_ts": local_to_utc(text(f.end_time), spec.timezone)}
        columns |= {"kind": text(f.category), "description": text(f.descriptor)}
    schema = CANONICAL_COLUMNS[spec.table]
    return pl.DataFrame(columns).select(schema.keys()).cast(schema).fill_nan(None)  # type: ignore[arg-type]


def _spec(name: str, **fields: Any) -> SourceSpec:
    spec = get_source(name)
    table = "closure" if "end_time" in fields else spec.table
    return spec.model_copy(update={"table": table, "fields": spec.fields.model_copy(update=fields)})


@pytest.mark.parametrize(
    "spec",
    [
        _spec("nyc311"),
        _spec("chicago_crimes"),
        _spec("chicago_crimes", severity="sev"),
        _spec("nyc311", end_time="closed_date"),
        _spec("boston311"),
        _spec("cambridge_scf"),
    ],
    ids=["request", "incident", "incident-severity", "closure", "open311", "seeclickfix"],
)
@pytest.mark.parametrize("chunk_rows", [_rows.CHUNK_ROWS, 333], ids=["one-chunk", "chunks"])
@pytest.mark.parametrize("which", ["real", "odd", "mixed", "scalars", "empty"])
def test_adapter_normalize_equals_the_row_wise_reading(
    spec: SourceSpec, which: str, chunk_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_rows, "CHUNK_ROWS", chunk_rows)  # large pages are read in chunks, two threads at a time
    rows = {
        "real": _real_rows,
        "odd": lambda: ODD_ROWS,
        "mixed": lambda: _mixed_rows(2_000, seed=3),
        "scalars": lambda: _mixed_rows(2_000, seed=4, objects=False),  # no object a polars read refuses
        "empty": list,
    }[which]()
    rows = [r for r in rows if spec.provider != "socrata" or all(api_field_name(k) == k for k in r)]  # export headers: renamed
    got, expected = adapter_for(spec).normalize(rows), _row_wise(spec, rows)
    assert_frame_equal(got.drop("attrs"), expected.drop("attrs"))
    # attrs: the same JSON; the bytes too, but for non-ASCII text (kept as UTF-8, not \u escapes)
    assert [json.loads(a) for a in got["attrs"]] == [json.loads(a) for a in expected["attrs"]]
    ascii_escaped = ["".join(c if c.isascii() else json.dumps(c)[1:-1] for c in a) for a in got["attrs"]]
    assert ascii_escaped == expected["attrs"].to_list()
