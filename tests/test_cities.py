"""City facts (``app.data.cities``) and ``GET /cities`` over the tiny demo: names, levels, kinds,
time zones and the default city, checked against the snapshot itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import polars as pl
import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.data.cities import (
    EVENT_KINDS,
    city_info,
    city_kinds,
    city_name,
    city_timezone,
    default_city,
    level_name,
    level_names,
    published_grain,
)
from app.data.geography import LEVELS
from app.data.registry import get_source, load_registry
from app.data.snapshot import Snapshot


@pytest.fixture(scope="module")
def client(tiny_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(tiny_settings)) as c:
        yield c


def test_level_names_follow_each_citys_own_words() -> None:
    assert level_names("nyc") == {"tract": "Census tract", "neighborhood": "Neighborhood (NTA)", "borough": "Borough", "city": "City"}
    assert [level_name("chicago", lv) for lv in LEVELS] == ["Census tract", "Community area", "Side", "City"]
    h3 = ["H3 cell (res 7)", "H3 cell (res 5)", "H3 cell (res 3)", "Region"]
    assert [level_name("uk", lv) for lv in LEVELS] == [level_name("boston", lv) for lv in LEVELS] == h3  # no boundary set: H3
    assert list(level_names("chicago")) == list(LEVELS)  # the generic keys, finest first


def test_city_names_and_time_zones_come_from_one_table_and_the_registry() -> None:
    assert (city_name("nyc"), city_name("chicago"), city_name("san_jose")) == ("New York City", "Chicago", "San Jose")
    assert city_timezone("nyc") == "America/New_York"
    assert city_timezone("chicago") == "America/Chicago"
    assert city_timezone("uk") == "Europe/London"  # the DATEX entry says UTC (its times carry offsets): the local zone wins
    assert city_timezone("atlantis") == "UTC"
    assert city_timezone("boston") == get_source("boston311").timezone
    registry = load_registry()
    assert {city_timezone(s.city, registry) for s in registry.values() if s.city == "chicago"} == {"America/Chicago"}


def test_published_grain_per_level() -> None:
    assert [published_grain(lv) for lv in LEVELS] == ["week", "day", "hour", "hour"]


def test_city_info_agrees_with_the_snapshot(tiny_snap: Snapshot) -> None:
    info = city_info(tiny_snap, "nyc")
    events = tiny_snap.events("nyc")
    assert info.name == "New York City"
    assert [(lv.key, lv.units) for lv in info.levels] == [("tract", 2325), ("neighborhood", 262), ("borough", 5), ("city", 1)]
    assert info.kinds == EVENT_KINDS == city_kinds(tiny_snap, "nyc")  # the demo has requests, incidents and closures
    assert info.categories == events["category"].n_unique()
    assert (info.first_event, info.last_event) == (events["ts"].min(), events["ts"].max())
    assert city_info(tiny_snap, "nyc") is info  # memoised on the snapshot


def test_default_city_prefers_the_asked_one_then_the_first(tiny_snap: Snapshot) -> None:
    assert default_city(tiny_snap, "nyc") == "nyc"
    assert default_city(tiny_snap, "chicago") == "nyc"  # not served: the snapshot's first city
    assert default_city(tiny_snap) == tiny_snap.cities()[0]


def test_cities_route_lists_every_city_with_names_levels_and_zone(client: TestClient, tiny_snap: Snapshot) -> None:
    r = client.get("/cities")
    assert r.status_code == 200
    body = r.json()
    spec = client.get("/openapi.json").json()
    jsonschema.Draft202012Validator({"$ref": "#/components/schemas/CitiesOut", "components": spec["components"]}).validate(body)
    assert body["snapshot_id"] == tiny_snap.id
    assert body["default_city"] == "nyc"
    (nyc,) = body["cities"]
    assert (nyc["id"], nyc["name"], nyc["timezone"]) == ("nyc", "New York City", "America/New_York")
    assert nyc["levels"] == [
        {"key": "tract", "name": "Census tract", "units": 2325, "grain": "week"},
        {"key": "neighborhood", "name": "Neighborhood (NTA)", "units": 262, "grain": "day"},
        {"key": "borough", "name": "Borough", "units": 5, "grain": "hour"},
        {"key": "city", "name": "City", "units": 1, "grain": "hour"},
    ]
    assert nyc["kinds"] == ["request", "incident", "closure"]
    events = tiny_snap.events("nyc")
    assert nyc["categories"] == events["category"].n_unique()
    assert pl.Series([nyc["first_event"], nyc["last_event"]]).str.to_datetime(time_zone="UTC").to_list() == [
        events["ts"].min(),
        events["ts"].max(),
    ]


def test_level_units_agree_with_tracts(client: TestClient) -> None:
    (nyc,) = client.get("/cities").json()["cities"]
    for level in nyc["levels"]:
        features: list[Any] = client.get(f"/tracts?city=nyc&level={level['key']}").json()["features"]
        assert len(features) == level["units"], level


def test_routes_default_to_the_default_city(client: TestClient) -> None:
    assert client.get("/heat?level=borough").json()["lens"]["city"] == "nyc"
    assert len(client.get("/tracts?level=borough").json()["features"]) == 5
