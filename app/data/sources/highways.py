"""National Highways (England's strategic road network) into the ``closure`` table: the weekly
planned-roadworks XML extract (``highways_xml``) and the DATEX II v3.4 closures API (``highways_datex``).

Planned-roadworks XML comes in two generations, both read by :func:`parse_planned_xml` into flat
rows with the newer generation's names:

* 2018 onward: root ``Report`` in namespace ``WebTeam``; one ``HE_PLANNED_WORKS`` element per works
  with attributes ``NEW_EVENT_NUMBER``, ``SDATE``/``EDATE`` (``31-DEC-2023 23:59``, UK local time),
  ``EXPDEL``, ``DESCRIPTION``, ``CLOSURE_TYPE``, ``STATUS``, ``PUBLISHED_DATE``, and children
  ``EASTNORTH//EASTNORTH[@CENTRE_EASTING][@CENTRE_NORTHING]`` (British National Grid) and
  ``ROADS//ROAD[@ROAD_NUMBER]``.
* 2016: root ``ha_planned_roadworks``, ``ha_planned_works`` elements with child elements
  (``reference_number``, ``start_date`` in ISO form, ``centre_easting``, ...), renamed here
  (``reference_number`` is that generation's only id and becomes ``NEW_EVENT_NUMBER``).

A weekly extract may list one works twice (re-published with a newer ``PUBLISHED_DATE``); the
newest publication wins. DATEX II rows are the API's situation records, each with its situation's
header under ``situation`` and its wrapper key (``sitRoadOrCarriagewayOrLaneManagement``) as
``recordType``. The subscription key goes in a header, server side only, and is never logged.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import polars as pl
from lxml import etree

from app.data.normalize import attrs_json, get_path, local_to_utc, project_to_wgs84
from app.data.registry import SourceSpec
from app.data.sources.base import CANONICAL_COLUMNS, IngestCursor, RawPage, register_adapter
from app.data.sources.http import RetryPolicy, get, get_json

__all__ = ["DatexClosuresAdapter", "PlannedRoadworksAdapter", "datex_records", "parse_planned_xml"]

#: 2016 element names -> the newer generation's attribute names.
_OLD_NAMES = {
    "reference_number": "NEW_EVENT_NUMBER",
    "road": "ROAD_NUMBER",
    "start_date": "SDATE",
    "end_date": "EDATE",
    "expected_delay": "EXPDEL",
    "centre_easting": "CENTRE_EASTING",
    "centre_northing": "CENTRE_NORTHING",
}
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)


def parse_planned_xml(data: bytes) -> list[dict[str, Any]]:
    """One planned-roadworks extract (either generation, gzipped or not) as flat rows.

    Values stay the strings of the file; ``ROAD_NUMBER`` is a list; absent fields are omitted.
    """
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    root = etree.fromstring(data, _PARSER)
    name = etree.QName(root).localname
    if name == "Report":
        return list(_webteam_rows(root))
    if name == "ha_planned_roadworks":
        return list(_rows_2016(root))
    raise ValueError(f"not a planned-roadworks extract: root element <{name}>")


def _webteam_rows(root: Any) -> Iterator[dict[str, Any]]:
    ns = etree.QName(root).namespace
    tag = (lambda t: f"{{{ns}}}{t}") if ns else (lambda t: t)
    for works in root.iter(tag("HE_PLANNED_WORKS")):
        row: dict[str, Any] = dict(works.attrib)
        for point in works.iter(tag("EASTNORTH")):
            if "CENTRE_EASTING" in point.attrib:
                row["CENTRE_EASTING"], row["CENTRE_NORTHING"] = point.get("CENTRE_EASTING"), point.get("CENTRE_NORTHING")
                break
        roads = [r.get("ROAD_NUMBER") for r in works.iter(tag("ROAD")) if r.get("ROAD_NUMBER")]
        if roads:
            row["ROAD_NUMBER"] = roads
        yield row


def _rows_2016(root: Any) -> Iterator[dict[str, Any]]:
    for works in root.iter("ha_planned_works"):
        row: dict[str, Any] = {}
        for child in works:
            if isinstance(child.tag, str) and child.text and child.text.strip():
                row[_OLD_NAMES.get(child.tag, child.tag.upper())] = child.text
        if "ROAD_NUMBER" in row:
            row["ROAD_NUMBER"] = [row["ROAD_NUMBER"]]
        yield row


def _conditional(state: IngestCursor, since: str | None) -> dict[str, str]:
    """Validators from the last committed run (none for an explicit backfill, which must re-read)."""
    if since is not None:
        return {}
    headers = {}
    if state.etag:
        headers["If-None-Match"] = state.etag
    if state.last_modified:
        headers["If-Modified-Since"] = state.last_modified
    return headers


def _url(spec: SourceSpec) -> str:
    return f"{spec.base_url.rstrip('/')}/{(spec.dataset or '').lstrip('/')}"


def _text(value: Any) -> str | None:
    """Free text from a string, a DATEX comment list (``[{"comment": ...}]``) or multilingual values."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = [t for v in value if (t := _text(v))]
        return "\n".join(parts) if parts else None
    if isinstance(value, dict):
        return _text(value.get("comment") or value.get("value") or value.get("values"))
    return str(value)


