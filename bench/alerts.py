"""Alert figures: ``alert_match_s``, the median time to match 10,000 rules (a mix of every
event-rule kind) against 100,000 new events spread over New York City.

Events carry three common words and a rare reference token (one of 20,000, like a street name or
a business); keyword rules ask for a rare token nine times in ten and a common word otherwise, so
a keyword matches what a real one does (a few events, sometimes many), not a third of the city."""

from __future__ import annotations

import statistics
import time

import numpy as np
import polars as pl

from app.alerts.matching import match_events
from app.alerts.rules import AddressRule, AreaRule, Filters, KeywordRule, PlateRule, PolygonRule, RadiusRule
from bench.run import Figures

__all__ = ["alert_figures", "bench_events", "bench_rules"]

_CATS = ["Noise - Residential", "Illegal Parking", "HEAT/HOT WATER", "Blocked Driveway", "Street Condition", "Water System"]
_WORDS = ["loud music", "banging", "no heat", "double parked", "pothole", "leak", "dog", "party", "car alarm", "hydrant"]
_STREETS = ["BROADWAY", "W 42 ST", "FLATBUSH AVE", "GRAND CONCOURSE", "QUEENS BLVD", "VICTORY BLVD"]


def bench_events(n: int = 100_000, seed: int = 1) -> pl.DataFrame:
    """``n`` events over New York City's bounding box, with text, addresses and unit ids."""
    rng = np.random.default_rng(seed)
    streets = rng.choice(_STREETS, n)
    numbers = rng.integers(1, 400, n)
    return pl.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "source": "nyc_311",
            "kind": "request",
            "category": rng.choice(_CATS, n),
            "lon": rng.uniform(-74.25, -73.70, n),
            "lat": rng.uniform(40.50, 40.91, n),
            "text": [f"ref{t} {' '.join(w)}" for w, t in zip(rng.choice(_WORDS, (n, 3)), rng.integers(0, 20_000, n).tolist(), strict=True)],
            "address": [f"{a} {s}" for a, s in zip(numbers.tolist(), streets.tolist(), strict=True)],
            "tract": [f"T{t}" for t in rng.integers(0, 2300, n).tolist()],
            "neighborhood": [f"N{t}" for t in rng.integers(0, 190, n).tolist()],
            "borough": rng.choice(["1", "2", "3", "4", "5"], n),
        }
    )


def bench_rules(n: int = 10_000, seed: int = 2) -> list[tuple[int, object, Filters]]:
    """``n`` rules: 40 % radius, 10 % polygon, 25 % keyword, 10 % address, 10 % area, 5 % plate."""
    rng = np.random.default_rng(seed)
    out: list[tuple[int, object, Filters]] = []
    for i in range(n):
        u = rng.random()
        lon, lat = float(rng.uniform(-74.25, -73.70)), float(rng.uniform(40.50, 40.91))
        spec: object
        if u < 0.40:
            spec = RadiusRule(lat=lat, lon=lon, radius_m=float(rng.uniform(100, 2000)))
        elif u < 0.50:
            d = float(rng.uniform(0.002, 0.02))
            ring = [[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]
            spec = PolygonRule(geometry={"type": "Polygon", "coordinates": [ring]})
        elif u < 0.75:
            spec = KeywordRule(keyword=str(rng.choice(_WORDS)) if rng.random() < 0.1 else f"ref{int(rng.integers(0, 20_000))} ")
        elif u < 0.85:
            spec = AddressRule(address=f"{int(rng.integers(1, 400))} {rng.choice(_STREETS)}")
        elif u < 0.95:
            spec = AreaRule(level="tract", unit_id=f"T{int(rng.integers(0, 2300))}")
        else:
            spec = PlateRule(plate=f"{''.join(rng.choice(list('ABCDEFGH'), 3))}{int(rng.integers(1000, 9999))}")
        cats = [str(rng.choice(_CATS))] if rng.random() < 0.3 else []
        out.append((i + 1, spec, Filters(categories=cats)))
    return out


def alert_figures(runs: int = 5) -> Figures:
    """``alert_match_s``: median of ``runs`` matchings of :func:`bench_rules` x :func:`bench_events`."""
    events, rules = bench_events(), bench_rules()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        match_events(rules, events)
        times.append(time.perf_counter() - t0)
    return {"alert_match_s": (round(statistics.median(times), 3), "s")}


if __name__ == "__main__":
    ev, rl = bench_events(), bench_rules()
    t0 = time.perf_counter()
    got = match_events(rl, ev)
    print(f"matches {got.height} in {time.perf_counter() - t0:.2f}s")
    print(alert_figures())
