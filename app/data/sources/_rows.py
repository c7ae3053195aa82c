"""Helpers shared by the JSON-row adapters (Socrata, Open311, SeeClickFix): a page of row dicts read
column by column (:class:`PageColumns`), the canonical request frame built from a registry entry's
field map, and provider times as UTC cursors."""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from functools import lru_cache, partial
from itertools import repeat
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

from app.data.normalize import finish_local_to_utc, get_path, local_to_utc, points_from_values, soda_to_utc
from app.data.registry import SourceSpec
from app.data.sources.base import CANONICAL_COLUMNS, IngestCursor

__all__ = ["CHUNK_ROWS", "PageColumns", "chunked", "iso_z", "later", "request_frame", "start_time", "time_range"]

#: Rows per chunk of a page read column-wise (:func:`chunked`): SODA's largest page is two chunks.
CHUNK_ROWS = 25_000
#: Characters JSON text escapes (Python's ``json`` with ``ensure_ascii`` also escapes DEL), and how.
_ESCAPE = ["\\", '"', *map(chr, range(32)), "\x7f"]
_ESCAPED = [json.dumps(c)[1:-1] for c in _ESCAPE]
#: Sentinel: no value found.
_NONE = object()
_is_not_none = partial(operator.is_not, None)


class PageColumns:
    """A page of provider row dicts read column-wise, and turned into a canonical frame by one polars
    ``select`` (:meth:`frame`) of the expressions :meth:`text` and :meth:`attrs` give.

    The wanted fields are read from every row in one pass by polars, as ``Binary``: text becomes its
    UTF-8, anything else (a number, boolean, object) null. A field whose nulls are all absent or
    ``None`` in the rows holds only text (every SODA field but ``location``) and is used as that
    column; any other field (numbers from Open311 and SeeClickFix, SODA checkboxes, nested paths such
    as SeeClickFix's ``request_type.title``) is read value by value and converted as the row-wise
    helpers did, so the result never depends on which path a field took.
    """

    def __init__(self, rows: Sequence[dict[str, Any]], paths: Iterable[str | None]) -> None:
        self.rows = rows
        self.height = len(rows)
        flat = [p for p in dict.fromkeys(paths) if p is not None and "." not in p]
        #: Fields whose every value is text or missing.
        self._text: set[str] = set()
        #: Raw values of the other fields, read on demand.
        self._values: dict[str, list[Any]] = {}
        raw = None
        # A lone surrogate or a row that is not a dict: every field value by value.
        with suppress(TypeError, UnicodeError, pl.exceptions.PolarsError):
            raw = pl.from_dicts(rows, schema=dict.fromkeys(flat, pl.Binary), strict=False) if rows and flat else None
        if raw is not None:
            gaps = [p for p in flat if raw[p].has_nulls()]
            missing = raw.select(pl.col(gaps).is_null()) if gaps else raw.clear()
            self._text = {p for p in flat if p not in gaps or self._only_missing(np.flatnonzero(missing[p].to_numpy()).tolist(), p)}
        #: The text fields as String columns, then private columns (:meth:`_private`); with no text
        #: field, a placeholder column gives the frame its height.
        self._data = (
            pl.DataFrame([raw[p].cast(pl.String) for p in flat if p in self._text])
            if raw is not None and self._text
            else pl.DataFrame([pl.Series(_PRIVATE, [None] * self.height, dtype=pl.Null)])
        )

    def _only_missing(self, indices: list[int], path: str) -> bool:
        """Whether ``path`` is absent or ``None`` in every listed row (stops at the first value)."""
        found = next(filter(_is_not_none, map(dict.get, map(self.rows.__getitem__, indices), repeat(path))), _NONE)
        return found is _NONE

    def values(self, path: str) -> list[Any]:
        """The raw value of ``path`` in every row (``None`` where absent)."""
        if path not in self._values:
            rows = self.rows
            self._values[path] = [get_path(r, path) for r in rows] if "." in path else list(map(dict.get, rows, repeat(path)))
        return self._values[path]

    def evaluate(self, expr: pl.Expr) -> pl.Series:
        """``expr`` (one of this page's expressions) as a column."""
        return self._data.select(expr).to_series()

    def _private(self, key: str, make: Callable[[], pl.Series]) -> pl.Expr:
        """A private column made by Python from raw values (once), as an expression."""
        name = f"{_PRIVATE}{key}"
        if name not in self._data.columns:
            self._data = self._data.with_columns(make().alias(name))
        return pl.col(name)

    def text(self, path: str | None, lower_bools: bool = False) -> pl.Expr:
        """``path`` of every row as text, ``None`` and ``""`` as null. Other values become ``str(v)``
        (ids arrive as numbers from some providers); with ``lower_bools``, booleans are spelled
        ``true``/``false`` as in SODA's CSV."""
        if path is None:
            return pl.repeat(None, pl.len(), dtype=pl.String)
        if path in self._text:
            return pl.col(path).replace("", None)

        def convert() -> pl.Series:
            text = [
                None if v is None or v == "" else str(v).lower() if lower_bools and isinstance(v, bool) else str(v)
                for v in self.values(path)
            ]
            return pl.Series(text, dtype=pl.String)

        return self._private(f"text{lower_bools:d}:{path}", convert)

    def _number(self, path: str | None) -> pl.Expr:
        """``path`` as a float (text parsed, numbers kept; anything else null)."""
        if path is None:
            return pl.repeat(None, pl.len(), dtype=pl.Float64)
        if path in self._text:
            return pl.col(path).cast(pl.Float64, strict=False)
        return self._private(
            f"number:{path}", lambda: pl.Series(self.values(path), dtype=pl.String, strict=False).cast(pl.Float64, strict=False)
        )

    def attrs(self, fields: Sequence[str]) -> pl.Expr:
        """The listed fields of each row as one JSON object, absent and null fields omitted, as
        :func:`~app.data.normalize.attrs_json` writes it (but non-ASCII text stays UTF-8, not
        ``\\u`` escapes)."""
        members = []
        for field in dict.fromkeys(fields):
            if field in self._text:  # text, every SODA field
                value = _quoted(field)
            else:
                value = pl.concat_str(pl.lit(_json(field) + ":"), self._private(f"json:{field}", partial(self._json_values, field)))
            members.append(value)
        if not members:
            return pl.repeat(pl.lit("{}"), pl.len())
        return pl.concat_str(pl.lit("{"), pl.concat_str(members, separator=",", ignore_nulls=True), pl.lit("}"))

    def _json_values(self, field: str) -> pl.Series:
        """Each value of ``field`` as JSON text (``None`` stays null): SODA checkboxes by polars,
        numbers, objects and mixed types by Python's ``json``."""
        values = self.values(field)
        try:
            return pl.Series(values, dtype=pl.Boolean, strict=True).cast(pl.String)
        except TypeError:
            return pl.Series([None if v is None else _json(v) for v in values], dtype=pl.String)

    def frame(
        self,
        schema: Mapping[str, pl.DataType],
        columns: Mapping[str, pl.Expr],
        times: Mapping[str, str | None],
        timezone: str,
        point: tuple[str | None, str | None, str | None],
    ) -> pl.DataFrame:
        """The frame of ``schema``: ``columns`` as given, ``times`` (column -> field) read as UTC
        instants (:func:`~app.data.normalize.local_to_utc`), and ``lon``/``lat`` from ``point``
        (lon, lat and location fields, read as :func:`~app.data.normalize.parse_points` does, the
        location only for rows without a usable lon/lat pair; unusable points are null)."""
        lon, lat, location = point
        exprs = [e.alias(name) for name, e in columns.items()]
        for name, path in times.items():  # SODA's shape here; rows in any other shape are flagged for the general path
            utc = soda_to_utc(self.text(path), timezone)
            exprs += [utc.alias(name), (utc.is_null() & self.text(path).is_not_null()).alias(f"{_PRIVATE}retry:{name}")]
        exprs += [self._number(lon).alias("lon"), self._number(lat).alias("lat")]
        out = self._data.select(exprs)  # every expression made (they may add private columns) before this
        for name, path in times.items():
            if out[f"{_PRIVATE}retry:{name}"].any():
                out = out.with_columns(finish_local_to_utc(out[name], self.evaluate(self.text(path)), timezone).alias(name))
        rows = self.rows
        x, y = points_from_values(out["lon"], out["lat"], (lambda i: get_path(rows[i], location)) if location else None, self.height)
        points = {"lon": pl.Series(x, nan_to_null=True), "lat": pl.Series(y, nan_to_null=True)}  # unlocated: null, as the contract says
        return pl.DataFrame({name: (points[name] if name in points else out[name]).cast(dtype) for name, dtype in schema.items()})