def _closure_frame(spec: SourceSpec, rows: Sequence[dict[str, Any]], x: np.ndarray, y: np.ndarray, attrs: list[str]) -> pl.DataFrame:
    """Canonical ``closure`` rows: times to UTC, points (in ``spec.crs``) to WGS84, 0/0 and missing
    unlocated; one row per id, the newest by ``fields.updated`` when the provider repeats one."""
    f = spec.fields

    def strings(path: str | None) -> pl.Series:
        return pl.Series([_text(get_path(r, path)) for r in rows], dtype=pl.String)

    lon, lat = project_to_wgs84(x, y, spec.crs)
    frame = pl.DataFrame(
        {
            "source_id": strings(f.id),
            "start_ts": local_to_utc(strings(f.time), spec.timezone),
            "end_ts": local_to_utc(strings(f.end_time), spec.timezone),
            "kind": strings(f.category),
            "description": strings(f.descriptor).str.replace_all("\r\n", "\n", literal=True).str.strip_chars(),
            "lon": lon,
            "lat": lat,
            "attrs": pl.Series(attrs, dtype=pl.String),
            "_updated": local_to_utc(strings(f.updated), spec.timezone),
        }
    )
    frame = frame.with_columns(pl.col(c).fill_nan(None) for c in ("lon", "lat"))
    frame = frame.sort("_updated", nulls_last=False, maintain_order=True).unique("source_id", keep="last", maintain_order=True)
    return frame.select(pl.col(c).cast(t) for c, t in CANONICAL_COLUMNS["closure"].items())


def _floats(rows: Sequence[dict[str, Any]], field: str | None) -> np.ndarray:
    values = pl.Series([get_path(r, field) if field else None for r in rows], dtype=pl.String)
    return values.cast(pl.Float64, strict=False).fill_null(np.nan).to_numpy().astype(np.float64)


@register_adapter("highways_xml")
class PlannedRoadworksAdapter:
    """The weekly planned-roadworks extract at ``base_url/dataset``: one page per poll, a full
    snapshot, skipped (``not_modified``) when ETag / Last-Modified say it has not changed.

    >>> adapter = PlannedRoadworksAdapter(get_source("uk_planned_roadworks"))  # doctest: +SKIP
    >>> frame = adapter.normalize(parse_planned_xml(path.read_bytes()))        # doctest: +SKIP
    """

    def __init__(self, spec: SourceSpec, policy: RetryPolicy | None = None) -> None:
        self.spec, self.policy = spec, policy or RetryPolicy()

    async def pages(self, client: httpx.AsyncClient, state: IngestCursor, since: str | None = None) -> AsyncIterator[RawPage]:
        """The extract; ``since`` is ignored beyond forcing a full read (a snapshot has no window)."""
        response = await get(
            client, _url(self.spec), headers=_conditional(state, since), policy=self.policy, check=lambda r: parse_planned_xml(r.content)
        )
        if response.status_code == 304:
            yield RawPage([], None, not_modified=True)
            return
        rows = parse_planned_xml(response.content)  # parsed again: the check above only proves it is whole
        published = [p for r in rows if isinstance(p := r.get("PUBLISHED_DATE"), str)]
        yield RawPage(
            rows,
            cursor=max(published) if published else None,  # ISO strings: newest publication seen
            etag=response.headers.get("ETag"),
            last_modified=response.headers.get("Last-Modified"),
            headers=_kept_headers(response),
        )

    def normalize(self, rows: list[dict[str, Any]]) -> pl.DataFrame:
        f = self.spec.fields
        return _closure_frame(self.spec, rows, _floats(rows, f.lon), _floats(rows, f.lat), attrs_json(rows, f.attrs))


def datex_records(payload: Any) -> list[dict[str, Any]]:
    """Situation records of one DATEX II JSON page (``{"D2Payload": ...}`` or the bare payload)."""
    body = payload.get("D2Payload", payload) if isinstance(payload, dict) else {}
    rows = []
    for situation in body.get("situation") or []:
        header = {k: v for k, v in situation.items() if k != "situationRecord"}
        for wrapper in situation.get("situationRecord") or []:
            for record_type, record in wrapper.items():
                if isinstance(record, dict):
                    rows.append({**record, "recordType": record_type, "situation": header})
    return rows


