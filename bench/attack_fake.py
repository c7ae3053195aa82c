"""A fake City Service Heat API with a known leak, for the attacker's self-tests: one city with one
unit and one category, daily or weekly counts, served over :class:`httpx.MockTransport`.

``leaky=True`` makes the fake suppress every grain on its own (a week is released when its own
count is large, whatever its days) and compute ``expected`` from raw trailing counts (a 28-day
trailing mean of weekly bins, ``E(t) = (1 + x(t-1) + ... + x(t-4)) / 5``); ``leaky=False`` follows
the contract: coarser bins and window totals are sums of released cells (withheld if any part
is) and ``expected`` reads released cells only (a withheld one counts as 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
import polars as pl

from bench.attack_time import GRAINS, Clock, hour_index, iso
from bench.attack_truth import Truth

__all__ = ["FakeCity"]

CITY, UNIT, CATEGORY = "toy", "toy", "A"


@dataclass
class FakeCity:
    """``counts``: events per bin of ``grain`` from ``start`` (a Monday, UTC); ``k``: the rule."""

    counts: list[int]
    grain: str = "day"
    leaky: bool = True
    start: datetime = datetime(2026, 8, 3, tzinfo=UTC)
    k: int = 11

    def __post_init__(self) -> None:
        self.clock = Clock("UTC")
        step = timedelta(days=1 if self.grain == "day" else 7)
        self.hours: dict[int, int] = {}  # events per hour: each bin's events at its first hours
        for i, n in enumerate(self.counts):
            h = hour_index(self.start + i * step)
            for j in range(n):
                self.hours[h + j % 20] = self.hours.get(h + j % 20, 0) + 1
        self.end = self.start + len(self.counts) * step

    # ---- the truth -------------------------------------------------------------------------
    def truth(self) -> Truth:
        hours = [h for h, n in self.hours.items() for _ in range(n)]
        frame = pl.DataFrame({"category": [CATEGORY] * len(hours), "hour": hours, "city_id": [CITY] * len(hours)})
        return Truth({CITY: frame.with_columns(pl.col("hour").cast(pl.Int64))})

    def count(self, h0: int, h1: int) -> int:
        return sum(n for h, n in self.hours.items() if h0 <= h < h1)

    def released(self, h0: int, h1: int, grain: str) -> int | None:
        """The released count of a bin (or a window snapped to bins) of ``grain``."""
        if self.leaky or grain == self.grain:
            n = self.count(h0, h1)
            return None if 1 <= n < self.k else n
        parts = [self.released(a, b, self.grain) for a, b in self._bins(h0, h1, self.grain)]
        return None if any(p is None for p in parts) else sum(p or 0 for p in parts)

    def _bins(self, h0: int, h1: int, grain: str) -> list[tuple[int, int]]:
        return self.clock.bins(_at(h0), _at(h1), grain)

    # ---- the API -------------------------------------------------------------------------------
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        q = {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}
        path = request.url.path
        if path == "/cities":
            level = {"level": "city", "grain": self.grain}
            return httpx.Response(200, json={"cities": [{"city": CITY, "timezone": "UTC", "levels": [level], "categories": [CATEGORY]}]})
        if path == "/tracts":
            props = {"unit_id": UNIT, "name": "Toy", "level": "city", "parent_id": None, "lon": 0.0, "lat": 0.0}
            return httpx.Response(
                200, json={"type": "FeatureCollection", "features": [{"type": "Feature", "id": UNIT, "properties": props}]}
            )
        if q.get("city", CITY) != CITY or q.get("level", "city") != "city":
            return httpx.Response(422, json={"message": f"unknown city; known: {CITY}"})
        grain = q.get("time_bin")
        if grain is not None and GRAINS.index(grain) < GRAINS.index(self.grain):
            return httpx.Response(422, json={"message": f"time_bin finer than {self.grain}"})
        until = _parse(q["until"]) if "until" in q else self.end
        since = _parse(q["since"]) if "since" in q else until - timedelta(days=7)
        if path == "/heat":
            rows = self._heat(since, until, grain)
            key = "cells"
        elif path == "/anomalies":
            rows = self._anomalies(since, until, grain or self.grain)
            key = "items"
        else:
            return httpx.Response(404, json={"message": "not found"})
        offset, limit = int(q.get("offset", 0)), int(q.get("limit", 100))
        page = rows[offset : offset + limit]
        nxt = offset + limit if offset + limit < len(rows) else None
        lens = {"city": CITY, "level": "city", "since": iso(since), "until": iso(until), "category": q.get("category")}
        body = {"lens": lens, "privacy": {"mode": "suppress", "k": self.k}, "time_bin": grain, "total": len(rows), "next_offset": nxt}
        return httpx.Response(200, json={**body, key: page})

    def _heat(self, since: datetime, until: datetime, grain: str | None) -> list[dict[str, Any]]:
        if grain is None:
            lo, hi = self.clock.snap(since, until, self.grain)
            a, b = hour_index(lo), hour_index(hi)
            n = self._sum_released(a, b)
            return [{"unit_id": UNIT, "bin_start": None, "count": n, "suppressed": n is None}]
        out = []
        for a, b in self._bins(hour_index(since), hour_index(until), grain):
            n = self.released(a, b, grain)
            if n != 0:
                out.append({"unit_id": UNIT, "bin_start": iso(_at(a)), "count": n, "suppressed": n is None})
        return out

    def _sum_released(self, a: int, b: int) -> int | None:
        parts = [self.released(x, y, self.grain) for x, y in self._bins(a, b, self.grain)]
        return None if any(p is None for p in parts) else sum(p or 0 for p in parts)

    def _anomalies(self, since: datetime, until: datetime, grain: str) -> list[dict[str, Any]]:
        if grain != "week":
            return []
        out = []
        for a, b in self._bins(hour_index(since), hour_index(until), "week"):
            x = self.released(a, b, "week")
            if x is None:
                continue
            trail = [
                self.count(a - 168 * j, a - 168 * (j - 1)) if self.leaky else self.released(a - 168 * j, a - 168 * (j - 1), "week")
                for j in range(1, 5)
            ]
            expected = round((1 + sum(t or 0 for t in trail)) / 5, 2)
            for cat in ("*", CATEGORY):
                out.append(
                    {
                        "level": "city",
                        "unit_id": UNIT,
                        "category": cat,
                        "window_start": iso(_at(a)),
                        "window_end": iso(_at(b)),
                        "observed": x,
                        "expected": expected,
                        "variance": expected + 1,
                        "baseline_start": iso(_at(a - 672)),
                        "baseline_end": iso(_at(a)),
                        "drivers": [],
                    }
                )
        return out


def _at(h: int) -> datetime:
    return datetime.fromtimestamp(h * 3600, UTC)


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts).astimezone(UTC)
