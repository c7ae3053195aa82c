"""Which rules new events match: pure, vectorised functions (polars and shapely; no loop over
events, and none over rules inside a kind).

``events`` carries one row per new event: ``event_id, source, kind, category, lon, lat, text,
address`` and the unit ids of every level (``tract``, ``neighborhood``, ``borough``; null when
unknown). ``rules`` is a list of ``(rule_id, spec, filters)``. The result lists each
``(rule_id, event_id)`` match once, in no particular order.

* radius: an STRtree of the circles' bounding boxes finds candidate pairs in one bulk query, the
  haversine distance of each pair decides;
* polygon: an STRtree of the polygons, one bulk ``intersects`` query (GEOS, prepared);
* keyword and plate: one Aho-Corasick pass over all patterns (``str.extract_many``), then a join;
* address and area: joins on the normalised address and on the unit id.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import shapely
from shapely.geometry import shape

from app.alerts.rules import (
    AddressRule,
    AreaRule,
    Filters,
    KeywordRule,
    PlateRule,
    PolygonRule,
    RadiusRule,
    normalize_address,
)

__all__ = ["EARTH_RADIUS_M", "MATCH_SCHEMA", "match_events"]

EARTH_RADIUS_M = 6_371_008.8
MATCH_SCHEMA = {"rule_id": pl.Int64, "event_id": pl.String}
Rules = Sequence[tuple[int, object, Filters]]


def match_events(rules: Rules, events: pl.DataFrame) -> pl.DataFrame:
    """Every ``(rule_id, event_id)`` where the event satisfies the rule and its filters."""
    if not rules or events.height == 0:
        return pl.DataFrame(schema=MATCH_SCHEMA)
    events = events.with_row_index("_e")
    parts = [
        _radius([(i, s) for i, s, _ in rules if isinstance(s, RadiusRule)], events),
        _polygon([(i, s) for i, s, _ in rules if isinstance(s, PolygonRule)], events),
        _patterns([(i, s.keyword.lower()) for i, s, _ in rules if isinstance(s, KeywordRule)], events, _keyword_text()),
        _patterns([(i, s.plate) for i, s, _ in rules if isinstance(s, PlateRule)], events, _plate_text()),
        _address([(i, s) for i, s, _ in rules if isinstance(s, AddressRule)], events),
        _area([(i, s) for i, s, _ in rules if isinstance(s, AreaRule)], events),
    ]
    found = [p for p in parts if p.height]
    if not found:
        return pl.DataFrame(schema=MATCH_SCHEMA)
    pairs = pl.concat(found, how="vertical")  # each kind yields a (rule, event) pair at most once
    for column in ("category", "kind", "source"):
        pairs = _filtered(pairs, rules, events, column)
    return pairs.select("rule_id", event_id=events["event_id"].gather(pairs["_e"]))


def _filtered(pairs: pl.DataFrame, rules: Rules, events: pl.DataFrame, column: str) -> pl.DataFrame:
    """``pairs`` whose event's ``column`` the rule allows (rules without that filter keep all)."""
    field = {"category": "categories", "kind": "kinds", "source": "sources"}[column]
    allowed = [(i, v) for i, _, f in rules for v in getattr(f, field)]
    if not allowed:
        return pairs
    table = pl.DataFrame(allowed, schema={"rule_id": pl.Int64, "_v": pl.String}, orient="row")
    narrowed = table["rule_id"].unique()
    free = pairs.filter(~pl.col("rule_id").is_in(narrowed.implode()))
    held = pairs.filter(pl.col("rule_id").is_in(narrowed.implode()))
    held = held.with_columns(_v=events[column].gather(held["_e"])).join(table, on=["rule_id", "_v"], how="semi").drop("_v")
    return pl.concat([free, held])


