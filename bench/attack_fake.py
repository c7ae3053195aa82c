"""A fake City Service Heat API with a known leak, for the attacker's self-tests: one city with one
unit and one category, daily or weekly counts in a local time zone (New York by default, so bins
are local days and weeks and the data cross a daylight-saving change), served over
:class:`httpx.MockTransport`.

It follows the published contract of the real API (``lens`` echoes ``grain``, ``time_bin``,
``grid_since``/``grid_until``, ``timezone`` and ``published_until``; the last ``open_bins`` bins are
still filling: ``partial``, neither withheld nor zero; window totals stop at ``published_until``),
except where ``leaky`` says:

``leaky=True`` makes the fake suppress every grain on its own (a week is released when its own
count is large, whatever its days) and compute ``expected`` from raw trailing counts (a 28-day
trailing mean of weekly bins, ``E(t) = (1 + x(t-1) + ... + x(t-4)) / 5``); ``leaky=False`` follows
the contract: coarser bins and window totals are sums of released cells (withheld if any part
is) and ``expected`` reads released cells only (a withheld one counts as 0).

Bins are computed with the engine's own :mod:`app.engine.grains` (not the attacker's clock), so a
self-test also checks the attacker's local-time arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
import polars as pl

from app.engine.grains import GRAINS, bin_range, floor_bin, next_bin
from bench.attack_time import hour_index, iso
from bench.attack_truth import Truth

__all__ = ["FakeCity"]

CITY, UNIT, CATEGORY = "toy", "toy", "A"


@dataclass
class FakeCity:
    """``counts``: events per bin of ``grain`` from ``start`` (a local Monday); ``k``: the rule;
    ``open_bins``: the last bins are still filling (not published)."""

    counts: list[int]
    grain: str = "day"
    leaky: bool = True
    tz: str = "America/New_York"
    start: datetime = datetime(2026, 8, 31, 4, tzinfo=UTC)  # Monday 2026-08-31, local midnight
    k: int = 11
    open_bins: int = 0

    def __post_init__(self) -> None:
        self.starts: list[datetime] = [floor_bin(self.start, self.grain, self.tz)]
        for _ in self.counts:
            self.starts.append(next_bin(self.starts[-1], self.grain, self.tz))
        self.hours: dict[int, int] = {}  # events per hour: each bin's events at its first hours
        for i, n in enumerate(self.counts):
            h = hour_index(self.starts[i])
            for j in range(n):
                self.hours[h + j % 20] = self.hours.get(h + j % 20, 0) + 1
        self.end = self.starts[-1]
        self.cutoff = self.starts[len(self.counts) - self.open_bins]

    # ---- the truth -------------------------------------------------------------------------
    def truth(self) -> Truth:
        hours = [h for h, n in self.hours.items() for _ in range(n)]
        frame = pl.DataFrame({"category": [CATEGORY] * len(hours), "hour": hours, "city_id": [CITY] * len(hours)})
        return Truth({CITY: frame.with_columns(pl.col("hour").cast(pl.Int64))})

    def count(self, a: datetime, b: datetime) -> int:
        h0, h1 = hour_index(a), hour_index(b)
        return sum(n for h, n in self.hours.items() if h0 <= h < h1)

    def _bins(self, lo: datetime, hi: datetime, grain: str) -> list[tuple[datetime, datetime]]:
        return [(b, next_bin(b, grain, self.tz)) for b in bin_range(lo, hi, grain, self.tz)]

    def open(self, a: datetime, grain: str) -> bool:
        """Whether the ``grain`` bin starting at ``a`` reaches into still-filling bins."""
        return a >= floor_bin(self.cutoff, grain, self.tz)

    def released(self, a: datetime, b: datetime, grain: str) -> int | None:
        """The released count of a (complete) bin of ``grain``."""
        if self.leaky or grain == self.grain:
            n = self.count(a, b)
            return None if 1 <= n < self.k else n
        parts = [self.released(x, y, self.grain) for x, y in self._bins(a, b, self.grain)]
        return None if any(p is None for p in parts) else sum(p or 0 for p in parts)

    # ---- the API -------------------------------------------------------------------------------
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        q = {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}
        path = request.url.path
        if path == "/cities":
            level = {"key": "city", "name": "City", "units": 1, "grain": self.grain}
            city = {"id": CITY, "name": "Toy", "timezone": self.tz, "levels": [level], "categories": 1}
            return httpx.Response(200, json={"snapshot_id": "fake", "default_city": CITY, "cities": [city]})
        if path == "/tracts":
            props = {"unit_id": UNIT, "name": "Toy", "level": "city", "parent_id": None, "lon": 0.0, "lat": 0.0}
            return httpx.Response(
                200, json={"type": "FeatureCollection", "features": [{"type": "Feature", "id": UNIT, "properties": props}]}
            )
        if q.get("city", CITY) != CITY or q.get("level", "city") != "city":
            return httpx.Response(422, json={"detail": [{"msg": f"unknown city; known: {CITY}"}]})
        if q.get("category") not in (None, CATEGORY):
            return httpx.Response(
                422, json={"detail": [{"msg": f"unknown category {q['category']!r} for city {CITY!r}; known: {CATEGORY}"}]}
            )
        asked = q.get("time_bin")
        shown = asked if asked is not None and GRAINS.index(asked) > GRAINS.index(self.grain) else self.grain
        until = _parse(q["until"]) if "until" in q else self.end
        since = _parse(q["since"]) if "since" in q else until - timedelta(days=7)
        grid_since = floor_bin(since, shown, self.tz)
        grid_until = floor_bin(until, shown, self.tz)
        if grid_until < until:
            grid_until = next_bin(grid_until, shown, self.tz)
        if path == "/heat":
            rows = self._heat(grid_since, grid_until, shown if asked is not None else None)
            key = "cells"
        elif path == "/anomalies":
            rows = self._anomalies(grid_since, grid_until, shown)
            key = "items"
        else:
            return httpx.Response(404, json={"message": "not found"})
        offset, limit = int(q.get("offset", 0)), int(q.get("limit", 100))
        page = rows[offset : offset + limit]
        nxt = offset + limit if offset + limit < len(rows) else None
        lens = {
            "city": CITY,
            "level": "city",
            "since": iso(since),
            "until": iso(until),
            "category": q.get("category"),
            "snapshot_id": "fake",
            "grid_since": iso(grid_since),
            "grid_until": iso(grid_until),
            "time_bin": shown,
            "grain": self.grain,
            "published_until": iso(self.cutoff),
            "timezone": self.tz,
        }
        body = {"lens": lens, "privacy": {"mode": "suppress", "k": self.k}, "time_bin": asked, "total": len(rows), "next_offset": nxt}
        return httpx.Response(200, json={**body, key: page})

    def _heat(self, lo: datetime, hi: datetime, grain: str | None) -> list[dict[str, Any]]:
        if grain is None:  # a window total: released cells of complete bins, up to published_until
            parts = [self.released(a, b, self.grain) for a, b in self._bins(lo, min(hi, self.cutoff), self.grain) if a < self.cutoff]
            n = None if any(p is None for p in parts) else sum(p or 0 for p in parts)
            return [
                {"unit_id": UNIT, "name": "Toy", "bin_start": None, "count": n, "suppressed": n is None, "partial": False, "rollup": None}
            ]
        out: list[dict[str, Any]] = []
        for a, b in self._bins(lo, hi, grain):
            if self.open(a, grain):
                if self.count(a, b):
                    out.append({"unit_id": UNIT, "name": "Toy", "bin_start": iso(a), "count": None, "suppressed": False, "partial": True})
                continue
            n = self.released(a, b, grain)
            if n != 0:
                out.append({"unit_id": UNIT, "name": "Toy", "bin_start": iso(a), "count": n, "suppressed": n is None, "partial": False})
        return out

    def _anomalies(self, lo: datetime, hi: datetime, grain: str) -> list[dict[str, Any]]:
        if grain != "week":
            return []
        out = []
        for a, b in self._bins(lo, hi, "week"):
            x = self.released(a, b, "week") if not self.open(a, "week") else None
            if x is None:
                continue
            weeks = [a]
            for _ in range(4):
                weeks.insert(0, floor_bin(weeks[0] - timedelta(hours=12), "week", self.tz))
            trail = [
                self.count(w, next_bin(w, "week", self.tz)) if self.leaky else self.released(w, next_bin(w, "week", self.tz), "week")
                for w in weeks[:-1]
            ]
            expected = round((1 + sum(t or 0 for t in trail)) / 5, 2)
            for cat in ("*", CATEGORY):
                out.append(
                    {
                        "level": "city",
                        "unit_id": UNIT,
                        "name": "Toy",
                        "category": cat,
                        "window_start": iso(a),
                        "window_end": iso(b),
                        "observed": x,
                        "expected": expected,
                        "variance": expected + 1,
                        "baseline_start": iso(weeks[0]),
                        "baseline_end": iso(a),
                        "drivers": [],
                    }
                )
        return out


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts).astimezone(UTC)
