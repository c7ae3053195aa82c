"""The attacker's only input: what the public HTTP API answers.

:func:`crawl` discovers cities, levels, categories and the data's time range, learns from the
``lens`` every answer echoes how each level is published (``grain``, ``timezone``,
``published_until``), then asks ``/heat`` and ``/anomalies`` for a bounded set of lenses under a
request budget and keeps every raw answer (:class:`Crawl`). Nothing here interprets counts;
:mod:`bench.attack_model` does.

What is asked, per city (``windows``): every level x category (and all categories) as a series at
the level's grain over whole local weeks covering the data (that is the whole release: every other
number the API shows is a sum of these cells), then -- as consistency checks of the attacker's
model and material for the concrete attacks -- coarser bins, window totals of aligned, misaligned,
overlapping, DST-spanning and still-filling windows, bounding boxes and ``/anomalies``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bench.attack_time import GRAINS, Clock, iso

__all__ = ["BudgetExhaustedError", "CityInfo", "Client", "Crawl", "Response", "crawl", "windows"]

#: Levels from finest to coarsest, as the API names them (used when ``/cities`` is absent).
DEFAULT_LEVELS = ("tract", "neighborhood", "borough", "city")
_KNOWN = re.compile(r"known:\s*(.+)$")
_MORE = re.compile(r",?\s*\.\.\.\s*\((\d+) more\)\s*$")
#: Longest window the API accepts.
MAX_WINDOW = timedelta(days=366)


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

    def pages(self, path: str, params: dict[str, Any], key: str, max_pages: int = 400) -> dict[str, Any] | None:
        """Every page of a paged endpoint merged into one body (``key`` lists the rows); None on
        an error status (e.g. 422: this lens is not offered). ``complete`` says whether every page
        was read (only then is an absent row a statement of the answer)."""
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
    levels: list[str]  # finest first
    #: The grain each level is published at, from the lens echo (``announced``: what ``/cities``
    #: said, when it says anything; a disagreement is reported, the echo wins).
    grains: dict[str, str]
    announced: dict[str, str | None]
    #: Per level: the start of its first bin not published yet (None: everything is published).
    published_until: dict[str, datetime | None]
    #: Parent unit of every unit, per level (``/tracts``); representative points for bboxes.
    parents: dict[str, dict[str, str | None]]
    points: dict[str, dict[str, tuple[float, float]]]
    categories: list[str]
    #: Whether ``categories`` names every category (else the attacker models an unnamed rest).
    categories_complete: bool
    categories_source: str
    start: datetime  # first instant with data (UTC)
    end: datetime  # end of the data (exclusive, UTC)

    def coarser(self, level: str) -> list[str]:
        """Grains coarser than ``level``'s (``/heat`` shows sums of released cells there)."""
        return list(GRAINS[GRAINS.index(self.grains[level]) + 1 :])

    @property
    def coarsest(self) -> str:
        return max(self.grains.values(), key=GRAINS.index)


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
    refused: int = 0  # lenses the server declined (422 etc.)
    exhausted: bool = False
    cities_endpoint: bool = False
    notes: list[str] = field(default_factory=list)  # disagreements between what the API says and shows


def _parse_ts(value: Any) -> datetime | None:
    return datetime.fromisoformat(str(value)).astimezone(UTC) if value else None


def _discover(client: Client) -> tuple[list[dict[str, Any]], bool]:
    """City descriptions from ``/cities`` or, without it, from the 422 of an unknown city (which
    lists the known ones) or the default lens."""
    status, body = client.get("/cities")
    if status == 200 and isinstance(body, dict) and isinstance(body.get("cities"), list):
        out = []
        for c in body["cities"]:
            c = dict(c) if isinstance(c, dict) else {"city": str(c)}
            c["city"] = str(c.get("city") or c.get("id"))
            out.append(c)
        return out, True
    names: list[str] = []
    status, body = client.get("/heat", {"city": "__no_such_city__", "level": "city"})
    if status == 422:
        m = _KNOWN.search(_message(body))
        if m:
            names = [n.strip() for n in m.group(1).split(",") if n.strip()]
    if not names:
        status, body = client.get("/heat", {"level": "city"})
        if status == 200 and isinstance(body, dict):
            names = [body["lens"]["city"]]
    return [{"city": n} for n in names], False


