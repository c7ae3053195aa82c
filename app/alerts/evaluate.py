"""Evaluation of event rules against a newly published snapshot: the rows stored since the cursor,
matched (:func:`app.alerts.matching.match_events`) and queued with the cursor move in one
transaction (:meth:`app.alerts.store.AlertStore.enqueue`).

The cursor is the ``valid_from`` (when a row was stored) of the newest row evaluated. Each
evaluation re-reads :data:`OVERLAP` before it, so a row committed late by a slow ingest is not
missed; the queue's unique (rule, endpoint, source, item) makes the re-read free of duplicates. A
city evaluated for the first time starts at its newest row: rules watch what arrives from then on
(the preview shows the past), and the re-read never reaches before that start (the cursor's
position keeps both instants). An event alert relays the provider's own record (its published
fields, as the provider published them) and the place and time it gives; never a count.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl
import structlog

from app.alerts.matching import match_events
from app.alerts.rules import AnomalyRule, Filters
from app.alerts.store import AlertStore, Match
from app.data.geography import tract_parents
from app.data.snapshot import Snapshot

if TYPE_CHECKING:
    from app.engine.lens import Lens

__all__ = [
    "ADDRESS_FIELDS",
    "OVERLAP",
    "STREAM",
    "alert_events",
    "anomaly_matches",
    "anomaly_stream",
    "evaluate_anomalies",
    "evaluate_events",
    "evaluate_snapshot",
    "released_anomalies",
]

log = structlog.get_logger(__name__)

#: Name of the event stream's cursor in the alerts store.
STREAM = "events"
#: How far before the cursor each evaluation re-reads.
OVERLAP = timedelta(minutes=15)
#: Provider fields (kept in ``attrs`` by the registry) holding a row's street address, first found
#: wins: NYC 311 ``incident_address``, Chicago 311 ``street_address``, Chicago crimes ``block``
#: (a block, e.g. "012XX W MADISON ST"), Open311 and SeeClickFix ``address``.
ADDRESS_FIELDS = ("incident_address", "street_address", "block", "address")


def alert_events(rows: pl.DataFrame, units: pl.DataFrame) -> pl.DataFrame:
    """Rows of :meth:`app.data.snapshot.Snapshot.rows_stored_after` as the matcher takes them:
    plus ``address`` (the provider's address field) and the unit ids of ``tract``,
    ``neighborhood`` and ``borough`` (a row known only by its neighborhood keeps that one)."""
    address = (
        pl.coalesce([pl.col("attrs").str.json_path_match(f"$.{f}") for f in ADDRESS_FIELDS]) if rows.height else pl.lit(None, pl.String)
    )
    parents = tract_parents(units).select("tract_id", "neighborhood_id", "borough_id") if units.height else None
    out = rows.with_columns(address=address)
    if parents is not None:
        out = out.join(parents, on="tract_id", how="left")
        areas = units.filter(pl.col("level") == "neighborhood").select(area_id="unit_id", _area_borough="parent_id")
        out = out.join(areas, on="area_id", how="left").with_columns(
            neighborhood_id=pl.coalesce("neighborhood_id", pl.when(pl.col("tract_id").is_null()).then(pl.col("area_id"))),
            borough_id=pl.coalesce("borough_id", "_area_borough"),
        )
        out = out.drop("_area_borough")
    else:
        out = out.with_columns(neighborhood_id=pl.lit(None, pl.String), borough_id=pl.lit(None, pl.String))
    return out.rename({"tract_id": "tract", "neighborhood_id": "neighborhood", "borough_id": "borough"})


def _payload(row: dict[str, Any], city: str, rule_id: int) -> dict[str, Any]:
    """What a delivery of an event alert carries: the provider's record and where and when."""
    record = json.loads(row["attrs"]) if row.get("attrs") else {}
    return {
        "type": "event",
        "rule_id": rule_id,
        "city": city,
        "source": row["source"],
        "id": row["event_id"],
        "kind": row["kind"],
        "category": row["category"],
        "time": row["ts"].isoformat() if isinstance(row["ts"], datetime) else None,
        "text": row["text"],
        "address": row["address"],
        "lon": row["lon"],
        "lat": row["lat"],
        "record": record,
    }


def _position(cursor: datetime, start: datetime) -> str:
    """The stored cursor: the newest row evaluated and when the watch started."""
    return f"{cursor.isoformat()} {start.isoformat()}"


def evaluate_events(store: AlertStore, snapshot: Snapshot, city: str, now: datetime | None = None) -> int:
    """Match ``city``'s rows stored since the cursor against its live event rules and queue the
    deliveries (see the module docstring); returns how many deliveries are new."""
    position = store.cursor(city, STREAM)
    newest = snapshot.newest_stored(city)
    if newest is None:
        return 0
    if position is None:  # first evaluation: watch from the newest row on
        store.enqueue(city, STREAM, _position(newest, newest), [], now=now)
        return 0
    cursor, start = (datetime.fromisoformat(part) for part in position.split(" "))
    rules = store.event_rules(city)
    rows = snapshot.rows_stored_after(city, max(cursor - OVERLAP, start))
    moved = _position(max(newest, cursor), start)
    if not rules or rows.height == 0:
        store.enqueue(city, STREAM, moved, [], now=now)
        return 0
    events = alert_events(rows, snapshot.units(city))
    found = match_events(rules, events)
    by_id = {r["event_id"]: r for r in events.filter(pl.col("event_id").is_in(found["event_id"].unique().implode())).iter_rows(named=True)}
    matches: list[Match] = []
    for rule_id, event_id in found.iter_rows():
        row = by_id[event_id]
        matches.append((rule_id, row["source"], row["event_id"], _payload(row, city, rule_id)))
    added = store.enqueue(city, STREAM, moved, matches, now=now)
    log.info("alerts.evaluated", city=city, rows=rows.height, rules=len(rules), matches=len(matches), queued=added)
    return added


def evaluate_snapshot(store: AlertStore, snapshot: Snapshot, now: datetime | None = None) -> int:
    """Event and anomaly rules of every city of a newly published snapshot (what the scheduler
    runs after each publish); returns how many deliveries are new."""
    return sum(evaluate_events(store, snapshot, city, now) + evaluate_anomalies(store, snapshot, city, now) for city in snapshot.cities())


def anomaly_stream(level: str) -> str:
    """Name of the cursor of ``level``'s released anomalies."""
    return f"anomalies:{level}"


def evaluate_anomalies(store: AlertStore, snapshot: Snapshot, city: str, now: datetime | None = None) -> int:
    """Queue the anomalies of ``city`` newly released by ``snapshot`` (bins published since the
    level's cursor, the previous snapshot's end of published data) for the live anomaly rules.

    Each is read through a :class:`app.engine.lens.Lens` of the snapshot, as the dashboard and API
    read it, so an alert carries released numbers and the published narrative only; a withheld cell
    is never scored and never alerts. Returns how many deliveries are new."""
    from app.engine.lens import Lens  # the engine's reader; imported here to keep start-up light

    rules = store.anomaly_rules(city)
    added = 0
    for level in sorted({spec.level for _, spec, _ in rules}):
        lens = Lens(snapshot=snapshot, city=city, level=level)
        until = lens.published_until(level)
        if until is None:
            continue
        stream = anomaly_stream(level)
        position = store.cursor(city, stream)
        since = datetime.fromisoformat(position) if position is not None else until
        if since >= until:
            store.enqueue(city, stream, until.isoformat(), [], now=now)
            continue
        found = released_anomalies(lens, since, until)
        matches: list[Match] = []
        for rule_id, spec, filters in rules:
            if spec.level != level or found.height == 0:
                continue
            for row in anomaly_matches(found, spec, filters).iter_rows(named=True):
                item = f"{level}/{row['unit_id']}/{row['category']}/{row['bin_start'].isoformat()}"
                matches.append((rule_id, "anomaly", item, _anomaly_payload(row, city, level, rule_id, snapshot.id)))
        added += store.enqueue(city, stream, until.isoformat(), matches, now=now)
    return added


def released_anomalies(lens: Lens, since: datetime, until: datetime) -> pl.DataFrame:
    """Every released, scored anomaly cell of the lens' city and level with a bin in
    ``[since, until)`` at the level's published grain, with no z or q threshold (the rules apply
    theirs: :func:`anomaly_matches`)."""
    lens.param.update(since=since, until=until, time_bin=lens.grain_of(lens.level), min_z=0.0, q=1.0)
    found, _ = lens.anomalies(everywhere=True)
    return found


def anomaly_matches(found: pl.DataFrame, spec: AnomalyRule, filters: Filters) -> pl.DataFrame:
    """The anomalies of ``found`` (a lens' released anomalies at the rule's level, scored with no
    threshold) that the rule fires on: its z and q thresholds, units, categories and effects."""
    if found.height == 0:
        return found
    mine = found.filter((pl.col("zscore") >= spec.min_z) & (pl.col("q") <= spec.max_q))
    if spec.unit_ids:
        mine = mine.filter(pl.col("unit_id").is_in(spec.unit_ids))
    if filters.categories:
        mine = mine.filter(pl.col("category").is_in(filters.categories))
    if spec.effects:
        mine = mine.filter(pl.col("effect").is_in(spec.effects))
    return mine


def _anomaly_payload(row: dict[str, Any], city: str, level: str, rule_id: int, snapshot_id: str) -> dict[str, Any]:
    """What an anomaly alert carries: the released cell's published numbers and its narrative."""

    def num(value: Any) -> float | None:
        return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else float(value)

    return {
        "type": "anomaly",
        "rule_id": rule_id,
        "city": city,
        "snapshot": snapshot_id,
        "level": level,
        "unit_id": row["unit_id"],
        "unit_name": row.get("name"),
        "category": row["category"],
        "bin_start": row["bin_start"].isoformat(),
        "bin_end": row["bin_end"].isoformat(),
        "count": row["count"],
        "expected": num(row["expected"]),
        "zscore": num(row["zscore"]),
        "p": num(row["p"]),
        "q": num(row["q"]),
        "effect": row.get("effect"),
        "narrative": row["narrative"],
    }
