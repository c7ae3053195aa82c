"""Socrata SODA 2.1 adapter: NYC 311, Chicago 311, Chicago crimes, and any other Socrata dataset
by a registry entry alone.

Paging is by key, not by position: every request asks for ``$where`` rows after the last
``(cursor field, id)`` pair seen, ``$order`` by that pair and ``$limit`` rows; the last page is the
one shorter than the limit. ``$offset`` paging over a set that changes while it is read skips a
row whenever an earlier row is updated (it moves to the end and everything shifts left by one);
key paging cannot skip. ``$offset`` is only used for rows without a cursor value.

Each poll starts ``overlap_minutes`` before the stored cursor (late rows, SODA batches that share
one ``:updated_at``); re-read rows replace themselves in the store. The first request of a poll
carries ``If-None-Match`` / ``If-Modified-Since`` from the previous complete poll; those validators
are handed to the ingest loop only with a poll's last page, and only when that page has rows (an
empty answer may be a glitch), so a poll cut short is never mistaken for an unchanged dataset. ``X-App-Token`` is sent only when the entry's ``token_env`` is set.

Split datasets (NYC 311: ``76ig-c548`` 2010-2019, ``erm2-nwe9`` 2020-) are separate entries with
``active_from``/``active_until``; each reads only its own window, and :func:`covering_sources` lists
the entries a backfill from a given date needs, oldest first.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import date, datetime, timedelta
from functools import lru_cache, partial
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import httpx
import polars as pl
import structlog

from app.data.normalize import get_path
from app.data.registry import SourceSpec, load_registry
from app.data.sources._rows import PageColumns, chunked, request_frame
from app.data.sources.base import CANONICAL_COLUMNS, IngestCursor, RawPage, register_adapter
from app.data.sources.http import RetryPolicy, get_json

__all__ = ["CRIME_SEVERITY", "SocrataAdapter", "api_field_name", "api_row", "covering_sources", "crime_severity"]

log = structlog.get_logger(__name__)

#: Incident severity by primary type when the dataset has no severity field (Chicago crimes):
#: 3 = homicide, sexual assault, robbery and other violence against a person with force or
#: captivity; 2 = other offences against a person, weapons, burglary, vehicle theft; anything else 1.
CRIME_SEVERITY: dict[str, int] = {
    **dict.fromkeys(["HOMICIDE", "CRIM SEXUAL ASSAULT", "CRIMINAL SEXUAL ASSAULT", "ROBBERY", "KIDNAPPING", "HUMAN TRAFFICKING"], 3),
    **dict.fromkeys(
        [
            "BATTERY",
            "ASSAULT",
            "SEX OFFENSE",
            "OFFENSE INVOLVING CHILDREN",
            "STALKING",
            "INTIMIDATION",
            "WEAPONS VIOLATION",
            "ARSON",
            "BURGLARY",
            "MOTOR VEHICLE THEFT",
        ],
        2,
    ),
}
DEFAULT_SEVERITY = 1
#: SODA system fields, returned only with ``$select=:*,*``.
SYSTEM_FIELDS = (":id", ":created_at", ":updated_at", ":version")


@lru_cache(maxsize=4096)
def api_field_name(name: str) -> str:
    """A portal export header as the API field name: ``Created Date`` -> ``created_date``,
    ``X Coordinate (State Plane)`` -> ``x_coordinate_state_plane``; API names pass unchanged."""
    if name.startswith(":"):
        return name
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def api_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with export headers renamed to API field names and empty cells dropped (SODA omits them)."""
    return {api_field_name(k): v for k, v in row.items() if v is not None and v != ""}


def crime_severity(types: pl.Series) -> pl.Series:
    """Severity of each primary type per :data:`CRIME_SEVERITY` (unknown types: 1)."""
    return types.to_frame("type").select(_severity(pl.col("type"))).to_series()


def _severity(types: pl.Expr) -> pl.Expr:
    key = types.cast(pl.String).str.strip_chars().str.to_uppercase()
    return key.replace_strict(CRIME_SEVERITY, default=DEFAULT_SEVERITY, return_dtype=pl.Int16).alias("severity")