_PRIVATE = "\x00"  # prefix of the private column names (no provider field name holds a NUL)


@lru_cache(maxsize=1024)
def _quoted(field: str) -> pl.Expr:
    """``"field":"text"``, the text escaped as Python's ``json`` does (built once per field)."""
    return pl.concat_str(pl.lit(_json(field) + ':"'), pl.col(field).str.replace_many(_ESCAPE, _ESCAPED), pl.lit('"'))


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def request_frame(spec: SourceSpec, rows: Sequence[dict[str, Any]]) -> pl.DataFrame:
    """Provider rows -> the canonical ``request`` frame, every column read through ``spec.fields``."""
    f = spec.fields

    def plan(chunk: Sequence[dict[str, Any]]) -> Callable[[], pl.DataFrame]:
        page = PageColumns(chunk, [f.id, f.time, f.category, f.descriptor, f.lon, f.lat, *f.attrs])
        columns = {
            "source_id": page.text(f.id),
            "category": page.text(f.category),
            "descriptor": page.text(f.descriptor),
            "attrs": page.attrs(f.attrs),
        }
        return partial(page.frame, CANONICAL_COLUMNS["request"], columns, {"ts": f.time}, spec.timezone, (f.lon, f.lat, f.location))

    return chunked(rows, plan)