def _message(body: Any) -> str:
    """The text of a 422 (FastAPI ``detail`` list or a ``message``)."""
    if not isinstance(body, dict):
        return ""
    if isinstance(body.get("detail"), list):
        return " ".join(str(d.get("msg", "")) for d in body["detail"] if isinstance(d, dict))
    return str(body.get("message") or body.get("detail") or "")


def _levels(desc: dict[str, Any]) -> tuple[list[str], dict[str, str | None]]:
    raw = desc.get("levels") or list(DEFAULT_LEVELS)
    levels, announced = [], {}
    for lv in raw:
        name = str(lv.get("key") or lv.get("level")) if isinstance(lv, dict) else str(lv)
        levels.append(name)
        announced[name] = lv.get("grain") if isinstance(lv, dict) else None
    return levels, announced


def _probe(client: Client, city: str, level: str) -> dict[str, Any]:
    """The default lens of one level: how the level is published (grain, time zone, cutoff)."""
    status, body = client.get("/heat", {"city": city, "level": level, "limit": 1})
    if status != 200 or not isinstance(body, dict):
        raise RuntimeError(f"/heat?city={city}&level={level} answered {status}")
    lens: dict[str, Any] = body["lens"]
    return lens


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


def _data_range(client: Client, city: str, desc: dict[str, Any], top: str, end: datetime) -> datetime:
    """The first instant with data: ``/cities``' ``first_event``, else the first non-empty bin
    of the top level's coarsest series over the longest window."""
    first = _parse_ts(desc.get("first_event"))
    if first is not None:
        return first
    for grain in ("week", "day", "hour"):
        got = client.pages("/heat", {"city": city, "level": top, "time_bin": grain, **_window(end - MAX_WINDOW, end)}, "cells")
        if got is None:
            continue
        starts = [_parse_ts(c["bin_start"]) for c in got["cells"] if c.get("bin_start") and (c["count"] or c["suppressed"])]
        found = [s for s in starts if s is not None]
        if found:
            return min(found)
    return end - timedelta(days=7)


def _categories(
    client: Client, city: str, desc: dict[str, Any], levels: list[str], grains: dict[str, str], span: tuple[datetime, datetime]
) -> tuple[set[str], int | None, bool]:
    """Category names the API gives away: a ``/cities`` list, the 422 of an unknown category
    (which lists known ones, maybe only the first few) and ``/anomalies`` items and drivers.
    Returns (names, how many there are when the API says, whether the 422 listed all)."""
    found: set[str] = set()
    n: int | None = None
    cats = desc.get("categories")
    if isinstance(cats, list):
        return {str(c) for c in cats}, len(cats), True
    if isinstance(cats, int):
        n = cats
    status, body = client.get("/heat", {"city": city, "level": levels[-1], "category": "\u2400 no such category"})
    listed_all = False
    if status == 422:
        text = _message(body)
        m = _KNOWN.search(text)
        if m:
            listing = m.group(1)
            more = _MORE.search(listing)
            listed_all = more is None
            listing = _MORE.sub("", listing)
            found.update(x.strip() for x in _split_names(listing))
    if not listed_all or n is None:
        for level in levels:
            got = client.pages(
                "/anomalies",
                {"city": city, "level": level, "time_bin": grains[level], "min_z": 0, "q": 1, **_window(*span)},
                "items",
                max_pages=5,
            )
            for item in (got or {}).get("items", []):
                found.add(item["category"])
                found.update(d["category"] for d in item.get("drivers") or [])
    found.discard("*")
    found.discard("other categories (withheld)")
    return found, n, listed_all


def _split_names(listing: str) -> list[str]:
    """Names of a ``", "``-joined listing (names may hold commas without a following space)."""
    return [x for x in listing.split(", ") if x]


def _window(since: datetime, until: datetime) -> dict[str, str]:
    return {"since": iso(since), "until": iso(until)}


