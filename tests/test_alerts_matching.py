"""Vectorised rule matching against a plain per-pair oracle on random rules and events, and the
edge cases a user meets: regex characters taken literally, overlapping keywords, case, plates with
dashes, addresses with punctuation, boundaries, filters, unlocated events."""

from __future__ import annotations

import math
import time

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from shapely.geometry import Point, shape

from app.alerts import matching
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
            if f.sources and ev["source"] not in f.sources:
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


@pytest.mark.parametrize("table", ["table", "sorted cells"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_matching_equals_the_per_pair_oracle(seed: int, table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if table == "sorted cells":  # the filters' path for a rule x value table too large to build
        monkeypatch.setattr(matching, "_MAX_TABLE", 0)
    events, rules = _events(600, seed), _rules(seed + 10, 90)
    got = match_events(rules, events)
    pairs = set(zip(got["rule_id"].to_list(), got["event_id"].to_list(), strict=True))
    assert got.height == len(pairs)  # each match once
    want = _oracle(rules, events)
    assert len(want) > 200  # the draw exercises every kind
    kinds = {type(spec).__name__ for rid, spec, _ in rules if any(r == rid for r, _ in want)}
    assert kinds == {"RadiusRule", "PolygonRule", "KeywordRule", "PlateRule", "AddressRule", "AreaRule"}
    assert pairs == want


# -- a hypothesis sweep against the per-pair oracle ------------------------------------------------
# Coordinates come from a small lattice (so events land on polygon corners and edges, on a circle's
# centre and its box's edges) or anywhere near it; texts from an alphabet with case traps (ß, Σ, İ),
# regex characters and separators; every kind, filter and null a store can hand over.

_LAT = st.one_of(st.sampled_from([40.7, 40.701, 40.702, 40.7005]), st.floats(40.69, 40.712, allow_nan=False))
_LON = st.one_of(st.sampled_from([-73.95, -73.949, -73.948, -73.9495]), st.floats(-73.96, -73.938, allow_nan=False))
_TEXT = st.text(alphabet="aAbBsS 12-.[]*|\nß\u03a3\u03c3\u03c2\u0130i", max_size=14)  # sharp s, the three sigmas, dotted capital I
_ADDRESS = st.one_of(st.none(), st.sampled_from(["12 W. Madison St", "12 w madison  st", "Straße 5", "..."]), _TEXT)
_CAT, _SRC = st.sampled_from(["Noise", "Heat"]), st.sampled_from(["nyc_311", "chicago_311"])


@st.composite
def _sweep_events(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(1, 12))
    rows = []
    for i in range(n):
        located = draw(st.booleans()) or i == 0
        rows.append(
            {
                "event_id": f"e{i}",
                "source": draw(_SRC),
                "kind": draw(st.sampled_from(["request", "incident"])),
                "category": draw(st.one_of(st.none(), _CAT)),
                "lon": draw(_LON) if located else None,
                "lat": draw(_LAT) if located else None,
                "text": draw(st.one_of(st.none(), _TEXT)),
                "address": draw(_ADDRESS),
                "tract": draw(st.sampled_from(["T1", "T2", None])),
                "neighborhood": draw(st.sampled_from(["N1", None])),
                "borough": draw(st.sampled_from(["B1", None])),
            }
        )
    schema = {c: pl.Float64 if c in ("lon", "lat") else pl.String for c in rows[0]}
    return pl.DataFrame(rows, schema=schema)


def _spec(draw: st.DrawFn, texts: list[str]) -> object:
    kind = draw(st.sampled_from(["radius", "polygon", "keyword", "plate", "address", "area"]))
    if kind == "radius":
        return RadiusRule(lat=draw(_LAT), lon=draw(_LON), radius_m=draw(st.sampled_from([1.0, 50.0, 111.0, 400.0, 2500.0])))
    if kind == "polygon":
        xs, ys = draw(st.lists(_LON, min_size=3, max_size=3)), draw(st.lists(_LAT, min_size=3, max_size=3))
        ring = [[x, y] for x, y in zip(xs, ys, strict=True)] + [[xs[0], ys[0]]]
        if draw(st.booleans()):  # an axis-aligned box: edges and corners on the lattice
            ring = [[min(xs), min(ys)], [max(xs), min(ys)], [max(xs), max(ys)], [min(xs), max(ys)], [min(xs), min(ys)]]
        try:
            return PolygonRule(geometry={"type": "Polygon", "coordinates": [ring]})
        except ValidationError:
            assume(False)
    if kind == "keyword":
        pool = [t[i : i + k] for t in texts for i in range(len(t)) for k in (2, 4)]  # substrings that occur
        word = draw(st.one_of(st.sampled_from(pool), _TEXT) if pool else _TEXT)
        assume(len(word) >= 2 and word.strip())
        return KeywordRule(keyword=word)
    if kind == "plate":
        plate = draw(st.text(alphabet="ABS12ß", min_size=2, max_size=4))
        assume(2 <= len(normalize_plate(plate)) <= 10)
        return PlateRule(plate=plate)
    if kind == "address":
        address = draw(_ADDRESS.filter(lambda a: a is not None and len(a) >= 3 and bool(normalize_address(a))))
        return AddressRule(address=address)
    level = draw(st.sampled_from(["tract", "neighborhood", "borough"]))
    return AreaRule(level=level, unit_id=draw(st.sampled_from(["T1", "T2", "N1", "B1", "X"])))  # type: ignore[arg-type]  # drawn from the literal set


@st.composite
def _sweep_rules(draw: st.DrawFn, events: pl.DataFrame) -> list[tuple[int, object, Filters]]:
    texts = [t for t in events["text"].to_list() + events["address"].to_list() if t]
    out: list[tuple[int, object, Filters]] = []
    for i in range(draw(st.integers(1, 10))):
        filters = Filters(
            categories=draw(st.lists(st.sampled_from(["Noise", "Heat", "Other"]), max_size=2, unique=True)),
            kinds=draw(st.lists(st.sampled_from(["request", "incident", "closure"]), max_size=2, unique=True)),
            sources=draw(st.lists(_SRC, max_size=1)),
        )
        out.append((100 + 7 * i, _spec(draw, texts), filters))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_vectorised_matching_equals_the_oracle_on_any_draw(data: st.DataObject) -> None:
    events = data.draw(_sweep_events())
    rules = data.draw(_sweep_rules(events))
    got = match_events(rules, events)
    assert got.schema == pl.Schema({"rule_id": pl.Int64, "event_id": pl.String})
    pairs = list(zip(got["rule_id"].to_list(), got["event_id"].to_list(), strict=True))
    assert len(pairs) == len(set(pairs))  # each match once
    assert set(pairs) == _oracle(rules, events)


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
