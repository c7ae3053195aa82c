"""What a rule would have matched in the last 30 days of a snapshot, before it is saved: the count,
the alerts to expect per day (with the daily cap applied), the matches for a map and the rule's
geometry to draw under them.

Event rules are matched by :func:`app.alerts.matching.match_events` over the rows of the window,
prepared by :func:`app.alerts.evaluate.alert_events`: the matcher and preparation live alerts use.
Anomaly rules see the anomalies the snapshot released in the window, read through a
:class:`app.engine.lens.Lens` as :func:`app.alerts.evaluate.evaluate_anomalies` reads them, so a
preview shows released numbers only. The window ends at the city's newest event (anomalies: where
the rule's level is published up to), so a snapshot of old data still previews its last month.

>>> preview_rule(snapshot, "nyc", RadiusRule(lat=40.75, lon=-73.99, radius_m=300), Filters())  # doctest: +SKIP
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import shapely
from pydantic import BaseModel, Field
from shapely.geometry import mapping

from app.alerts.evaluate import alert_events, anomaly_matches, released_anomalies
from app.alerts.matching import EARTH_RADIUS_M, match_events
from app.alerts.rules import AnomalyRule, AreaRule, Filters, PolygonRule, RadiusRule
from app.data.snapshot import Snapshot

__all__ = ["MAX_SHOWN", "WINDOW", "DayCount", "Preview", "PreviewAnomaly", "PreviewMatch", "circle", "preview_rule"]

#: How far back a preview looks from the newest data.
WINDOW = timedelta(days=30)
#: Matches listed at most (the count and per-day figures cover all of them).
MAX_SHOWN = 500
_CIRCLE_VERTICES = 64


class PreviewMatch(BaseModel):
    """An event the rule would have alerted on: the provider's id, time, place and category."""

    id: str
    source: str
    kind: str
    time: datetime
    category: str | None
    address: str | None = Field(description="The provider's address field, where the source has one.")
    lon: float | None
    lat: float | None


class PreviewAnomaly(BaseModel):
    """A released anomaly the rule would have fired on (released numbers and narrative only)."""

    unit_id: str
    unit_name: str | None
    category: str
    bin_start: datetime
    bin_end: datetime
    count: int
    zscore: float | None
    q: float | None
    effect: str | None
    narrative: str


class DayCount(BaseModel):
    """Matches of one local day (the rule's time zone) and the alerts a daily cap would let out."""

    date: date
    matches: int
    alerts: int = Field(description="min(matches, daily_cap): what would have been sent that day.")


class Preview(BaseModel):
    """The rule over the last 30 days of the snapshot."""

    snapshot_id: str
    city: str
    kind: str
    timezone: str
    since: datetime | None = Field(description="Window start (exclusive); null when the city has no data yet.")
    until: datetime | None = Field(description="Window end (inclusive): the newest event, or where anomalies are published up to.")
    window_days: int = WINDOW.days
    total: int = Field(description="Matches in the window.")
    expected_per_day: float = Field(description="total / 30.")
    expected_alerts_per_day: float = Field(description="Alerts per day with the daily cap applied (equal to expected_per_day without one).")
    daily_cap: int | None
    days: list[DayCount] = Field(description="Every local day of the window, oldest first.")
    matches: list[PreviewMatch] = Field(description=f"Matched events, newest first, at most {MAX_SHOWN}.")
    anomalies: list[PreviewAnomaly] = Field(description=f"Anomaly rules: the anomalies fired on, newest first, at most {MAX_SHOWN}.")
    truncated: bool = Field(description="More matched than are listed.")
    geometry: dict[str, Any] | None = Field(
        description="GeoJSON geometry of what the rule watches (a radius as a circle polygon, a polygon as given, an area or the "
        "anomaly rule's units as their outlines); null for rules without a place."
    )


def preview_rule(
    snapshot: Snapshot,
    city: str,
    spec: Any,
    filters: Filters,
    *,
    timezone: str = "UTC",
    daily_cap: int | None = None,
    most: int = MAX_SHOWN,
) -> Preview:
    """Run ``spec`` with ``filters`` over the last :data:`WINDOW` of ``city`` in ``snapshot``."""
    if isinstance(spec, AnomalyRule):
        until, times, anomalies, matches = _anomalies(snapshot, city, spec, filters, most)
    else:
        until, times, matches, anomalies = *_events(snapshot, city, spec, filters, most), []
    since = until - WINDOW if until is not None else None
    days = _days(times, since, until, timezone, daily_cap)
    total = times.len()
    return Preview(
        snapshot_id=snapshot.id,
        city=city,
        kind=spec.kind,
        timezone=timezone,
        since=since,
        until=until,
        total=total,
        expected_per_day=round(total / WINDOW.days, 3),
        expected_alerts_per_day=round(sum(d.alerts for d in days) / WINDOW.days, 3),
        daily_cap=daily_cap,
        days=days,
        matches=matches,
        anomalies=anomalies,
        truncated=total > most,
        geometry=_geometry(snapshot, city, spec),
    )


