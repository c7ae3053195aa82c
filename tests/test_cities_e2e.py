"""Every city end to end through the real server over real public data (skipped with a reason when
``../shared/data`` is absent): Chicago crimes (census tract -> community area -> side), UK planned
roadworks (H3 cells) and Boston Open311 (H3 cells, replayed), each in a store holding only that city.

The assertions are contracts, not the engine's current numbers: status codes and schemas, names
rather than ids, every unit paged once, released counts that add up through the hierarchy, a parent
never released beside a single withheld child, and released city totals equal to a direct count
of the file's rows in the window.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import polars as pl
import pytest

from app.data.geography import LEVELS
from app.data.store import Store
from tests.real_stores import (
    UK_XML,
    boston_rows,
    build_boston,
    chicago_2012_times,
    chicago_slim_rows,
    chicago_slim_times,
    count_between,
    ingest_cli,
    serve_logged,
    uk_works,
)

K = 11  # the server's default release rule: suppress counts 1..10
JUNE_2022 = (datetime(2022, 6, 1, tzinfo=UTC), datetime(2022, 7, 1, tzinfo=UTC))  # slim file: no points
FEB_2012 = (datetime(2012, 1, 29, tzinfo=UTC), datetime(2012, 2, 12, tzinfo=UTC))  # SODA export: located
APRIL_2025 = (datetime(2025, 4, 1, tzinfo=UTC), datetime(2025, 5, 1, tzinfo=UTC))
#: Five whole weeks (Monday to Monday) around the UK extract's date: some April days start fewer
#: than k works (a day withheld withholds the day-binned window total), no week does.
UK_WEEKS = (datetime(2025, 3, 30, 23, tzinfo=UTC), datetime(2025, 5, 4, 23, tzinfo=UTC))  # local (BST) Mondays


# ---- helpers -----------------------------------------------------------------------------------
def _get(url: str, path: str, **params: Any) -> Any:
    r = httpx.get(f"{url}{path}", params=params, timeout=120)
    assert r.status_code == 200, f"{path} {params}: {r.status_code} {r.text[:500]}"
    return r.json()


def _window(window: tuple[datetime, datetime]) -> dict[str, str]:
    return {"since": window[0].isoformat(), "until": window[1].isoformat()}


def _validate(spec: dict[str, Any], model: str, body: Any) -> None:
    jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{model}", "components": spec["components"]}).validate(body)


def _units(url: str, city: str) -> dict[str, dict[str, dict[str, Any]]]:
    """level -> unit_id -> properties (name, parent_id, ...) from /tracts."""
    return {
        level: {f["properties"]["unit_id"]: f["properties"] for f in _get(url, "/tracts", city=city, level=level)["features"]}
        for level in LEVELS
    }


def _grid(url: str, city: str, level: str, window: tuple[datetime, datetime]) -> tuple[datetime, datetime]:
    """The window a served total counts: widened to whole bins of the level's published grain, and
    ending where the published (complete) bins end."""
    lens = _get(url, "/heat", city=city, level=level, limit=1, **_window(window))["lens"]
    until = datetime.fromisoformat(lens["grid_until"])
    if lens["published_until"] is not None:
        until = min(until, datetime.fromisoformat(lens["published_until"]))
    return datetime.fromisoformat(lens["grid_since"]), until


def _bin_counts(url: str, city: str, window: tuple[datetime, datetime], times: list[datetime], **params: Any) -> list[dict[str, Any]]:
    """The city's bins in the window (at the grain it publishes), each checked against a direct
    count of ``times`` in that bin (a bin ends where the next begins, the last at the grid's end)."""
    bins = _all_cells(url, city, "city", window, **params)
    ends = [datetime.fromisoformat(b["bin_start"]) for b in bins[1:]] + [_grid(url, city, "city", window)[1]]
    for b, end in zip(bins, ends, strict=True):
        if b["count"] is not None:
            assert b["count"] == count_between(times, datetime.fromisoformat(b["bin_start"]), end), b
    return bins


def _all_cells(url: str, city: str, level: str, window: tuple[datetime, datetime], **params: Any) -> list[dict[str, Any]]:
    """Every /heat cell of a level, page by page (checking the paging contract on the way)."""
    cells: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        body = _get(url, "/heat", city=city, level=level, limit=1000, offset=offset, **_window(window), **params)
        assert body["lens"]["city"] == city
        cells += body["cells"]
        offset = body["next_offset"]
    assert len(cells) == body["total"]
    return cells


def check_levels(
    url: str, city: str, window: tuple[datetime, datetime], units: dict[str, dict[str, dict[str, Any]]], area_only: bool = False
) -> dict[str, Any]:
    """/heat at every level of ``city``: each unit once, named by its name, released counts 0 or
    >= k and adding up to their parent; returns the city-level cell. ``area_only``: the store has
    events known only by their neighborhood (they count from the neighborhood up, in no tract)."""
    cells = {level: _all_cells(url, city, level, window) for level in LEVELS}
    for level, rows in cells.items():
        assert sorted(c["unit_id"] for c in rows) == sorted(units[level]), level  # every unit exactly once
        for c in rows:
            assert c["suppressed"] == (c["count"] is None)
            assert c["count"] is None or c["count"] == 0 or c["count"] >= K
            assert c["name"] == units[level][c["unit_id"]]["name"]
            if level != "city":
                assert c["name"] != c["unit_id"], c  # a name, not the id again
    for child, parent in itertools.pairwise(LEVELS):
        by_parent: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for c in cells[child]:
            by_parent[units[child][c["unit_id"]]["parent_id"]].append(c)
        for p in cells[parent]:
            kids = by_parent.get(p["unit_id"], [])
            released, withheld = [k["count"] for k in kids if k["count"] is not None], [k for k in kids if k["count"] is None]
            if p["count"] is None:
                continue
            assert sum(released) <= p["count"], (child, p)
            if parent == "city" or (child == "tract" and area_only):
                continue  # unlocated events count at the city only, area-only ones from the neighborhood up
            if not withheld:
                assert sum(released) == p["count"], (child, p)  # the hierarchy adds up
            assert len(withheld) != 1, f"{child} {withheld[0]['unit_id']} could be recovered from its released {parent} and siblings"
    (city_cell,) = cells["city"]
    return dict(city_cell)


def check_anomalies(url: str, city: str, units: dict[str, dict[str, dict[str, Any]]], spec: dict[str, Any], **window: str) -> None:
    """/anomalies at every level and time bin: valid, named, released counts only."""
    for level in LEVELS:
        for time_bin in ("day", "week", "hour") if level == "city" else ("day", "week"):
            body = _get(url, "/anomalies", city=city, level=level, time_bin=time_bin, min_z=0, q=1, limit=1000, **window)
            _validate(spec, "AnomaliesOut", body)
            assert body["lens"]["city"] == city
            assert body["total"] == len(body["items"])
            for a in body["items"]:
                assert a["level"] in LEVELS[LEVELS.index(level) :]  # its level or a roll-up above it
                assert a["name"] == units[a["level"]][a["unit_id"]]["name"]
                assert a["observed"] >= K
                assert a["name"] in a["narrative"]


def check_cities(url: str, spec: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """/cities lists this one city only, as ``expected`` says, and it is every route's default."""
    body = _get(url, "/cities")
    _validate(spec, "CitiesOut", body)
    (city,) = body["cities"]
    assert body["default_city"] == city["id"] == expected["id"]
    for key, value in expected.items():
        assert city[key] == value, key
    assert _get(url, "/heat", level="city")["lens"]["city"] == city["id"]  # no city= needed
    assert httpx.get(f"{url}/dashboard", timeout=60).status_code == 200
    return dict(city)


def exact_totals(data_dir: Path, city: str, window: tuple[datetime, datetime]) -> dict[str, int]:
    """Per level, how many of the snapshot's events of the window that level counts, read from the
    store without the release rule (the reference the released numbers are checked against): a
    tract counts located events, a neighborhood and its parents also those known only by their
    area, the city every event."""
    snap = Store(data_dir).current()
    assert snap is not None
    events = snap.events(city).filter(pl.col("ts").is_between(*window, closed="left"))
    areas = set(snap.units(city, "neighborhood")["unit_id"].to_list())
    located = events.filter(pl.col("tract_id").is_not_null()).height
    in_area = events.filter(pl.col("tract_id").is_null() & pl.col("area_id").is_in(list(areas))).height
    return {"tract": located, "neighborhood": located + in_area, "borough": located + in_area, "city": events.height}


def _level_names(city: dict[str, Any]) -> list[str]:
    return [lv["name"] for lv in city["levels"]]


# ---- Chicago -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chicago_spec(chicago_server: str) -> dict[str, Any]:
    return dict(_get(chicago_server, "/openapi.json"))


@pytest.fixture(scope="module")
def chicago_units(chicago_server: str) -> dict[str, dict[str, dict[str, Any]]]:
    return _units(chicago_server, "chicago")


def test_chicago_server_serves_cities_with_its_names(chicago_server: str, chicago_spec: dict[str, Any]) -> None:
    slim = chicago_slim_rows()
    times = chicago_slim_times(slim) + chicago_2012_times()
    city = check_cities(
        chicago_server,
        chicago_spec,
        {"id": "chicago", "name": "Chicago", "timezone": "America/Chicago", "kinds": ["incident"]},
    )
    assert _level_names(city) == ["Census tract", "Community area", "Side", "City"]
    assert [lv["units"] for lv in city["levels"]] == [801, 77, 9, 1]
    assert datetime.fromisoformat(city["first_event"]) == min(times)
    assert datetime.fromisoformat(city["last_event"]) == max(times)
    assert city["categories"] >= len({r["Primary Type"] for r in slim})
    health = _get(chicago_server, "/healthz")
    assert [s["source"] for s in health["sources"]] == ["chicago_crimes"]


def test_chicago_tracts_match_the_levels(chicago_server: str, chicago_units: dict[str, Any]) -> None:
    city = _get(chicago_server, "/cities")["cities"][0]
    assert [len(chicago_units[lv["key"]]) for lv in city["levels"]] == [lv["units"] for lv in city["levels"]]
    assert chicago_units["neighborhood"]["35"]["name"] == "DOUGLAS"  # community area 35, by its name
    assert {u["name"] for u in chicago_units["borough"].values()} >= {"Far North Side", "Central", "Far Southwest Side"}


def test_chicago_2022_city_total_equals_the_file(chicago_server: str, chicago_units: dict[str, Any]) -> None:
    """The 2022 file has no points: every incident counts at the city level, exactly once."""
    times = chicago_slim_times(chicago_slim_rows())
    city = check_levels(chicago_server, "chicago", JUNE_2022, chicago_units, area_only=True)
    grid = _grid(chicago_server, "chicago", "city", JUNE_2022)
    assert grid[0] <= JUNE_2022[0]
    assert grid[1] >= JUNE_2022[1]  # June 2022 is long published
    assert city["count"] == count_between(times, *grid) > 10_000  # a month of a city is released
    bins = _bin_counts(chicago_server, "chicago", JUNE_2022, times, time_bin="day")
    assert len(bins) >= 5
    assert sum(b["count"] is not None for b in bins) >= 4
    theft = _get(chicago_server, "/heat", city="chicago", level="city", category="THEFT", **_window(JUNE_2022))["cells"][0]
    rows = [t for t, r in zip(times, chicago_slim_rows(), strict=True) if r["Primary Type"] == "THEFT"]
    assert theft["count"] == count_between(rows, *grid)


def test_chicago_2012_located_rows_add_up_at_every_level(chicago_server: str, chicago_units: dict[str, Any], chicago_dir: Path) -> None:
    city = check_levels(chicago_server, "chicago", FEB_2012, chicago_units, area_only=True)
    grid = _grid(chicago_server, "chicago", "city", FEB_2012)
    assert city["count"] == count_between(chicago_2012_times(), *grid) > 1_000
    exact = exact_totals(chicago_dir, "chicago", grid)
    located = count_between(chicago_2012_times(located=True), *grid)
    assert exact["city"] == city["count"]
    assert exact["tract"] == exact["neighborhood"] == exact["borough"] <= located  # a point outside every tract counts at the city only
    assert exact["tract"] >= 0.99 * located  # README: 99.8% of the located rows fall in a tract


def test_chicago_anomalies_at_every_level(chicago_server: str, chicago_units: dict[str, Any], chicago_spec: dict[str, Any]) -> None:
    check_anomalies(chicago_server, "chicago", chicago_units, chicago_spec)  # the default window: the newest week
    check_anomalies(chicago_server, "chicago", chicago_units, chicago_spec, **_window(FEB_2012))


# ---- UK planned roadworks (H3) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def uk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not UK_XML.exists():
        pytest.skip(f"shared real data absent ({UK_XML.name}); see ../shared/data/README.md")
    data_dir = tmp_path_factory.mktemp("uk")
    summary = ingest_cli(data_dir, "uk_planned_roadworks", UK_XML)
    assert summary["error"] is None
    yield from serve_logged(data_dir, tmp_path_factory)


def test_uk_roadworks_end_to_end_on_h3_levels(uk_server: str) -> None:
    spec = _get(uk_server, "/openapi.json")
    works = uk_works()
    city = check_cities(
        uk_server,
        spec,
        {"id": "uk", "name": "England", "timezone": "Europe/London", "kinds": ["closure"]},
    )
    assert _level_names(city) == ["H3 cell (res 7)", "H3 cell (res 5)", "H3 cell (res 3)", "Region"]
    assert city["categories"] == len({w["CLOSURE_TYPE"] for w in works})
    assert datetime.fromisoformat(city["first_event"]) == min(w["start"] for w in works)
    units = _units(uk_server, "uk")
    assert [len(units[lv]) for lv in LEVELS] == [lv["units"] for lv in city["levels"]]
    starts = [w["start"] for w in works]
    total = check_levels(uk_server, "uk", APRIL_2025, units)
    assert total["name"] == "England"
    assert total["count"] in (None, count_between(starts, *_grid(uk_server, "uk", "city", APRIL_2025)))
    assert total["partial"]  # April reaches into the week of the newest works, not published yet
    weeks = _bin_counts(uk_server, "uk", UK_WEEKS, starts, time_bin="week")
    assert len(weeks) == 5
    assert [w["partial"] for w in weeks] == [False] * 4 + [True]  # the newest works start in the last week
    for week in weeks[:4]:
        assert week["count"] is not None, week  # each complete week released
        assert week["count"] >= 60, week
    assert sum(w["count"] for w in weeks[:4]) == count_between(starts, *_grid(uk_server, "uk", "city", UK_WEEKS)) > 1_000
    check_anomalies(uk_server, "uk", units, spec, **_window(APRIL_2025))


# ---- Boston Open311 (H3, replayed) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def boston_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("boston")
    build_boston(data_dir)
    return data_dir


@pytest.fixture(scope="module")
def boston_server(boston_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from serve_logged(boston_dir, tmp_path_factory)


def test_boston_open311_end_to_end_on_h3_levels(boston_server: str, boston_dir: Path) -> None:
    spec = _get(boston_server, "/openapi.json")
    rows = boston_rows()
    city = check_cities(boston_server, spec, {"id": "boston", "name": "Boston", "kinds": ["request"], "timezone": "America/New_York"})
    assert _level_names(city) == ["H3 cell (res 7)", "H3 cell (res 5)", "H3 cell (res 3)", "Region"]
    assert city["categories"] == len({r["service_name"] for r in rows})
    assert datetime.fromisoformat(city["last_event"]) == max(r["ts"] for r in rows)
    units = _units(boston_server, "boston")
    lens = _get(boston_server, "/heat", level="city")["lens"]  # the default window: the newest week
    window = (datetime.fromisoformat(lens["since"]), datetime.fromisoformat(lens["until"]))
    total = check_levels(boston_server, "boston", window, units)
    in_window = count_between([r["ts"] for r in rows], *window)
    assert in_window == len(rows) == 12
    assert total["count"] in (None, in_window)  # twelve requests over five days: withheld day by day
    check_anomalies(boston_server, "boston", units, spec)
    exact = exact_totals(boston_dir, "boston", window)
    located = [r for r in rows if r.get("lat") is not None]
    assert exact["city"] == in_window
    assert exact["tract"] == exact["neighborhood"] == exact["borough"] == len(located) == in_window - 1  # one request has no point