@register_adapter("socrata")
class SocrataAdapter:
    """Rows of one SODA 2.1 dataset, ``{base_url}/resource/{dataset}.json``, oldest update first.

    >>> adapter = SocrataAdapter(get_source("nyc311"))  # doctest: +SKIP
    >>> async for page in adapter.pages(client, IngestCursor(), since="2025-11-01"): ...  # doctest: +SKIP
    >>> frame = adapter.normalize(page.rows)  # doctest: +SKIP
    """

    #: Retry policy of every request (tests swap in one with tiny waits).
    default_policy: ClassVar[RetryPolicy] = RetryPolicy()

    def __init__(self, spec: SourceSpec, policy: RetryPolicy | None = None) -> None:
        if not spec.dataset:
            raise ValueError(f"{spec.name}: a Socrata entry needs `dataset` (the 4x4 id)")
        if spec.crs != "EPSG:4326":
            raise ValueError(f"{spec.name}: Socrata points are WGS84; crs {spec.crs!r} is not supported")
        self.spec = spec
        self.policy = policy or self.default_policy
        self.url = f"{spec.base_url.rstrip('/')}/resource/{spec.dataset}.json"
        self.cursor_field = spec.fields.updated or spec.fields.time

    # ---- reading -------------------------------------------------------------------------------
    async def pages(self, client: httpx.AsyncClient, state: IngestCursor, since: str | None = None) -> AsyncIterator[RawPage]:
        """Pages of rows updated since the stored cursor (or created since ``since``, a backfill)."""
        base = self._window(state, since)
        if base is None:
            log.info("socrata.outside_window", source=self.spec.name, since=since)
            return
        f = self.spec.fields
        params: dict[str, Any] = {"$order": f"{self.cursor_field},{f.id}", "$limit": self.spec.page_size}
        if self.cursor_field.startswith(":"):
            params["$select"] = ":*,*"
        headers = {"X-App-Token": token} if (token := self.spec.token()) else {}
        if since is None:  # conditional only for a poll: a backfill must read whatever the validators say
            headers |= {k: v for k, v in (("If-None-Match", state.etag), ("If-Modified-Since", state.last_modified)) if v}
        after: tuple[str, str] | None = None
        offset = 0
        validators: tuple[str | None, str | None] | None = None
        types: dict[str, str] = {}
        while True:
            where = " AND ".join([*base, self._after(after, types)] if after else base)
            query = {**params, **({"$where": where} if where else {}), **({"$offset": offset} if offset else {})}
            rows, response = await get_json(client, self.url, query, headers, self.policy)
            headers.pop("If-None-Match", None)
            headers.pop("If-Modified-Since", None)
            if response.status_code == 304:
                yield RawPage([], None, not_modified=True, headers=_soda_headers(response))
                return
            if not isinstance(rows, list):
                raise ValueError(f"{self.spec.name}: expected a JSON array of rows, got {type(rows).__name__}")
            if validators is None:
                validators = (response.headers.get("ETag"), response.headers.get("Last-Modified"))
                types = _field_types(response)
            last = len(rows) < self.spec.page_size
            etag, modified = validators if last and rows else (None, None)
            yield RawPage(rows, _max_cursor(rows, self.cursor_field), etag, modified, headers=_soda_headers(response))
            if last:
                return
            key = _key(rows[-1], self.cursor_field, f.id)
            if key is None:
                offset += len(rows)
            elif key == after:
                raise RuntimeError(f"{self.spec.name}: the server ignored the page key {key}; stopping rather than looping")
            else:
                after, offset = key, 0

    def _window(self, state: IngestCursor, since: str | None) -> list[str] | None:
        """The ``$where`` clauses fixed for one run (``None`` when ``since`` is past this dataset):
        a backfill reads rows created since ``since``, a poll rows updated since the stored cursor
        less the overlap, a first poll everything in the dataset's window."""
        spec, f = self.spec, self.spec.fields
        clauses = []
        if since:
            if spec.active_until and _day(since) > _day(spec.active_until):
                return None
            start = spec.active_from if spec.active_from and _day(since) < _day(spec.active_from) else since
            clauses.append(f"{f.time} >= {_quote(_floating(start, spec.timezone))}")
        elif state.cursor:
            clauses.append(f"{self.cursor_field} >= {_quote(_shift(state.cursor, -spec.overlap_minutes))}")
        elif spec.active_from:
            clauses.append(f"{f.time} >= {_quote(_floating(spec.active_from, spec.timezone))}")
        if spec.active_until:
            end = datetime.combine(_day(spec.active_until) + timedelta(days=1), datetime.min.time())
            clauses.append(f"{f.time} < {_quote(end.isoformat(timespec='milliseconds'))}")
        return clauses

    def _after(self, key: tuple[str, str], types: dict[str, str]) -> str:
        """Rows strictly after ``key`` in ``$order``: ``(c > C) OR (c = C AND id > K)``."""
        c, k = self.cursor_field, self.spec.fields.id
        cursor, ident = _quote(key[0]), _literal(key[1], types.get(k))
        return f"({c} > {cursor} OR ({c} = {cursor} AND {k} > {ident}))"

    # ---- normalising ---------------------------------------------------------------------------
    def normalize(self, rows: list[dict[str, Any]]) -> pl.DataFrame:
        """Canonical frame of ``spec.table``, read column-wise (:class:`PageColumns`); export rows
        with portal headers are renamed first."""
        if rows and any(api_field_name(k) != k for k in rows[0]):
            rows = [api_row(r) for r in rows]
        if self.spec.table == "request":
            return request_frame(self.spec, rows)
        return chunked(rows, self._plan)

    def _plan(self, rows: Sequence[dict[str, Any]]) -> Callable[[], pl.DataFrame]:
        """Read an incident or closure chunk; the returned call makes its frame (see :func:`chunked`)."""
        f, table = self.spec.fields, self.spec.table
        page = PageColumns(rows, [f.id, f.time, f.end_time, f.category, f.descriptor, f.severity, f.lon, f.lat, *f.attrs])
        columns = {"source_id": page.text(f.id, lower_bools=True)}
        if table == "incident":
            types = page.text(f.category, lower_bools=True)
            severity = page.text(f.severity, lower_bools=True).cast(pl.Int16, strict=False) if f.severity else _severity(types)
            columns |= {"type": types, "severity": severity}
            times: dict[str, str | None] = {"ts": f.time}
        else:
            columns |= {"kind": page.text(f.category, lower_bools=True), "description": page.text(f.descriptor, lower_bools=True)}
            times = {"start_ts": f.time, "end_ts": f.end_time}
        columns["attrs"] = page.attrs(f.attrs)
        return partial(page.frame, CANONICAL_COLUMNS[table], columns, times, self.spec.timezone, (f.lon, f.lat, f.location))