def windows(info: CityInfo) -> dict[str, tuple[datetime, datetime]]:
    """The windows asked for: ``all`` (whole local weeks covering the data and the 28 days before
    it, at most a year: the attacker's universe), bin-aligned ones, overlapping ones, misaligned ones, one across a
    daylight-saving change when the data hold one, and one reaching into still-filling bins."""
    clock, end = info.clock, info.end
    coarse = info.coarsest
    top = clock.snap(end - timedelta(hours=1), end, coarse)[1]
    start = clock.floor(info.start - timedelta(days=28), coarse)  # trailing baselines of the first bins too
    while top - start > MAX_WINDOW:
        start = clock.next(start, coarse)
    last = min((t for t in info.published_until.values() if t is not None), default=end)
    week_end = clock.floor(last, "week")
    out = {
        "all": (start, top),
        "last28": (max(start, end - timedelta(days=28)), end),
        "week": (max(start, week_end - timedelta(days=7)), week_end),
        "last7": (max(start, end - timedelta(days=7)), end),
        "prev7": (max(start, end - timedelta(days=8)), end - timedelta(days=1)),
        "mis": (max(start, end - timedelta(days=10, hours=-13)), end - timedelta(days=3, hours=-5)),
        "mis2": (max(start, end - timedelta(days=9, hours=-13)), end - timedelta(days=3, hours=-5)),
        "tail": (max(start, last - timedelta(days=2, hours=7)), top),
    }
    dst = _dst_change(clock, start, top)
    if dst is not None:
        out["dst"] = (max(start, dst - timedelta(days=1, hours=3)), min(top, dst + timedelta(days=1, hours=5)))
    return {k: v for k, v in out.items() if v[0] < v[1]}


def _dst_change(clock: Clock, lo: datetime, hi: datetime) -> datetime | None:
    """An instant where the city's UTC offset changes inside ``[lo, hi)``, if any."""
    t = lo
    off = t.astimezone(clock.tz).utcoffset()
    while t < hi:
        t2 = t + timedelta(hours=1)
        if t2.astimezone(clock.tz).utcoffset() != off:
            return t2
        t = t2
    return None


