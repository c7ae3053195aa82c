"""City facts (``app.data.cities``) and ``GET /cities`` over the tiny demo: names, levels, kinds,
time zones and the default city, checked against the snapshot itself; and a store without NYC
that must warm, build its page and serve its own city."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import jsonschema
import panel as pn
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
    default_city,
    level_name,
    level_names,
)
from app.data.geography import LEVELS
from app.data.ingest import canonical_rows, commit_page, read_state
from app.data.registry import city_timezone, get_source
from app.data.snapshot import Snapshot
from app.data.sources import adapter_for
from app.data.store import Store
from app.engine.lens import KINDS, Lens
from app.pipeline import publish
from app.views.page import Controls, build_dashboard
from panel_serve import warm


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
    assert city_timezone("uk") == "Europe/London"  # the DATEX entry says UTC (its times carry offsets): the city's clock wins
    assert city_timezone("boston") == "America/New_York"  # Open311 sends offsets (its source says UTC); Boston lives in New York's zone
    assert city_timezone("atlantis") == "UTC"


def test_published_grain_per_level_is_the_release_s(tiny_snap: Snapshot) -> None:
    info = city_info(tiny_snap, "nyc")
    assert (
        [lv.grain for lv in info.levels]
        == [tiny_snap.release_meta("nyc")["grains"][lv] for lv in LEVELS]
        == ["week", "day", "hour", "hour"]
    )


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


# ---- a store without NYC ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def boston_only(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A store holding only an Open311 city (H3 levels), from rows shaped like Boston's: the server
    of such a store must start, warm and serve without any NYC in sight."""
    spec = get_source("boston311")
    rows = [
        {
            "service_request_id": f"r{i}",
            "requested_datetime": f"2025-11-{1 + i % 3:02d}T{8 + i % 10:02d}:15:00-05:00",
            "updated_datetime": "2025-11-03T12:00:00-05:00",
            "service_name": ("Pothole", "Graffiti", "Street Light")[i % 3],
            "lat": 42.35 + (i % 7) * 0.01,
            "long": -71.06 - (i % 5) * 0.01,
        }
        for i in range(120)
    ]
    data_dir = tmp_path_factory.mktemp("boston-only")
    store = Store(data_dir)
    frame, units, _ = canonical_rows(spec, adapter_for(spec).normalize(rows), datetime.now(UTC))
    with store.writer() as con:
        read_state(con, spec.name)
        commit_page(con, store, spec, frame, units)
    publish(store, {"boston"}, built_by="test")
    return Settings(data_dir=data_dir, scheduler_enabled=False)


def test_a_store_without_nyc_warms_builds_and_serves_its_own_city(boston_only: Settings) -> None:
    app = create_app(boston_only)
    warm(app)  # the start-up warm-up assumed NYC and crashed
    page = build_dashboard(Store(boston_only.data_dir), boston_only)
    city = _only_select(page, "City")
    assert (city.value, list(city.options)) == ("boston", ["Boston"])
    assert list(_only_select(page, "Admin level").options) == ["H3 cell (res 7)", "H3 cell (res 5)", "H3 cell (res 3)", "Region"]
    (kinds,) = page.sidebar[0].select(pn.widgets.CheckBoxGroup)
    assert (list(kinds.options), kinds.value) == (["Service requests"], ["request"])  # only the kinds the city has
    with TestClient(app) as client:
        body = client.get("/cities").json()
        assert body["default_city"] == "boston"
        assert [(c["id"], c["name"], c["kinds"]) for c in body["cities"]] == [("boston", "Boston", ["request"])]
        for level in LEVELS:
            heat = client.get(f"/heat?level={level}")
            assert heat.status_code == 200, heat.text
            assert heat.json()["lens"]["city"] == "boston"
            assert client.get(f"/anomalies?level={level}").status_code == 200
        region = client.get("/heat?level=city").json()["cells"][0]
        assert region["name"] == "Boston"
        assert client.get("/heat?city=nyc").status_code == 422


def _only_select(page: Any, label: str) -> pn.widgets.Select:
    (found,) = [w for w in page.sidebar[0].select(pn.widgets.Select) if w.label == label]
    assert isinstance(found, pn.widgets.Select)
    return found


def test_kinds_box_offers_the_citys_kinds_and_keeps_the_others_out_of_the_way(boston_only: Settings, tiny_settings: Settings) -> None:
    boston = Lens(snapshot=Store(boston_only.data_dir).current())
    boston.city = "boston"
    (box,) = Controls(lens=boston).__panel__().select(pn.widgets.CheckBoxGroup)
    box.value = []
    assert boston.kinds == ["incident", "closure"]  # Boston's one kind unticked: nothing of Boston is shown
    assert boston.events().height == 0
    box.value = ["request"]
    assert boston.kinds == list(KINDS)  # every kind the city offers ticked: "all kinds", the engine's fast path
    nyc = Lens(snapshot=Store(tiny_settings.data_dir).current())
    (box,) = Controls(lens=nyc).__panel__().select(pn.widgets.CheckBoxGroup)
    assert list(box.options) == ["Service requests", "Incidents", "Road closures"]
    box.value = ["request", "incident"]
    assert nyc.kinds == ["request", "incident"]
    nyc.kinds = ["closure"]  # a link or another view sets the lens: the box follows
    assert box.value == ["closure"]
