"""Shared normalisation: provider times to UTC, provider points to WGS84, extras to ``attrs``.

Vectorised over polars columns, since ingest throughput is a goal (>= 500k rows/s with the join).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray
from pyproj import Transformer

__all__ = [
    "WORLD_BOUNDS",
    "attrs_json",
    "attrs_json_columns",
    "finish_local_to_utc",
    "get_path",
    "local_to_utc",
    "parse_points",
    "points_from_columns",
    "points_from_values",
    "project_to_wgs84",
    "soda_to_utc",
]

#: Points outside these bounds, or at exactly (0, 0), are treated as unlocated.
WORLD_BOUNDS = (-180.0, -90.0, 180.0, 90.0)
_WKT_POINT = re.compile(r"POINT\s*\(\s*([-+0-9.eE]+)\s+([-+0-9.eE]+)\s*\)", re.IGNORECASE)
_PAREN_PAIR = re.compile(r"\(\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*\)")


def local_to_utc(values: pl.Series, timezone: str) -> pl.Series:
    """Provider timestamps to UTC ``Datetime("us", "UTC")``.

    Strings with an offset or ``Z`` are exact. Floating strings (SODA's ``2024-05-27T02:08:51.000``,
    the portal CSV's ``05/01/2022 12:00:03 AM``) are wall-clock times in ``timezone``: on the autumn
    repeat the earlier instant is taken, and a time in the spring gap (which no clock showed) is read
    as the instant one hour later, as the clock would have shown it. Unparseable values become null.
    """
    text = values.cast(pl.String)
    utc = text.to_frame("s").select(soda_to_utc(pl.col("s"), timezone)).to_series()
    return finish_local_to_utc(utc, text, timezone).alias(values.name or "ts")


def soda_to_utc(text: pl.Expr, timezone: str) -> pl.Expr:
    """The fast path of :func:`local_to_utc` as an expression: SODA's fixed floating shape only (its
    exact ``.%3f`` parses ~3x faster than ``%.f``); rows it leaves null (other shapes, zones, the
    spring gap, surrounding blanks, junk) are read by :func:`finish_local_to_utc`."""
    soda = text.str.to_datetime(_SODA_FORMAT, time_unit="us", strict=False)
    return soda.dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null").dt.convert_time_zone("UTC")


def finish_local_to_utc(utc: pl.Series, text: pl.Series, timezone: str) -> pl.Series:
    """``utc`` (from :func:`soda_to_utc` of ``text``) with the rows it left null but ``text`` has
    read by the general path, trying every known format."""
    rest = np.flatnonzero((utc.is_null() & text.is_not_null()).to_numpy())
    if len(rest):
        utc = utc.scatter(rest, _any_to_utc(text[rest].str.strip_chars().to_frame("s"), timezone))
    return utc


def _any_to_utc(df: pl.DataFrame, timezone: str) -> pl.Series:
    """:func:`local_to_utc` of column ``s`` trying every known format."""
    aware = pl.col("s").str.contains(r"(Z|[+-]\d{2}:?\d{2})$").fill_null(False)
    naive = pl.coalesce([pl.col("s").str.to_datetime(fmt, time_unit="us", strict=False) for fmt in _NAIVE_FORMATS])
    local = naive.dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")
    in_gap = (naive + pl.duration(hours=1)).dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")
    exact = pl.col("s").str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", time_unit="us", time_zone="UTC", strict=False)
    utc = pl.when(aware).then(exact).otherwise(pl.coalesce(local, in_gap).dt.convert_time_zone("UTC"))
    return df.select(utc).to_series()


#: SODA's floating timestamp, ``2024-05-27T02:08:51.000`` (the fast path of :func:`local_to_utc`).
_SODA_FORMAT = "%Y-%m-%dT%H:%M:%S.%3f"
#: Floating timestamp formats providers use (SODA ISO, portal CSV export, UK planned works, dates).
_NAIVE_FORMATS = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%m/%d/%Y %I:%M:%S %p", "%d-%b-%Y %H:%M", "%Y-%m-%d"]


def _floats(values: Sequence[Any] | pl.Series) -> NDArray[np.float64]:
    text = values if isinstance(values, pl.Series) else pl.Series(values, dtype=pl.String, strict=False)
    return text.cast(pl.Float64, strict=False).to_numpy().astype(np.float64)  # null -> NaN


def parse_points(
    rows: Sequence[dict[str, Any]], lon_field: str | None, lat_field: str | None, location_field: str | None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Lon/lat per row from explicit fields, falling back to a location field in any SODA shape:
    the legacy object ``{"latitude": .., "longitude": ..}``, GeoJSON ``{"type": "Point", ...}``,
    WKT ``POINT (lon lat)``, or the CSV export's ``(lat, lon)``. NaN where none is usable."""
    return points_from_values(
        [get_path(r, lon_field) for r in rows] if lon_field else None,
        [get_path(r, lat_field) for r in rows] if lat_field else None,
        (lambda i: get_path(rows[i], location_field)) if location_field else None,
        len(rows),
    )