def _bboxes(info: CityInfo, level: str) -> list[str]:
    """Two boxes around one unit's representative point that differ by (at least) that unit."""
    pts = info.points.get(level) or {}
    if not pts:
        return []
    unit = sorted(pts)[len(pts) // 2]
    lon, lat = pts[unit]
    d = 0.02
    return [f"{lon - d},{lat - d},{lon + d},{lat + d}", f"{lon + 1e-6},{lat - d},{lon + d},{lat + d}"]


def crawl(
    client: Client,
    per_category: bool = True,
    anomalies: bool = True,
    categories: dict[str, list[str]] | None = None,
    sample_categories: int = 3,
) -> Crawl:
    """Crawl the API within the client's budget (stops early, keeping what it has, when spent).

    ``categories``: category names per city the attacker knows from elsewhere (the dashboard's
    category selector lists them all; the API names only some), added to what the API names."""
    described, has_cities = _discover(client)
    out = Crawl(cities=[], cities_endpoint=has_cities)
    try:
        for desc in described:
            info = _learn(client, desc, out, (categories or {}).get(str(desc["city"])))
            out.cities.append(info)
            _crawl_city(client, info, out, per_category, anomalies, sample_categories)
    except BudgetExhaustedError:
        out.exhausted = True
    out.requests = client.requests
    return out


def _learn(client: Client, desc: dict[str, Any], out: Crawl, hint: list[str] | None) -> CityInfo:
    city = str(desc["city"])
    levels, announced = _levels(desc)
    lenses = {level: _probe(client, city, level) for level in levels}
    grains: dict[str, str] = {}
    published: dict[str, datetime | None] = {}
    zone = None
    end = None
    for level, lens in lenses.items():
        grain = lens.get("grain") or announced.get(level)
        if grain is None:
            raise RuntimeError(f"{city}/{level}: the API says nothing about the level's grain")
        if announced.get(level) and announced[level] != grain:
            out.notes.append(f"{city}/{level}: /cities announces {announced[level]}, the lens shows {grain}")
        grains[level] = str(grain)
        published[level] = _parse_ts(lens.get("published_until"))
        zone = zone or lens.get("timezone") or desc.get("timezone")
        until = _parse_ts(lens.get("until"))
        end = until if end is None or (until and until > end) else end
    if desc.get("timezone") and zone and desc["timezone"] != zone:
        out.notes.append(f"{city}: /cities says {desc['timezone']}, the lens {zone}")
    parents, points = _hierarchy(client, city, levels)
    assert end is not None
    last = _parse_ts(desc.get("last_event"))
    if last is not None and last >= end:
        end = last + timedelta(seconds=1)
    clock = Clock(zone) if zone else _infer_clock(client, city, levels, end)
    start = _data_range(client, city, desc, levels[-1], end)
    probe = CityInfo(city, clock, levels, grains, announced, published, parents, points, [], False, "", start, end)
    span = windows(probe)["all"]
    names, n, listed_all = _categories(client, city, desc, levels, grains, span)
    source = "api"
    if hint:
        extra = set(hint) - names
        names |= set(hint)
        source = "api+hint" if extra else "api"
    complete = (n is not None and len(names) >= n) or listed_all
    probe.categories = sorted(names)
    probe.categories_complete = complete
    probe.categories_source = source
    return probe


def _infer_clock(client: Client, city: str, levels: list[str], end: datetime) -> Clock:
    """Without an announced time zone: the fixed UTC offset at which the city's day bins start
    (UTC when day bins start at midnight UTC or are not offered)."""
    got = client.pages("/heat", {"city": city, "level": levels[-1], "time_bin": "day", **_window(end - timedelta(days=3), end)}, "cells")
    if got and got["cells"]:
        first = datetime.fromisoformat(got["cells"][0]["bin_start"]).astimezone(UTC)
        if first.hour:
            return Clock(offset_hours=-first.hour if first.hour <= 12 else 24 - first.hour)
    return Clock(None)


def _crawl_city(client: Client, info: CityInfo, out: Crawl, per_category: bool, anomalies: bool, sample: int) -> None:
    city, wins = info.city, windows(info)

    def heat(name: str, level: str, grain: str | None, category: str | None = None, bbox: str | None = None) -> None:
        since, until = wins[name]
        params = {"city": city, "level": level, "time_bin": grain, "category": category, "bbox": bbox, **_window(since, until)}
        got = client.pages("/heat", params, "cells")
        if got is None:
            out.refused += 1
            return
        out.heat.append(Response("/heat", params, got, name))

    cats: list[str | None] = [None, *(info.categories if per_category else [])]
    few: list[str | None] = [None, *info.categories[:sample]]
    # 1. The release: every level x category at the level's grain over the whole universe.
    for level in info.levels:
        for cat in cats:
            heat("all", level, info.grains[level], cat)
    # 2. Checks: coarser bins and window totals (sums of released cells), boxes, anomalies.
    for level in info.levels:
        for cat in few:
            for grain in info.coarser(level):
                heat("all", level, grain, cat)
            for name in wins:
                if cat is None or name in ("all", "mis", "dst", "tail"):
                    heat(name, level, None, cat)
        for name in ("mis", "dst", "tail"):
            if name in wins:
                heat(name, level, info.grains[level])
    for level in info.levels[:2]:
        for box in _bboxes(info, level):
            heat("last7", level, None, bbox=box)
            heat("last7", level, info.grains[level], bbox=box)
    if anomalies:
        since, until = wins["all"]
        for level in info.levels:
            for grain in [info.grains[level], *info.coarser(level)]:
                for dips in (False, True):
                    params = {
                        "city": city,
                        "level": level,
                        "time_bin": grain,
                        "min_z": 0,
                        "q": 1,
                        "dips": "true" if dips else "false",
                        **_window(since, until),
                    }
                    got = client.pages("/anomalies", params, "items", max_pages=60)
                    if got is None:
                        out.refused += 1
                    else:
                        out.anomalies.append(Response("/anomalies", params, got, "all"))
