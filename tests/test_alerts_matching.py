"""Vectorised rule matching against a plain per-pair oracle on random rules and events, and the
edge cases a user meets: regex characters taken literally, overlapping keywords, case, plates with
dashes, addresses with punctuation, boundaries, filters, unlocated events."""

from __future__ import annotations

import math
import time

import numpy as np
import polars as pl
import pytest
from pydantic import TypeAdapter, ValidationError
from shapely.geometry import Point, shape

from app.alerts.matching import EARTH_RADIUS_M, match_events
from app.alerts.rules import (
    AddressRule,
    AreaRule,
    Filters,
    KeywordRule,
    PlateRule,
    PolygonRule,
    RadiusRule,
    RuleSpec,
    normalize_address,
    normalize_plate,
)

WORDS = ["Noise", "noise - street", "Heat/Hot Water", "a.b", "[x]", "Pothole", "Blocked Driveway", "ÉCOLE"]
CATS = ["Noise", "Heat", "Street"]


def _events(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    lon = rng.uniform(-74.05, -73.85, n)
    lat = rng.uniform(40.60, 40.80, n)
    located = rng.random(n) > 0.1
    texts = [" ".join(rng.choice([*WORDS, "plate AB-12 34", "other", "x"], size=3)) for _ in range(n)]
    addresses = [rng.choice(["12 W. Madison St", "12 w madison  st", "500 Broadway", None]) for _ in range(n)]
    return pl.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "source": rng.choice(["nyc_311", "chicago_311"], n).tolist(),
            "kind": rng.choice(["request", "incident"], n).tolist(),
            "category": rng.choice(CATS, n).tolist(),
            "lon": np.where(located, lon, np.nan),
            "lat": np.where(located, lat, np.nan),
            "text": texts,
            "address": addresses,
            "tract": rng.choice(["T1", "T2", "T3", None], n).tolist(),
            "neighborhood": rng.choice(["N1", "N2"], n).tolist(),
            "borough": ["B1"] * n,
        }
    ).with_columns(pl.col("lon").fill_nan(None), pl.col("lat").fill_nan(None))


def _rules(seed: int, n: int) -> list[tuple[int, object, Filters]]:
    rng = np.random.default_rng(seed)
    out: list[tuple[int, object, Filters]] = []
    for i in range(n):
        k = i % 6
        spec: object
        if k == 0:
            spec = RadiusRule(
                lat=float(rng.uniform(40.6, 40.8)), lon=float(rng.uniform(-74.05, -73.85)), radius_m=float(rng.uniform(50, 3000))
            )
        elif k == 1:
            x, y = float(rng.uniform(-74.05, -73.9)), float(rng.uniform(40.6, 40.75))
            ring = [[x, y], [x + 0.05, y], [x + 0.05, y + 0.04], [x, y + 0.04], [x, y]]
            spec = PolygonRule(geometry={"type": "Polygon", "coordinates": [ring]})
        elif k == 2:
            spec = KeywordRule(keyword=str(rng.choice([*WORDS, "ab-12", "street", "nothing at all"])))
        elif k == 3:
            spec = PlateRule(plate=str(rng.choice(["AB1234", "ab 12", "ZZ99"])))
        elif k == 4:
            spec = AddressRule(address=str(rng.choice(["12 west madison", "12 W Madison St.", "500 BROADWAY"])))
        else:
            spec = AreaRule(level=str(rng.choice(["tract", "neighborhood", "borough"])), unit_id=str(rng.choice(["T1", "N2", "B1", "X"])))  # type: ignore[arg-type]  # random draw of a literal
        cats = list(rng.choice(CATS, size=int(rng.integers(0, 3)), replace=False))
        kinds = ["request"] if rng.random() < 0.3 else []
        out.append((i + 1, spec, Filters(categories=cats, kinds=kinds)))  # type: ignore[arg-type]  # drawn from the literal set
    return out


def _oracle(rules: list[tuple[int, object, Filters]], events: pl.DataFrame) -> set[tuple[int, str]]:
    out = set()
    for ev in events.iter_rows(named=True):
        text = f"{ev['text'] or ''}\n{ev['address'] or ''}"
        has_point = ev["lon"] is not None
        for rid, spec, f in rules:
            if (f.categories and ev["category"] not in f.categories) or (f.kinds and ev["kind"] not in f.kinds):
                continue
            if isinstance(spec, RadiusRule):
                if not has_point:
                    continue
                p1, p2 = math.radians(spec.lat), math.radians(ev["lat"])
                a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(ev["lon"] - spec.lon) / 2) ** 2
                ok = 2 * EARTH_RADIUS_M * math.asin(math.sqrt(a)) <= spec.radius_m
            elif isinstance(spec, PolygonRule):
                ok = has_point and shape(spec.geometry).intersects(Point(ev["lon"], ev["lat"]))
            elif isinstance(spec, KeywordRule):
                ok = spec.keyword.lower() in text.lower()
            elif isinstance(spec, PlateRule):
                ok = any(spec.plate in normalize_plate(field or "") for field in (ev["text"], ev["address"]))
            elif isinstance(spec, AddressRule):
                ok = ev["address"] is not None and normalize_address(ev["address"]) == normalize_address(spec.address)
            else:
                assert isinstance(spec, AreaRule)
                ok = ev[spec.level] == spec.unit_id
            if ok:
                out.add((rid, ev["event_id"]))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_matching_equals_the_per_pair_oracle(seed: int) -> None:
    events, rules = _events(600, seed), _rules(seed + 10, 90)
    got = match_events(rules, events)
    pairs = set(zip(got["rule_id"].to_list(), got["event_id"].to_list(), strict=True))
    assert got.height == len(pairs)  # each match once
    want = _oracle(rules, events)
    assert len(want) > 200  # the draw exercises every kind
    kinds = {type(spec).__name__ for rid, spec, _ in rules if any(r == rid for r, _ in want)}
    assert kinds == {"RadiusRule", "PolygonRule", "KeywordRule", "PlateRule", "AddressRule", "AreaRule"}
    assert pairs == want