def _walk(value: Any, key: str) -> Iterator[Any]:
    """Every value stored under ``key`` anywhere inside ``value`` (document order)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key:
                yield v
            else:
                yield from _walk(v, key)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v, key)


def _datex_point(location: Any) -> tuple[float, float]:
    """A representative (lon, lat): the middle vertex of all the record's line strings (``posList``
    is "lat lon lat lon ..." in EPSG:4326), or its point coordinates; NaN when it has none."""
    vertices: list[tuple[float, float]] = []
    for pos in _walk(location, "posList"):
        try:
            v = [float(t) for t in str(pos).split()]
        except ValueError:
            continue
        vertices.extend(zip(v[1::2], v[0::2], strict=False))
    for coords in _walk(location, "pointCoordinates"):
        if isinstance(coords, dict) and "latitude" in coords and "longitude" in coords:
            vertices.append((float(coords["longitude"]), float(coords["latitude"])))
    return vertices[len(vertices) // 2] if vertices else (np.nan, np.nan)


@register_adapter("highways_datex")
class DatexClosuresAdapter:
    """``GET base_url/dataset`` (``roads/v2.0/closures``) with the subscription key, following the
    ``x-next`` cursor URLs; incremental through ``modifiedSinceDateTime`` (the newest
    ``situationRecordVersionTime`` committed, less ``spec.overlap_minutes``)."""

    def __init__(self, spec: SourceSpec, policy: RetryPolicy | None = None) -> None:
        self.spec, self.policy = spec, policy or RetryPolicy()

    async def pages(self, client: httpx.AsyncClient, state: IngestCursor, since: str | None = None) -> AsyncIterator[RawPage]:
        key = self.spec.token()
        if not key:
            raise RuntimeError(f"{self.spec.name}: set {self.spec.token_env} to the National Highways subscription key")
        headers = {"Ocp-Apim-Subscription-Key": key, "X-Response-MediaType": "application/json", "Accept": "application/json"}
        params: dict[str, str] = {}
        if since is not None:
            params["startDateTime"] = since if "T" in since else f"{since}T00:00:00"
        elif state.cursor:
            after = datetime.fromisoformat(state.cursor) - timedelta(minutes=self.spec.overlap_minutes)
            params["modifiedSinceDateTime"] = after.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        url: str | None = _url(self.spec)
        newest = datetime.fromisoformat(state.cursor) if state.cursor and since is None else None
        seen: set[str] = set()
        first = True
        while url and url not in seen:
            seen.add(url)
            request_headers = {**headers, **_conditional(state, since)} if first else headers
            payload, response = await get_json(client, url, params if first else None, request_headers, self.policy)
            first = False
            if response.status_code == 304:
                yield RawPage([], None, not_modified=True)
                return
            rows = datex_records(payload)
            for r in rows:
                version = r.get("situationRecordVersionTime")
                if isinstance(version, str):
                    when = datetime.fromisoformat(version)
                    newest = when if newest is None or when > newest else newest
            url = response.headers.get("x-next") or None
            last = url is None or url in seen
            # Cursor and validators only with the last page: a run that dies mid-way re-reads it all.
            yield RawPage(
                rows,
                cursor=newest.isoformat() if last and newest else None,
                etag=response.headers.get("ETag") if last else None,
                last_modified=response.headers.get("Last-Modified") if last else None,
                headers=_kept_headers(response),
            )

    def normalize(self, rows: list[dict[str, Any]]) -> pl.DataFrame:
        f = self.spec.fields
        points = [_datex_point(get_path(r, f.location)) for r in rows]
        x = np.array([p[0] for p in points], dtype=np.float64)
        y = np.array([p[1] for p in points], dtype=np.float64)
        roads = [list(dict.fromkeys(str(n) for n in _walk(get_path(r, f.location), "roadName"))) for r in rows]
        attrs = attrs_json([{**r, "roads": rd or None} for r, rd in zip(rows, roads, strict=True)], [*f.attrs, "roads"])
        return _closure_frame(self.spec, rows, x, y, attrs)


def _kept_headers(response: httpx.Response) -> dict[str, str]:
    """Response headers worth keeping with a page (never request headers: those carry the key)."""
    keep = ("content-type", "etag", "last-modified", "x-next", "date")
    return {k: v for k, v in response.headers.items() if k.lower() in keep}