def chunked(rows: Sequence[dict[str, Any]], plan: Callable[[Sequence[dict[str, Any]]], Callable[[], pl.DataFrame]]) -> pl.DataFrame:
    """``plan(chunk)()`` of ``rows`` in chunks of :data:`CHUNK_ROWS`, concatenated. ``plan`` reads a
    chunk's row dicts (Python, holding the GIL) and returns the polars work that finishes it, which
    runs in a worker thread (polars releases the GIL) while the next chunk is read: a large page
    keeps two cores busy instead of one."""
    if len(rows) <= CHUNK_ROWS:
        return plan(rows)()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="normalize") as pool:
        parts = [pool.submit(plan(rows[i : i + CHUNK_ROWS])) for i in range(0, len(rows), CHUNK_ROWS)]
        return pl.concat([part.result() for part in parts])


def time_range(rows: Sequence[dict[str, Any]], path: str, timezone: str) -> tuple[datetime | None, datetime | None]:
    """Oldest and newest UTC instant of a time field over ``rows`` (``None`` when none parse)."""
    page = PageColumns(rows, [path])
    times = local_to_utc(page.evaluate(page.text(path)), timezone).drop_nulls()
    if times.is_empty():
        return None, None
    lo, hi = times.min(), times.max()
    assert isinstance(lo, datetime)
    assert isinstance(hi, datetime)
    return lo, hi


def later(a: datetime | None, b: datetime | None) -> datetime | None:
    """The later of two optional instants."""
    return b if a is None else a if b is None else max(a, b)


def iso_z(when: datetime) -> str:
    """``2026-11-01T12:00:00Z``: the W3C/ISO 8601 form both Open311 and SeeClickFix accept."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def start_time(spec: SourceSpec, state: IngestCursor, since: str | None, now: datetime, lookback: timedelta) -> datetime:
    """Where a run starts: an explicit backfill date (a bare date is local to the source), else the
    stored cursor minus the overlap window (late and updated rows), else ``lookback`` before now."""
    if since:
        return _aware(datetime.fromisoformat(since), spec.timezone)
    if state.cursor:
        return _aware(datetime.fromisoformat(state.cursor), "UTC") - timedelta(minutes=spec.overlap_minutes)
    return now - lookback


def _aware(when: datetime, timezone: str) -> datetime:
    return (when if when.tzinfo else when.replace(tzinfo=ZoneInfo(timezone))).astimezone(UTC)