def test_keywords_are_literal_case_insensitive_and_may_overlap() -> None:
    events = _events(1, 0).with_columns(text=pl.lit("NOISE - Street [x] a.b"), address=pl.lit(None, pl.String))
    rules = [(1, KeywordRule(keyword="noise"), Filters()), (2, KeywordRule(keyword="noise - street"), Filters()),
             (3, KeywordRule(keyword="a.b"), Filters()), (4, KeywordRule(keyword="[x]"), Filters()), (5, KeywordRule(keyword="a*b"), Filters())]  # fmt: skip
    assert sorted(match_events(rules, events)["rule_id"].to_list()) == [1, 2, 3, 4]


def test_a_plate_never_matches_across_text_and_address() -> None:
    events = _events(1, 0).with_columns(text=pl.lit("seen: LAB"), address=pl.lit("12 Main St"))
    assert match_events([(1, PlateRule(plate="AB12"), Filters())], events).height == 0
    assert match_events([(1, PlateRule(plate="12MAIN"), Filters())], events).height == 1


def test_radius_boundary_and_unlocated_events() -> None:
    base = _events(3, 1)
    lat0, lon0 = 40.7, -73.95
    north = lat0 + math.degrees(999.0 / EARTH_RADIUS_M)
    far = lat0 + math.degrees(1001.0 / EARTH_RADIUS_M)
    events = base.with_columns(lat=pl.Series([north, far, None]), lon=pl.Series([lon0, lon0, None]))
    got = match_events([(7, RadiusRule(lat=lat0, lon=lon0, radius_m=1000), Filters())], events)
    assert got["event_id"].to_list() == ["e0"]


def test_filters_narrow_every_kind() -> None:
    events = _events(50, 3)
    everything = [(1, AreaRule(level="borough", unit_id="B1"), Filters())]
    assert match_events(everything, events).height == 50
    only = [(1, AreaRule(level="borough", unit_id="B1"), Filters(categories=["Noise"], kinds=["incident"], sources=["nyc_311"]))]
    got = match_events(only, events).join(events, on="event_id")
    expected = events.filter((pl.col("category") == "Noise") & (pl.col("kind") == "incident") & (pl.col("source") == "nyc_311"))
    assert 0 < got.height == expected.height


def test_a_10kb_keyword_on_10kb_texts_is_fast() -> None:
    rng = np.random.default_rng(5)
    text = "".join(rng.choice(list("ab"), 10_000))
    events = _events(200, 4).with_columns(text=pl.lit(text))
    rules = [(1, KeywordRule(keyword="a" * 10_000), Filters()), (2, KeywordRule(keyword=text[:10_000]), Filters())]
    t0 = time.perf_counter()
    got = match_events(rules, events)
    assert time.perf_counter() - t0 < 5  # linear-time Aho-Corasick; a backtracking matcher would not finish
    assert got["rule_id"].unique().to_list() == [2]
    assert got.height == 200


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"kind": "radius", "lat": 91, "lon": 0, "radius_m": 10}, "lat"),
        ({"kind": "radius", "lat": 40, "lon": 0, "radius_m": 0}, "radius_m"),
        ({"kind": "radius", "lat": 40, "lon": 0, "radius_m": 60_000}, "radius_m"),
        ({"kind": "keyword", "keyword": "   "}, "keyword"),
        ({"kind": "plate", "plate": "--"}, "plate"),
        ({"kind": "address", "address": "..."}, "address"),
        ({"kind": "polygon", "geometry": {"type": "Point", "coordinates": [0, 0]}}, "geometry"),
        ({"kind": "polygon", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}}, "geometry"),
        ({"kind": "polygon", "geometry": {"type": "Polygon", "coordinates": "nonsense"}}, "geometry"),
        ({"kind": "area", "level": "county", "unit_id": "x"}, "level"),
        ({"kind": "anomaly", "level": "tract", "max_q": 0}, "max_q"),
        ({"kind": "weather"}, "kind"),
    ],
)
def test_bad_rules_are_refused_naming_the_field(spec: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        TypeAdapter(RuleSpec).validate_python(spec)
    assert field in str(err.value)