def _events(snapshot: Snapshot, city: str, spec: Any, filters: Filters, most: int) -> tuple[datetime | None, pl.Series, list[PreviewMatch]]:
    until = snapshot.newest_event_time(city)
    if until is None:
        return None, pl.Series("ts", [], pl.Datetime("us", "UTC")), []
    rows = snapshot.rows_between(city, until - WINDOW, until)
    if rows.height == 0:
        return until, pl.Series("ts", [], pl.Datetime("us", "UTC")), []
    events = alert_events(rows, snapshot.units(city))
    found = match_events([(0, spec, filters)], events)
    matched = events.join(found.select("event_id").unique(), on="event_id", how="semi").sort(["ts", "event_id"], descending=True)
    shown = [
        PreviewMatch(
            id=r["event_id"],
            source=r["source"],
            kind=r["kind"],
            time=r["ts"],
            category=r["category"],
            address=r["address"],
            lon=r["lon"],
            lat=r["lat"],
        )
        for r in matched.head(most).iter_rows(named=True)
    ]
    return until, matched["ts"], shown


def _anomalies(
    snapshot: Snapshot, city: str, spec: AnomalyRule, filters: Filters, most: int
) -> tuple[datetime | None, pl.Series, list[PreviewAnomaly], list[PreviewMatch]]:
    from app.engine.lens import Lens  # the engine's reader; imported here to keep start-up light

    lens = Lens(snapshot=snapshot, city=city, level=spec.level)
    until = lens.published_until(spec.level)
    empty = pl.Series("bin_start", [], pl.Datetime("us", "UTC"))
    if until is None:
        return None, empty, [], []
    mine = anomaly_matches(released_anomalies(lens, until - WINDOW, until), spec, filters)
    if mine.height == 0:
        return until, empty, [], []
    mine = mine.sort(["bin_start", "zscore"], descending=True)
    shown = [
        PreviewAnomaly(
            unit_id=r["unit_id"],
            unit_name=r.get("name"),
            category=r["category"],
            bin_start=r["bin_start"],
            bin_end=r["bin_end"],
            count=r["count"],
            zscore=r["zscore"],
            q=r["q"],
            effect=r.get("effect"),
            narrative=r["narrative"],
        )
        for r in mine.head(most).iter_rows(named=True)
    ]
    return until, mine["bin_start"], shown, []


def _days(times: pl.Series, since: datetime | None, until: datetime | None, timezone: str, cap: int | None) -> list[DayCount]:
    """Matches per local day of the window (every day, zeros included)."""
    if since is None or until is None:
        return []
    local = pl.DataFrame({"t": times}).select(day=pl.col("t").dt.convert_time_zone(timezone).dt.date())
    counts = dict(local.group_by("day").len().iter_rows())
    bounds = pl.Series([since, until]).dt.convert_time_zone(timezone).dt.date().to_list()
    first, last = bounds[0], bounds[1]
    out = []
    for n in range((last - first).days + 1):
        day = first + timedelta(days=n)
        found = int(counts.get(day, 0))
        out.append(DayCount(date=day, matches=found, alerts=min(found, cap) if cap is not None else found))
    return out


def circle(lat: float, lon: float, radius_m: float, vertices: int = _CIRCLE_VERTICES) -> dict[str, Any]:
    """A GeoJSON polygon of the points ``radius_m`` metres (great-circle) from a centre."""
    bearing = np.linspace(0.0, 2 * np.pi, vertices + 1)
    d = radius_m / EARTH_RADIUS_M
    p1, l1 = np.radians(lat), np.radians(lon)
    p2 = np.arcsin(np.sin(p1) * np.cos(d) + np.cos(p1) * np.sin(d) * np.cos(bearing))
    l2 = l1 + np.arctan2(np.sin(bearing) * np.sin(d) * np.cos(p1), np.cos(d) - np.sin(p1) * np.sin(p2))
    ring = np.column_stack([np.degrees(l2), np.degrees(p2)])
    ring[-1] = ring[0]  # closed exactly
    return {"type": "Polygon", "coordinates": [ring.round(7).tolist()]}


def _geometry(snapshot: Snapshot, city: str, spec: Any) -> dict[str, Any] | None:
    if isinstance(spec, RadiusRule):
        return circle(spec.lat, spec.lon, spec.radius_m)
    if isinstance(spec, PolygonRule):
        return spec.geometry
    if isinstance(spec, AreaRule):
        return _outlines(snapshot, city, spec.level, [spec.unit_id])
    if isinstance(spec, AnomalyRule) and spec.unit_ids and spec.level != "city":
        return _outlines(snapshot, city, spec.level, spec.unit_ids)
    return None


def _outlines(snapshot: Snapshot, city: str, level: str, unit_ids: list[str]) -> dict[str, Any] | None:
    """The units' outlines from the snapshot's geography (one geometry, or a collection)."""
    wkb = snapshot.unit_geometries(city, level).filter(pl.col("unit_id").is_in(unit_ids))["geom_wkb"].drop_nulls().to_list()
    if not wkb:
        return None
    shapes = shapely.from_wkb(wkb)
    out = shapes[0] if len(shapes) == 1 else shapely.geometrycollections(list(shapes))
    return dict(mapping(out))