def _pairs(rule_ids: np.ndarray, rows: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({"rule_id": rule_ids.astype(np.int64), "_e": rows.astype(np.uint32)})


def _points(events: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows, longitudes, latitudes and points of the located events."""
    located = events.filter(pl.col("lon").is_not_null() & pl.col("lat").is_not_null())
    lon, lat = located["lon"].to_numpy(), located["lat"].to_numpy()
    return located["_e"].to_numpy(), lon, lat, shapely.points(lon, lat)


def _radius(rules: list[tuple[int, RadiusRule]], events: pl.DataFrame) -> pl.DataFrame:
    if not rules:
        return _pairs(np.empty(0), np.empty(0))
    ids = np.array([i for i, _ in rules])
    lat = np.array([r.lat for _, r in rules])
    lon = np.array([r.lon for _, r in rules])
    radius = np.array([r.radius_m for _, r in rules])
    dlat = np.degrees(radius / EARTH_RADIUS_M) * 1.001
    dlon = dlat / np.maximum(np.cos(np.radians(np.minimum(np.abs(lat) + dlat, 89.9))), 1e-6)
    tree = shapely.STRtree(shapely.box(lon - dlon, lat - dlat, lon + dlon, lat + dlat))
    rows, elon, elat, points = _points(events)
    if rows.size == 0:
        return _pairs(np.empty(0), np.empty(0))
    p, r = tree.query(points)
    d = _haversine(elat[p], elon[p], lat[r], lon[r])
    keep = d <= radius[r]
    return _pairs(ids[r[keep]], rows[p[keep]])


def _haversine(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    out: np.ndarray = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0, 1)))
    return out


def _polygon(rules: list[tuple[int, PolygonRule]], events: pl.DataFrame) -> pl.DataFrame:
    if not rules:
        return _pairs(np.empty(0), np.empty(0))
    ids = np.array([i for i, _ in rules])
    shapes = np.array([shape(r.geometry) for _, r in rules])
    shapely.prepare(shapes)
    rows, _, _, points = _points(events)
    if rows.size == 0:
        return _pairs(np.empty(0), np.empty(0))
    p, r = shapely.STRtree(shapes).query(points, predicate="intersects")
    return _pairs(ids[r], rows[p])


def _keyword_text() -> pl.Expr:
    return pl.concat_str([pl.col("text").fill_null(""), pl.col("address").fill_null("")], separator="\n").str.to_lowercase()


def _plate_text() -> pl.Expr:
    """Text and address, each upper-cased to letters and digits, joined by ``|`` (which no plate
    holds, so a plate never matches across the two fields)."""
    fields = [pl.col(c).fill_null("").str.to_uppercase().str.replace_all(r"[^0-9A-Z]", "") for c in ("text", "address")]
    return pl.concat_str(fields, separator="|")


def _patterns(rules: list[tuple[int, str]], events: pl.DataFrame, text: pl.Expr) -> pl.DataFrame:
    """Rules whose pattern occurs in ``text``: all patterns in one Aho-Corasick pass."""
    if not rules:
        return _pairs(np.empty(0), np.empty(0))
    wanted = pl.DataFrame({"rule_id": [i for i, _ in rules], "_p": [p for _, p in rules]}, schema={"rule_id": pl.Int64, "_p": pl.String})
    patterns = wanted["_p"].unique()
    found = events.select("_e", _p=text.str.extract_many(patterns.implode(), overlapping=True)).explode("_p").drop_nulls("_p").unique()
    return found.join(wanted, on="_p").select("rule_id", "_e")


def _address(rules: list[tuple[int, AddressRule]], events: pl.DataFrame) -> pl.DataFrame:
    if not rules:
        return _pairs(np.empty(0), np.empty(0))
    wanted = pl.DataFrame(
        {"rule_id": [i for i, _ in rules], "_a": [normalize_address(r.address) for _, r in rules]},
        schema={"rule_id": pl.Int64, "_a": pl.String},
    )
    norm = pl.col("address").str.to_uppercase().str.replace_all(r"[^0-9A-Z]+", " ").str.strip_chars().str.replace_all(" +", " ")
    return events.select("_e", _a=norm).drop_nulls("_a").join(wanted, on="_a").select("rule_id", "_e")


def _area(rules: list[tuple[int, AreaRule]], events: pl.DataFrame) -> pl.DataFrame:
    if not rules:
        return _pairs(np.empty(0), np.empty(0))
    wanted = pl.DataFrame(
        {"rule_id": [i for i, _ in rules], "level": [r.level for _, r in rules], "unit_id": [r.unit_id for _, r in rules]},
        schema={"rule_id": pl.Int64, "level": pl.String, "unit_id": pl.String},
    )
    levels = [lvl for lvl in ("tract", "neighborhood", "borough") if lvl in events.columns]
    units = events.unpivot(index="_e", on=levels, variable_name="level", value_name="unit_id").drop_nulls("unit_id")
    return units.join(wanted, on=["level", "unit_id"]).select("rule_id", "_e")
