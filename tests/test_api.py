"""The HTTP API over the tiny demo snapshot: shapes, paging, privacy and every 422 rule."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import polars as pl
import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.data.store import Store

WINDOW = "since=2026-10-20T00:00:00Z&until=2026-11-01T00:00:00Z"


@pytest.fixture(scope="module")
def client(tiny_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(tiny_settings)) as c:
        yield c


@pytest.fixture(scope="module")
def open_client(tiny_dir: Path) -> Iterator[TestClient]:
    """An internal-use app (privacy mode 'none') over the same snapshot, to check totals."""
    with TestClient(create_app(Settings(data_dir=tiny_dir, scheduler_enabled=False, privacy_mode="none"))) as c:
        yield c


@pytest.fixture(scope="module")
def openapi(client: TestClient) -> dict[str, Any]:
    spec = client.get("/openapi.json")
    assert spec.status_code == 200
    return dict(spec.json())


def _validate(openapi: dict[str, Any], model: str, body: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{model}", "components": openapi["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


# ---- health, geography, entry points ---------------------------------------------------------
def test_healthz_reports_snapshot_rows_and_source_freshness(client: TestClient, openapi: dict[str, Any], tiny_store: Store) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    _validate(openapi, "HealthOut", body)
    snap = tiny_store.current()
    assert snap is not None
    assert body["snapshot"]["id"] == snap.id
    assert body["snapshot"]["rows"]["request"] == snap.row_counts()["request"] > 0
    assert body["snapshot"]["age_s"] >= 0
    assert [s["source"] for s in body["sources"]] == ["demo"]
    assert body["sources"][0]["age_s"] is not None


def test_healthz_is_503_before_any_snapshot(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(data_dir=tmp_path, scheduler_enabled=False))) as c:
        r = c.get("/healthz")
        assert r.status_code == 503
        assert r.json()["status"] == "starting"
        assert c.get("/heat").status_code == 503


@pytest.mark.parametrize(("level", "expected"), [("tract", 2325), ("neighborhood", 262), ("borough", 5), ("city", 1)])
def test_tracts_returns_every_unit_of_a_level(client: TestClient, openapi: dict[str, Any], level: str, expected: int) -> None:
    r = client.get(f"/tracts?city=nyc&level={level}")
    assert r.status_code == 200
    body = r.json()
    assert body["type"] == "FeatureCollection"
    assert len(body["features"]) == expected
    assert {f["geometry"]["type"] for f in body["features"]} <= {"Polygon", "MultiPolygon"}
    first = body["features"][0]
    assert first["properties"]["level"] == level
    assert -74.3 < first["properties"]["lon"] < -73.6
    if level == "borough":  # the small collections are cheap to validate whole
        _validate(openapi, "FeatureCollection", body)


def test_root_redirects_to_dashboard_and_favicon_is_served(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code in (302, 307)
    assert r.headers["location"] == "/dashboard"
    fav = client.get("/favicon.ico")
    assert fav.status_code == 200
    assert fav.content[:4] == b"\x00\x00\x01\x00"  # ICO magic


# ---- /heat -----------------------------------------------------------------------------------
def test_heat_is_valid_and_pages_cover_all_units(client: TestClient, openapi: dict[str, Any]) -> None:
    first = client.get(f"/heat?city=nyc&level=neighborhood&limit=200&{WINDOW}").json()
    _validate(openapi, "HeatOut", first)
    assert first["total"] == 262
    assert first["next_offset"] == 200
    second = client.get(f"/heat?city=nyc&level=neighborhood&limit=200&offset=200&{WINDOW}").json()
    assert second["next_offset"] is None
    ids = [c["unit_id"] for c in first["cells"] + second["cells"]]
    assert len(ids) == len(set(ids)) == 262


def test_heat_city_total_equals_events_in_window(open_client: TestClient, tiny_store: Store) -> None:
    body = open_client.get(f"/heat?city=nyc&level=city&{WINDOW}").json()
    snap = tiny_store.current()
    assert snap is not None
    events = snap.events("nyc")
    expected = events.filter(
        pl.col("ts").is_between(pl.datetime(2026, 10, 20, time_zone="UTC"), pl.datetime(2026, 11, 1, time_zone="UTC"), closed="left")
    ).height
    assert body["cells"] == [
        {"unit_id": "nyc", "name": "New York City", "bin_start": None, "count": expected, "suppressed": False, "rollup": None}
    ]


def test_heat_borough_counts_sum_to_located_events(open_client: TestClient, tiny_store: Store) -> None:
    body = open_client.get(f"/heat?city=nyc&level=borough&{WINDOW}").json()
    snap = tiny_store.current()
    assert snap is not None
    located = snap.events("nyc").filter(
        pl.col("tract_id").is_not_null()
        & pl.col("ts").is_between(pl.datetime(2026, 10, 20, time_zone="UTC"), pl.datetime(2026, 11, 1, time_zone="UTC"), closed="left")
    )
    assert sum(c["count"] for c in body["cells"]) == located.height


def test_heat_suppresses_small_counts(client: TestClient) -> None:
    body = client.get(f"/heat?city=nyc&level=tract&limit=1000&{WINDOW}").json()
    assert body["privacy"] == {"mode": "suppress", "k": 11, "epsilon": None, "epsilon_spent": None}
    counts = [c["count"] for c in body["cells"]]
    assert all(c is None or c == 0 or c >= 11 for c in counts)
    assert any(c["suppressed"] and c["count"] is None for c in body["cells"])  # the tiny city has small tracts
    assert all(c["suppressed"] == (c["count"] is None) for c in body["cells"])


def test_heat_time_bins_split_the_window(open_client: TestClient) -> None:
    totals = open_client.get(f"/heat?city=nyc&level=borough&{WINDOW}").json()
    daily = open_client.get(f"/heat?city=nyc&level=borough&time_bin=day&limit=1000&{WINDOW}").json()
    assert daily["time_bin"] == "day"
    assert daily["total"] == 5 * 12
    per_borough: dict[str, int] = {}
    for cell in daily["cells"]:
        per_borough[cell["unit_id"]] = per_borough.get(cell["unit_id"], 0) + cell["count"]
    assert per_borough == {c["unit_id"]: c["count"] for c in totals["cells"]}


def test_heat_bbox_selects_units_by_representative_point(client: TestClient) -> None:
    manhattan = "-74.03,40.68,-73.90,40.88"
    body = client.get(f"/heat?city=nyc&level=borough&bbox={manhattan}&{WINDOW}").json()
    assert [c["unit_id"] for c in body["cells"]] == ["MN"]


def test_heat_category_filter_counts_only_that_category(open_client: TestClient) -> None:
    everything = open_client.get(f"/heat?city=nyc&level=city&{WINDOW}").json()["cells"][0]["count"]
    noise = open_client.get(f"/heat?city=nyc&level=city&category=Noise - Residential&{WINDOW}").json()
    assert noise["lens"]["category"] == "Noise - Residential"
    assert 0 < noise["cells"][0]["count"] < everything


# ---- /anomalies ------------------------------------------------------------------------------
def test_anomalies_valid_sorted_and_paged(client: TestClient, openapi: dict[str, Any]) -> None:
    full = client.get(f"/anomalies?city=nyc&level=neighborhood&min_z=2&limit=1000&{WINDOW}").json()
    _validate(openapi, "AnomaliesOut", full)
    assert full["total"] == len(full["items"]) > 2
    z = [a["zscore"] for a in full["items"]]
    assert z == sorted(z, reverse=True)
    assert min(z) >= 2
    assert all(a["observed"] >= 11 for a in full["items"])  # suppress mode withholds small counts
    page1 = client.get(f"/anomalies?city=nyc&level=neighborhood&min_z=2&limit=2&{WINDOW}").json()
    page2 = client.get(f"/anomalies?city=nyc&level=neighborhood&min_z=2&limit=2&offset=2&{WINDOW}").json()
    assert page1["next_offset"] == 2
    assert page1["items"] + page2["items"] == full["items"][:4]


def test_anomalies_higher_threshold_is_a_subset(client: TestClient) -> None:
    low = client.get(f"/anomalies?level=neighborhood&min_z=2&q=1&limit=1000&{WINDOW}").json()["items"]
    high = client.get(f"/anomalies?level=neighborhood&min_z=5&q=1&limit=1000&{WINDOW}").json()["items"]
    assert len(high) < len(low)
    assert all(a in low for a in high)


def test_anomalies_carry_their_evidence_drivers_and_narrative(client: TestClient) -> None:
    items = client.get(f"/anomalies?city=nyc&level=neighborhood&min_z=2&q=0.5&limit=1000&{WINDOW}").json()["items"]
    assert items
    for a in items:
        start = datetime.fromisoformat(a["window_start"])
        assert datetime.fromisoformat(a["baseline_end"]) == start  # the bin is not in its own baseline
        assert datetime.fromisoformat(a["baseline_start"]) == start - timedelta(days=28)
        assert 0 <= a["p"] <= a["q"] <= 0.5
        assert a["variance"] > 0
        assert a["zscore"] == pytest.approx((a["observed"] - a["expected"]) / a["variance"] ** 0.5, abs=0.02)
        assert a["effect"] in {"volume", "mix", "volume+mix"}
        assert all(0 <= d["share"] <= 1 and d["excess"] > 0 for d in a["drivers"])
        assert sum(d["share"] for d in a["drivers"]) <= 1 + 1e-6
        assert a["category"] in a["narrative"]
        assert str(a["observed"]) in a["narrative"]
        assert (a["rolled_up_from"] is None) or ("too small to publish" in a["narrative"])


def test_stricter_q_lists_fewer_anomalies(client: TestClient) -> None:
    loose = client.get(f"/anomalies?level=neighborhood&min_z=0&q=1&limit=1000&{WINDOW}").json()
    strict = client.get(f"/anomalies?level=neighborhood&min_z=0&q=0.001&limit=1000&{WINDOW}").json()
    assert strict["total"] < loose["total"]
    assert all(a["q"] <= 0.001 for a in strict["items"])
    assert strict["q"] == 0.001


# ---- every 422 rule --------------------------------------------------------------------------
BAD_INPUTS = [
    # (path, query, parameter named, words of the rule)
    ("/heat", "bbox=1,2,3", "bbox", "four"),
    ("/heat", "bbox=a,b,c,d", "bbox", "numbers"),
    ("/heat", "bbox=nan,40,-73,41", "bbox", "finite"),
    ("/heat", "bbox=-200,40,-73,41", "bbox", "longitudes"),
    ("/heat", "bbox=-74,-95,-73,41", "bbox", "latitudes"),
    ("/heat", "bbox=-73,40,-74,41", "bbox", "minimum"),
    ("/heat", "since=2026-10-30&until=2026-10-20", "since", "earlier"),
    ("/heat", "since=2026-10-20&until=2026-10-20", "since", "earlier"),
    ("/heat", "since=2020-01-01&until=2026-10-20", "until", "366"),
    ("/heat", "since=yesterday", "since", "datetime"),
    ("/heat", "city=paris", "city", "unknown city"),
    ("/heat", "category=Alien Landing", "category", "unknown category"),
    ("/heat", "level=county", "level", "tract"),
    ("/heat", "time_bin=minute", "time_bin", "hour"),
    ("/heat", "limit=0", "limit", "greater than or equal"),
    ("/heat", "limit=5000", "limit", "less than or equal"),
    ("/heat", "offset=-1", "offset", "greater than or equal"),
    ("/anomalies", "since=2026-10-30&until=2026-10-20", "since", "earlier"),
    ("/anomalies", "since=2020-01-01&until=2026-10-20", "until", "366"),
    ("/anomalies", "city=paris", "city", "unknown city"),
    ("/anomalies", "category=Alien Landing", "category", "unknown category"),
    ("/anomalies", "level=county", "level", "tract"),
    ("/anomalies", "min_z=-1", "min_z", "greater than or equal"),
    ("/anomalies", "min_z=5000", "min_z", "less than or equal"),
    ("/anomalies", "min_z=nan", "min_z", "finite"),
    ("/anomalies", "time_bin=minute", "time_bin", "hour"),
    ("/anomalies", "q=0", "q", "greater than"),
    ("/anomalies", "q=1.5", "q", "less than or equal"),
    ("/anomalies", "q=inf", "q", "finite"),
    ("/anomalies", "limit=100000", "limit", "less than or equal"),
    ("/anomalies", "offset=-5", "offset", "greater than or equal"),
    ("/tracts", "city=paris", "city", "unknown city"),
    ("/tracts", "level=county", "level", "tract"),
]


@pytest.mark.parametrize(("path", "query", "param", "rule"), BAD_INPUTS, ids=[f"{p}?{q}" for p, q, _, _ in BAD_INPUTS])
def test_bad_input_is_a_422_naming_parameter_and_rule(
    client: TestClient, openapi: dict[str, Any], path: str, query: str, param: str, rule: str
) -> None:
    r = client.get(f"{path}?{query}")
    assert r.status_code == 422, r.text
    body = r.json()
    locs = [tuple(d["loc"]) for d in body["detail"]]
    assert ("query", param) in locs
    assert rule.lower() in body["message"].lower()
    assert param in body["message"]


# ---- documentation -----------------------------------------------------------------------------
def test_every_route_and_parameter_is_documented(openapi: dict[str, Any]) -> None:
    undocumented = []
    for path, ops in openapi["paths"].items():
        for method, op in ops.items():
            if not op.get("description") and not op.get("summary"):
                undocumented.append(f"{method.upper()} {path}")
            undocumented += [f"{method.upper()} {path} ?{p['name']}" for p in op.get("parameters", []) if not p.get("description")]
    assert {"/heat", "/anomalies", "/tracts", "/healthz"} <= set(openapi["paths"])
    assert not undocumented, f"undocumented routes or parameters: {undocumented}"


def test_readme_lists_every_public_route(openapi: dict[str, Any]) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert all(f"`GET {path}" in readme for path in openapi["paths"]), "a route is missing from the README's API table"


# ---- differential privacy mode -------------------------------------------------------------------
@pytest.fixture(scope="module")
def dp_client(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data_dir = tmp_path_factory.mktemp("dp")
    shutil.copytree(tiny_dir, data_dir, dirs_exist_ok=True)
    settings = Settings(data_dir=data_dir, scheduler_enabled=False, privacy_mode="dp", privacy_epsilon=1.0, privacy_budget=2.0)
    with TestClient(create_app(settings)) as c:
        yield c


def test_dp_mode_serves_noisy_consistent_counts_and_charges_the_budget_once(dp_client: TestClient, openapi: dict[str, Any]) -> None:
    first = dp_client.get(f"/heat?level=borough&{WINDOW}").json()
    _validate(openapi, "HeatOut", first)
    assert first["privacy"]["mode"] == "dp"
    assert first["privacy"]["epsilon"] == 1.0
    assert first["privacy"]["epsilon_spent"] == 1.0
    again = dp_client.get(f"/heat?level=borough&{WINDOW}").json()
    assert again["cells"] == first["cells"]  # re-served from the ledger: same noise, no new charge
    assert again["privacy"]["epsilon_spent"] == 1.0
    city = dp_client.get(f"/heat?level=city&{WINDOW}").json()["cells"][0]["count"]
    assert city == sum(c["count"] for c in first["cells"])  # the released hierarchy adds up
    assert all(c["count"] >= 0 for c in first["cells"])
    anomalies = dp_client.get(f"/anomalies?level=neighborhood&{WINDOW}")
    assert anomalies.status_code == 200
    _validate(openapi, "AnomaliesOut", anomalies.json())
    assert all(a["category"] == "*" for a in anomalies.json()["items"])


def test_dp_mode_refuses_to_overspend(dp_client: TestClient) -> None:
    spent = []
    for category in ("Noise - Residential", "Illegal Parking", "HEAT/HOT WATER"):
        r = dp_client.get(
            "/heat", params={"level": "borough", "category": category, "since": "2026-10-20T00:00:00Z", "until": "2026-11-01T00:00:00Z"}
        )
        spent.append(r.status_code)
        if r.status_code == 403:
            assert "budget" in r.json()["message"]
            break
    assert 403 in spent  # budget 2.0 at epsilon 1.0 per release: the third selection of the same days is refused
