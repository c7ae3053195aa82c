"""The attacker's only input: what the public HTTP API answers.

:func:`crawl` discovers cities, levels (and the time grain each level is published at, from
``GET /cities`` when the server has it), categories, the data's time range and the unit hierarchy,
then asks ``/heat`` and ``/anomalies`` for a bounded set of lenses under a request budget and keeps
every raw answer (:class:`Crawl`). Nothing here interprets counts; :mod:`bench.attack_model` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bench.attack_time import GRAINS, Clock, iso

__all__ = ["BudgetExhaustedError", "CityInfo", "Client", "Crawl", "Response", "crawl"]

#: Levels from finest to coarsest, as the API names them (used when ``/cities`` is absent).
DEFAULT_LEVELS = ("tract", "neighborhood", "borough", "city")
_KNOWN = re.compile(r"known:\s*(.+)$")


class BudgetExhaustedError(RuntimeError):
    """The crawl asked for more requests than its budget allows."""


class Client:
    """A synchronous HTTP client that counts requests and refuses to exceed ``budget``."""

    def __init__(self, base_url: str, budget: int = 4000, timeout: float = 120.0, transport: httpx.BaseTransport | None = None) -> None:
        self.budget = budget
        self.requests = 0
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport)

    def get(self, path: str, params: dict[str, Any] | None = None) -> tuple[int, Any]:
        """``(status, json body or None)`` of one GET."""
        if self.requests >= self.budget:
            raise BudgetExhaustedError(f"request budget of {self.budget} spent")
        self.requests += 1
        r = self._http.get(path, params={k: v for k, v in (params or {}).items() if v is not None})
        try:
            body = r.json()
        except ValueError:
            body = None
        return r.status_code, body

    def pages(self, path: str, params: dict[str, Any], key: str, max_pages: int = 200) -> dict[str, Any] | None:
        """Every page of a paged endpoint merged into one body (``key`` lists the rows); None on
        an error status (e.g. 422: this lens is not offered)."""
        merged: dict[str, Any] | None = None
        offset = 0
        for _ in range(max_pages):
            status, body = self.get(path, {**params, "limit": 1000, "offset": offset})
            if status != 200 or not isinstance(body, dict):
                return None
            if merged is None:
                merged = body
            else:
                merged[key].extend(body[key])
            nxt = body.get("next_offset")
            if nxt is None:
                merged["complete"] = True
                return merged
            offset = int(nxt)
        if merged is not None:
            merged["complete"] = False
        return merged

    def close(self) -> None:
        self._http.close()


@dataclass
class CityInfo:
    """What the attacker learnt about one city before asking for counts."""

    city: str
    clock: Clock
    levels: list[str]
    #: The grain each level is published at, when the server announces it (``/cities``).
    announced: dict[str, str | None]
    #: Parent unit of every unit, per level (``/tracts``); representative points for bboxes.
    parents: dict[str, dict[str, str | None]]
    points: dict[str, dict[str, tuple[float, float]]]
    categories: list[str]
    start: datetime  # first bin with data (UTC)
    end: datetime  # end of the data (exclusive, UTC)

    def grains(self, level: str) -> list[str]:
        """Grains to ask ``/heat`` for at ``level``: the announced one and the coarser ones (sums
        of released cells), or all three when nothing is announced."""
        g = self.announced.get(level)
        return list(GRAINS) if g is None else list(GRAINS[GRAINS.index(g) :])


@dataclass
class Response:
    """One answered lens: what was asked (``params``) and the merged body."""

    path: str
    params: dict[str, Any]
    body: dict[str, Any]
    window: str  # name of the window it belongs to


@dataclass
class Crawl:
    """Everything the attacker saw."""

    cities: list[CityInfo]
    heat: list[Response] = field(default_factory=list)
    anomalies: list[Response] = field(default_factory=list)
    requests: int = 0
    refused: int = 0  # lenses the server declined (422 etc.): not offered at that grain
    exhausted: bool = False
    cities_endpoint: bool = False


def _discover(client: Client) -> tuple[list[dict[str, Any]], bool]:
    """City descriptions from ``/cities`` (new contract) or, without it, from the default lens
    and the 422 of an unknown city (which lists the known ones)."""
    status, body = client.get("/cities")
    if status == 200 and isinstance(body, dict) and isinstance(body.get("cities"), list):
        return [c if isinstance(c, dict) else {"city": str(c)} for c in body["cities"]], True
    names: list[str] = []
    status, body = client.get("/heat", {"city": "__no_such_city__", "level": "city"})
    if status == 422 and isinstance(body, dict):
        m = _KNOWN.search(str(body.get("message", "")))
        if m:
            names = [n.strip() for n in m.group(1).split(",") if n.strip()]
    if not names:
        status, body = client.get("/heat", {"level": "city"})
        if status == 200 and isinstance(body, dict):
            names = [body["lens"]["city"]]
    return [{"city": n} for n in names], False


def _hierarchy(
    client: Client, city: str, levels: list[str]
) -> tuple[dict[str, dict[str, str | None]], dict[str, dict[str, tuple[float, float]]]]:
    parents: dict[str, dict[str, str | None]] = {}
    points: dict[str, dict[str, tuple[float, float]]] = {}
    for level in levels:
        status, body = client.get("/tracts", {"city": city, "level": level})
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"/tracts?city={city}&level={level} answered {status}")
        props = [f["properties"] for f in body["features"]]
        parents[level] = {p["unit_id"]: p.get("parent_id") for p in props}
        points[level] = {p["unit_id"]: (float(p["lon"]), float(p["lat"])) for p in props}
    return parents, points


def _data_range(client: Client, city: str, clock: Clock, announced: dict[str, str | None]) -> tuple[datetime, datetime]:
    """End of the data (the default lens' ``until``) and the first bin with events (the city's
    coarsest offered series over the longest allowed window)."""
    status, body = client.get("/heat", {"city": city, "level": "city"})
    if status != 200:
        raise RuntimeError(f"/heat?city={city} answered {status}")
    end = datetime.fromisoformat(body["lens"]["until"]).astimezone(UTC)
    for grain in ("week", "day", "hour"):
        got = client.pages("/heat", {"city": city, "level": "city", "time_bin": grain, **_window(end - timedelta(days=365), end)}, "cells")
        if got is None:
            continue
        starts = [datetime.fromisoformat(c["bin_start"]) for c in got["cells"] if c.get("bin_start") and (c["count"] or c["suppressed"])]
        if starts:
            return min(starts).astimezone(UTC), end
    return end - timedelta(days=7), end


def _categories(client: Client, city: str, end: datetime, start: datetime, grains: list[str]) -> list[str]:
    """Categories named by ``/anomalies`` (items and drivers) when ``/cities`` lists none."""
    found: set[str] = set()
    for level in ("city", "borough"):
        for grain in grains:
            got = client.pages(
                "/anomalies",
                {"city": city, "level": level, "time_bin": grain, "min_z": 0, "q": 1, **_window(start, end)},
                "items",
                max_pages=5,
            )
            for item in (got or {}).get("items", []):
                found.add(item["category"])
                found.update(d["category"] for d in item.get("drivers") or [])
    found.discard("*")
    found.discard("other categories (withheld)")
    return sorted(found)


def _window(since: datetime, until: datetime) -> dict[str, str]:
    return {"since": iso(since), "until": iso(until)}


def windows(info: CityInfo) -> dict[str, tuple[datetime, datetime]]:
    """The bounded set of windows asked for: the whole data (from 4 weeks before its start, so
    trailing baselines are covered), bin-aligned ones, overlapping ones and misaligned ones."""
    clock, end = info.clock, info.end
    start = clock.floor(info.start, "week") - timedelta(days=28)
    top = clock.snap(end - timedelta(days=1), end, "week")[1]  # whole weeks: every grain ends here
    start = max(start, clock.floor(top - timedelta(days=365), "week") + timedelta(days=7))
    week_end = clock.floor(end, "week")
    return {
        "all": (start, top),
        "last28": (end - timedelta(days=28), end),
        "week": (week_end - timedelta(days=7), week_end),
        "last7": (end - timedelta(days=7), end),
        "prev7": (end - timedelta(days=8), end - timedelta(days=1)),
        "mis": (end - timedelta(days=10, hours=-13), end - timedelta(days=3, hours=-5)),
        "mis2": (end - timedelta(days=9, hours=-13), end - timedelta(days=3, hours=-5)),
    }


def _bboxes(info: CityInfo, level: str) -> list[str]:
    """Two boxes around one unit's representative point that differ by (at least) that unit."""
    pts = info.points.get(level) or {}
    if not pts:
        return []
    unit = sorted(pts)[len(pts) // 2]
    lon, lat = pts[unit]
    d = 0.02
    return [f"{lon - d},{lat - d},{lon + d},{lat + d}", f"{lon + 1e-6},{lat - d},{lon + d},{lat + d}"]


def crawl(client: Client, per_category: bool = True, anomalies: bool = True) -> Crawl:
    """Crawl the API within the client's budget (stops early, keeping what it has, when spent)."""
    described, has_cities = _discover(client)
    out = Crawl(cities=[], cities_endpoint=has_cities)
    try:
        for desc in described:
            city = str(desc["city"])
            levels = [str(lv["level"] if isinstance(lv, dict) else lv) for lv in desc.get("levels") or DEFAULT_LEVELS]
            announced = {str(lv["level"]): lv.get("grain") for lv in desc.get("levels") or [] if isinstance(lv, dict)}
            announced = {lv: announced.get(lv) for lv in levels}
            clock = Clock(desc.get("timezone") or desc.get("tz"))
            parents, points = _hierarchy(client, city, levels)
            start, end = _data_range(client, city, clock, announced)
            if desc.get("timezone") is None and desc.get("tz") is None:
                clock = _infer_clock(client, city, start, end)
            cats = [str(c) for c in desc.get("categories") or []]
            if not cats:
                cats = _categories(client, city, end, start, ["week", "day"])
            info = CityInfo(city, clock, levels, announced, parents, points, cats, start, end)
            out.cities.append(info)
            _crawl_city(client, info, out, per_category, anomalies)
    except BudgetExhaustedError:
        out.exhausted = True
    out.requests = client.requests
    return out


def _infer_clock(client: Client, city: str, start: datetime, end: datetime) -> Clock:
    """Without an announced time zone: the fixed UTC offset at which the city's day bins start
    (UTC when day bins start at midnight UTC or are not offered)."""
    got = client.pages("/heat", {"city": city, "level": "city", "time_bin": "day", **_window(end - timedelta(days=3), end)}, "cells")
    if got and got["cells"]:
        first = datetime.fromisoformat(got["cells"][0]["bin_start"]).astimezone(UTC)
        if first.hour:
            return Clock(offset_hours=-first.hour if first.hour <= 12 else 24 - first.hour)
    return Clock(None)


def _crawl_city(client: Client, info: CityInfo, out: Crawl, per_category: bool, anomalies: bool) -> None:
    city, wins = info.city, windows(info)

    def heat(name: str, level: str, grain: str | None, category: str | None = None, bbox: str | None = None) -> None:
        since, until = wins[name]
        params = {"city": city, "level": level, "time_bin": grain, "category": category, "bbox": bbox, **_window(since, until)}
        got = client.pages("/heat", params, "cells")
        if got is None:
            out.refused += 1
            return
        out.heat.append(Response("/heat", params, got, name))

    # Every level and grain for the whole range and the bin-aligned windows; totals for all windows.
    for name in wins:
        for level in info.levels:
            heat(name, level, None)
            if name in ("all", "week", "mis"):
                for grain in info.grains(level):
                    heat(name, level, grain)
    if anomalies:
        for level in info.levels:
            for grain in info.grains(level):
                since, until = wins["all"]
                params = {"city": city, "level": level, "time_bin": grain, "min_z": 0, "q": 1, **_window(since, until)}
                got = client.pages("/anomalies", params, "items", max_pages=30)
                if got is None:
                    out.refused += 1
                else:
                    out.anomalies.append(Response("/anomalies", params, got, "all"))
    for level in ("neighborhood", "tract"):
        if level in info.levels:
            for box in _bboxes(info, level):
                heat("last7", level, None, bbox=box)
                heat("last7", level, info.grains(level)[0], bbox=box)
    if per_category:
        for category in info.categories:
            for level in info.levels:
                for grain in info.grains(level):
                    heat("all", level, grain, category)
                heat("all", level, None, category)
                heat("last7", level, None, category)