def covering_sources(spec: SourceSpec, since: str | None, registry: Mapping[str, SourceSpec] | None = None) -> list[SourceSpec]:
    """The entries a run of ``spec`` from ``since`` needs, oldest first: ``spec`` and any sibling
    entry (same provider, portal, city, table and id field) of a split dataset whose
    ``active_from``..``active_until`` window reaches ``since`` or later.

    >>> [s.name for s in covering_sources(get_source("nyc311"), "2019-06-01")]  # doctest: +SKIP
    ['nyc311_2010_2019', 'nyc311']
    """
    if since is None or not (spec.active_from or spec.active_until):
        return [spec]
    registry = registry if registry is not None else load_registry()
    start = _day(since)
    siblings = [
        s
        for s in registry.values()
        if (s.provider, s.base_url, s.city, s.table, s.fields.id) == (spec.provider, spec.base_url, spec.city, spec.table, spec.fields.id)
        and (s.active_from or s.active_until)
        and (s.active_until is None or _day(s.active_until) >= start)
    ]
    return sorted(siblings or [spec], key=lambda s: s.active_from or "")


# ---- helpers -------------------------------------------------------------------------------------
def _key(row: dict[str, Any], cursor_field: str, id_field: str) -> tuple[str, str] | None:
    cursor, ident = get_path(row, cursor_field), get_path(row, id_field)
    return (str(cursor), str(ident)) if cursor not in (None, "") and ident not in (None, "") else None


def _parse(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.strip().removesuffix("Z"))
    except ValueError:
        return None


def _max_cursor(rows: Sequence[dict[str, Any]], field: str) -> str | None:
    """The newest cursor value of ``rows`` in its own spelling (``None`` when no row has one)."""
    values = [(t, str(v)) for r in rows if isinstance(v := get_path(r, field), str) and (t := _parse(v)) is not None]
    return max(values)[1] if values else None


def _shift(cursor: str, minutes: int) -> str:
    """``cursor`` moved by ``minutes``, in the same spelling (a trailing ``Z`` is kept)."""
    when = _parse(cursor)
    if when is None:
        return cursor
    shifted = (when + timedelta(minutes=minutes)).isoformat(timespec="milliseconds")
    return shifted + "Z" if cursor.strip().endswith("Z") else shifted


def _day(value: str) -> date:
    return datetime.fromisoformat(value).date() if "T" in value or " " in value else date.fromisoformat(value)


def _floating(value: str, timezone: str) -> str:
    """An ISO date or time as SODA's floating local timestamp (an aware time is moved to ``timezone``)."""
    when = datetime.fromisoformat(value)
    if when.tzinfo is not None:
        when = when.astimezone(ZoneInfo(timezone)).replace(tzinfo=None)
    return when.isoformat(timespec="milliseconds")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _literal(value: str, soda_type: str | None) -> str:
    """A SoQL literal for ``value``: bare for ``number`` columns, quoted otherwise."""
    if soda_type == "number":
        try:
            float(value)
            return value
        except ValueError:
            pass
    return _quote(value)


def _field_types(response: httpx.Response) -> dict[str, str]:
    """``X-SODA2-Fields`` -> ``X-SODA2-Types`` (empty when the server does not send them)."""
    try:
        fields, types = json.loads(response.headers["X-SODA2-Fields"]), json.loads(response.headers["X-SODA2-Types"])
    except (KeyError, ValueError):
        return {}
    return dict(zip(fields, types, strict=False))


def _soda_headers(response: httpx.Response) -> dict[str, str]:
    """The documented response headers worth keeping with a page (never request headers)."""
    keep = ("ETag", "Last-Modified", "X-SODA2-Fields", "X-SODA2-Types", "X-Socrata-RequestId")
    return {k: v for k in keep if (v := response.headers.get(k)) is not None}