def points_from_values(
    lon: Sequence[Any] | pl.Series | None, lat: Sequence[Any] | pl.Series | None, location_of: Callable[[int], Any] | None, n: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """:func:`parse_points` of ``n`` rows from their lon and lat values (text or numbers, or a String
    column; ``None``: the field is not mapped) and ``location_of(i)``, row ``i``'s location value,
    asked only of rows without a usable lon/lat pair (a few per cent of a SODA page)."""
    x = _floats(lon) if lon is not None else np.full(n, np.nan)
    y = _floats(lat) if lat is not None else np.full(n, np.nan)
    if location_of is not None:
        for i in np.flatnonzero(~(np.isfinite(x) & np.isfinite(y))):
            point = _location_point(location_of(int(i)))
            if point is not None:
                x[i], y[i] = point
    return _valid(x, y)


def points_from_columns(
    lon: pl.Series | None, lat: pl.Series | None, location: pl.Series | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Column-wise :func:`parse_points` for frames (SODA pages read as columns), with the same result.

    ``lon``/``lat`` are text or numbers; ``location`` is text (JSON object, WKT ``POINT (lon lat)`` or
    ``(lat, lon)``) or a struct (the legacy object's ``latitude``/``longitude``, or GeoJSON's
    ``type``/``coordinates``). It fills rows whose ``lon`` or ``lat`` is missing.
    """
    n = next((len(s) for s in (lon, lat, location) if s is not None), 0)
    x = _float_column(lon) if lon is not None else np.full(n, np.nan)
    y = _float_column(lat) if lat is not None else np.full(n, np.nan)
    if location is not None:
        missing = ~(np.isfinite(x) & np.isfinite(y))
        if missing.any():
            lx, ly = _location_columns(location.filter(pl.Series(missing)))
            x[missing], y[missing] = lx, ly
    return _valid(x, y)


def _float_column(values: pl.Series) -> NDArray[np.float64]:
    return values.cast(pl.String).cast(pl.Float64, strict=False).fill_nan(None).fill_null(np.nan).to_numpy().astype(np.float64)


def _location_columns(loc: pl.Series) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Lon/lat from a location column in any SODA shape (NaN where none is usable)."""
    frame = loc.rename("v").to_frame()
    if isinstance(loc.dtype, pl.Struct):
        fields = {f.name for f in loc.dtype.fields}
        v = pl.col("v")
        exprs = [pl.lit(None, pl.String)] * 2
        if "coordinates" in fields and "type" in fields:
            point = v.struct.field("type") == "Point"
            coords = v.struct.field("coordinates").cast(pl.List(pl.String))
            exprs = [pl.when(point).then(coords.list.get(i, null_on_oob=True)) for i in (0, 1)]
        if "longitude" in fields and "latitude" in fields:
            exprs = [
                pl.coalesce(exprs[0], v.struct.field("longitude").cast(pl.String)),
                pl.coalesce(exprs[1], v.struct.field("latitude").cast(pl.String)),
            ]
        xy = frame.select(x=exprs[0], y=exprs[1])
    elif loc.dtype == pl.String:
        s = pl.col("v").str.strip_chars()
        obj = s.str.starts_with("{")
        point = s.str.json_path_match("$.type") == "Point"
        wkt = s.str.extract_groups(f"(?i){_WKT_POINT.pattern}")
        pair = s.str.extract_groups(_PAREN_PAIR.pattern)
        xy = frame.select(
            x=pl.when(obj)
            .then(pl.when(point).then(s.str.json_path_match("$.coordinates[0]")).otherwise(s.str.json_path_match("$.longitude")))
            .otherwise(pl.coalesce(wkt.struct.field("1"), pair.struct.field("2"))),
            y=pl.when(obj)
            .then(pl.when(point).then(s.str.json_path_match("$.coordinates[1]")).otherwise(s.str.json_path_match("$.latitude")))
            .otherwise(pl.coalesce(wkt.struct.field("2"), pair.struct.field("1"))),
        )
    else:  # anything else (Python objects): the row-wise reader
        points = [_location_point(v) or (np.nan, np.nan) for v in loc.to_list()]
        return np.asarray([p[0] for p in points], dtype=np.float64), np.asarray([p[1] for p in points], dtype=np.float64)
    return _float_column(xy["x"]), _float_column(xy["y"])


def attrs_json_columns(frame: pl.DataFrame, fields: Sequence[str]) -> pl.Series:
    """Column-wise :func:`attrs_json` for a frame: the listed columns of each row as one JSON object,
    null values and absent columns omitted (non-ASCII text is kept as UTF-8, not ``\\u`` escapes)."""
    parts = [
        pl.when(pl.col(f).is_not_null()).then(pl.struct(f).struct.json_encode().str.strip_prefix("{").str.strip_suffix("}"))
        for f in fields
        if f in frame.columns
    ]
    if not parts:
        return pl.Series("attrs", ["{}"] * frame.height, dtype=pl.String)
    inner = pl.concat_str(parts, separator=",", ignore_nulls=True)
    return frame.select(pl.concat_str(pl.lit("{"), inner, pl.lit("}")).alias("attrs")).to_series()


def _location_point(value: Any) -> tuple[float, float] | None:
    try:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("{"):
                value = json.loads(value)
            elif m := _WKT_POINT.search(value):
                return float(m.group(1)), float(m.group(2))
            elif m := _PAREN_PAIR.search(value):
                return float(m.group(2)), float(m.group(1))  # "(lat, lon)"
            else:
                return None
        if isinstance(value, dict):
            if value.get("type") == "Point":
                x, y = value["coordinates"][:2]
                return float(x), float(y)
            if "latitude" in value and "longitude" in value:
                return float(value["longitude"]), float(value["latitude"])
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    return None


def _valid(lon: NDArray[np.float64], lat: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """NaN out points outside WGS84 ranges and the (0, 0) 'null island' placeholder."""
    bad = (
        ~(np.isfinite(lon) & np.isfinite(lat))
        | (lon < WORLD_BOUNDS[0])
        | (lon > WORLD_BOUNDS[2])
        | (lat < WORLD_BOUNDS[1])
        | (lat > WORLD_BOUNDS[3])
        | ((lon == 0) & (lat == 0))
    )
    return np.where(bad, np.nan, lon), np.where(bad, np.nan, lat)


def project_to_wgs84(x: NDArray[np.float64], y: NDArray[np.float64], crs: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Projected coordinates (e.g. British National Grid, EPSG:27700) to lon/lat; 0/0 and missing
    stay unlocated (NaN)."""
    missing = ~(np.isfinite(x) & np.isfinite(y)) | ((x == 0) & (y == 0))
    lon, lat = _transformer(crs).transform(np.where(missing, np.nan, x), np.where(missing, np.nan, y))
    return _valid(np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64))


def _transformer(crs: str) -> Transformer:
    """One transformer per CRS and thread (building one costs ~45 ms; pyproj objects are per thread)."""
    cache: dict[str, Transformer] = _LOCAL.__dict__.setdefault("transformers", {})
    if crs not in cache:
        cache[crs] = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return cache[crs]


_LOCAL = threading.local()


def get_path(row: dict[str, Any], path: str | None) -> Any:
    """``row["a"]["b"]`` for ``"a.b"`` (``None`` when any step is missing); plain keys first, since
    SODA names such as ``:updated_at`` or ``:@computed_region_x`` are flat."""
    if path is None:
        return None
    if path in row:
        return row[path]
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def attrs_json(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> list[str]:
    """The listed provider fields of each row as a JSON object string (missing fields omitted)."""
    return [json.dumps({f: v for f in fields if (v := get_path(r, f)) is not None}, separators=(",", ":"), default=str) for r in rows]
