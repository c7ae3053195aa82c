"""The HTTP API over the tiny demo snapshot: shapes, paging, privacy and every 422 rule."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import polars as pl
import pytest
from fastapi.testclient import TestClient
from scipy import stats

from app.api.main import create_app
from app.config import Settings
from app.data.demo import DemoSpec
from app.data.snapshot import Snapshot
from app.data.store import Store
from app.engine.ledger import LEDGER_FILE, BudgetExceeded, BudgetLedger
from app.pipeline import build_demo
from conftest import TINY_GRAINS

WINDOW = "since=2026-10-20T00:00:00Z&until=2026-11-01T00:00:00Z"


@pytest.fixture(scope="module")
def client(tiny_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(tiny_settings)) as c:
        yield c


@pytest.fixture(scope="module")
def open_client(open_dir: Path) -> Iterator[TestClient]:
    """An internal-use app over the tiny demo published with privacy mode 'none', to check totals
    (the release rule is the snapshot's, so raw totals need a snapshot published without one)."""
    with TestClient(create_app(Settings(data_dir=open_dir, scheduler_enabled=False, privacy_mode="none"))) as c:
        yield c


def _published_window(body: dict[str, Any]) -> tuple[datetime, datetime]:
    """The span a response's window totals cover: its grid, up to where the level is published."""
    lens = body["lens"]
    start, end, until = (datetime.fromisoformat(lens[k]) for k in ("grid_since", "grid_until", "published_until"))
    return start, min(end, until)


def _events_in(snap: Any, lo: datetime, hi: datetime, located: bool = False) -> int:
    events = snap.events("nyc").filter(pl.col("ts").is_between(lo, hi, closed="left"))
    return events.filter(pl.col("tract_id").is_not_null()).height if located else events.height


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


def test_heat_echoes_the_window_snapped_to_local_days(open_client: TestClient) -> None:
    lens = open_client.get(f"/heat?city=nyc&level=borough&{WINDOW}").json()["lens"]
    # New York's days start at 04:00 UTC in October (EDT): the window covers whole local days.
    assert (lens["since"], lens["until"]) == ("2026-10-20T00:00:00Z", "2026-11-01T00:00:00Z")
    assert (lens["grid_since"], lens["grid_until"]) == ("2026-10-19T04:00:00Z", "2026-11-01T04:00:00Z")
    assert (lens["time_bin"], lens["grain"], lens["timezone"]) == ("day", "hour", "America/New_York")
    assert lens["published_until"] == "2026-11-01T00:00:00Z"  # the newest hour of the demo's feed
    tract = open_client.get(f"/heat?city=nyc&level=tract&{WINDOW}").json()["lens"]
    assert (tract["time_bin"], tract["grain"]) == ("week", "week")  # tracts are published by local week
    assert (tract["grid_since"], tract["grid_until"]) == ("2026-10-19T04:00:00Z", "2026-11-02T05:00:00Z")


def test_heat_city_total_equals_events_in_window(open_client: TestClient, open_snap: Snapshot) -> None:
    body = open_client.get(f"/heat?city=nyc&level=city&{WINDOW}").json()
    expected = _events_in(open_snap, *_published_window(body))
    assert expected > 10_000
    short = datetime.fromisoformat(body["lens"]["published_until"]) < datetime.fromisoformat(body["lens"]["grid_until"])
    assert short  # the window reaches the newest, unpublished hours: the total says it is partial
    assert body["cells"] == [
        {
            "unit_id": "nyc",
            "name": "New York City",
            "bin_start": None,
            "count": expected,
            "suppressed": False,
            "partial": True,
            "rollup": None,
        }
    ]


@pytest.mark.parametrize("level", ["tract", "neighborhood", "borough"])
def test_heat_counts_sum_to_located_events(open_client: TestClient, open_snap: Snapshot, level: str) -> None:
    body = open_client.get(f"/heat?city=nyc&level={level}&limit=1000&{WINDOW}").json()
    assert body["total"] == open_snap.units("nyc", level).height
    cells = body["cells"]
    if body["next_offset"] is not None:
        cells += open_client.get(f"/heat?city=nyc&level={level}&limit=1000&offset=1000&{WINDOW}").json()["cells"]
        cells += open_client.get(f"/heat?city=nyc&level={level}&limit=1000&offset=2000&{WINDOW}").json()["cells"]
    assert len(cells) == body["total"]
    assert sum(c["count"] for c in cells) == _events_in(open_snap, *_published_window(body), located=True)


def test_heat_suppresses_small_counts(client: TestClient) -> None:
    body = client.get(f"/heat?city=nyc&level=tract&limit=1000&{WINDOW}").json()
    assert body["privacy"] == {"mode": "suppress", "k": 11, "epsilon": None, "epsilon_spent": None}
    counts = [c["count"] for c in body["cells"]]
    assert all(c is None or c == 0 or c >= 11 for c in counts)
    assert any(c["suppressed"] and c["count"] is None for c in body["cells"])  # the tiny city has small tracts
    assert all(c["suppressed"] == (c["count"] is None) for c in body["cells"])


def test_heat_time_bins_split_the_window(open_client: TestClient, open_snap: Snapshot) -> None:
    totals = open_client.get(f"/heat?city=nyc&level=borough&{WINDOW}").json()
    daily = open_client.get(f"/heat?city=nyc&level=borough&time_bin=day&limit=1000&{WINDOW}").json()
    assert daily["time_bin"] == "day"
    assert daily["total"] == 5 * 13  # 19 October .. 31 October, local days
    until = datetime.fromisoformat(daily["lens"]["published_until"])
    filling = datetime(2026, 10, 31, 4, tzinfo=UTC)  # the local day holding the newest hour
    for cell in daily["cells"]:
        late = datetime.fromisoformat(cell["bin_start"]) == filling
        assert cell["partial"] == late
        assert (cell["count"] is None) == late
    per_borough: dict[str, int] = {}
    for cell in daily["cells"]:
        per_borough[cell["unit_id"]] = per_borough.get(cell["unit_id"], 0) + (cell["count"] or 0)
    # Window totals sum the borough's published hours: the complete days plus the filling day's hours so far.
    parents = open_snap.units("nyc", "tract").select(pl.col("unit_id").alias("tract_id"), "parent_id")
    late = open_snap.events("nyc").filter(pl.col("ts").is_between(filling, until, closed="left")).join(parents, on="tract_id")
    hood_to_borough = dict(open_snap.units("nyc", "neighborhood").select("unit_id", "parent_id").iter_rows())
    so_far = late.group_by(pl.col("parent_id").replace_strict(hood_to_borough)).len()
    for borough, n in so_far.iter_rows():
        per_borough[borough] += n
    assert per_borough == {c["unit_id"]: c["count"] for c in totals["cells"]}


def test_heat_shows_a_level_at_its_grain_when_a_finer_bin_is_asked(client: TestClient) -> None:
    body = client.get(f"/heat?city=nyc&level=tract&time_bin=day&limit=1000&{WINDOW}").json()
    assert body["lens"]["time_bin"] == "week"
    starts = {c["bin_start"] for c in body["cells"]}
    assert starts == {"2026-10-19T04:00:00Z", "2026-10-26T04:00:00Z"}  # Monday local midnights


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
    body = client.get(f"/anomalies?city=nyc&level=neighborhood&min_z=2&q=0.5&limit=1000&{WINDOW}").json()
    items = body["items"]
    assert items
    history = datetime(2026, 9, 26, 4, tzinfo=UTC)  # local midnight of the tiny demo's first day
    grid = (datetime.fromisoformat(body["lens"]["grid_since"]), datetime.fromisoformat(body["lens"]["grid_until"]))
    assert {a["category"] for a in items} >= {"*"}  # all activity is listed like any category
    for a in items:
        start, end = datetime.fromisoformat(a["window_start"]), datetime.fromisoformat(a["window_end"])
        assert grid[0] <= start < end <= grid[1]
        assert end - start == timedelta(days=1)  # a local day (no daylight-saving change in the window)
        assert datetime.fromisoformat(a["baseline_end"]) == start  # the bin is not in its own baseline
        assert max(start - timedelta(days=28), history) == datetime.fromisoformat(a["baseline_start"])
        assert 0 <= a["p"] <= a["q"] <= 0.5
        assert a["variance"] > 0
        assert a["observed"] > a["expected"]
        assert a["zscore"] == pytest.approx(stats.norm.isf(a["p"]), abs=0.02)  # z is the normal quantile of p
        assert a["effect"] in {"volume", "mix", "volume+mix"}
        assert all(0 <= d["share"] <= 1 and d["excess"] > 0 for d in a["drivers"])
        assert sum(d["share"] for d in a["drivers"]) <= 1 + 1e-6
        assert a["category"] in a["narrative"] or a["category"] == "*"
        assert str(a["observed"]) in a["narrative"]
        assert a["rolled_up_from"] is None  # anomalies are found where they are published


def test_anomalies_dips_list_the_lower_tail(client: TestClient, openapi: dict[str, Any]) -> None:
    body = client.get(f"/anomalies?city=nyc&level=neighborhood&min_z=2&q=0.5&dips=true&limit=1000&{WINDOW}").json()
    _validate(openapi, "AnomaliesOut", body)
    assert body["items"]
    assert all(a["zscore"] <= -2 and a["observed"] < a["expected"] for a in body["items"])


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
    missing = [f"{m.upper()} {path}" for path, ops in openapi["paths"].items() for m in ops if f"`{m.upper()} {path}" not in readme]
    assert not missing, f"routes missing from the README's API tables: {missing}"


# ---- differential privacy mode -------------------------------------------------------------------
def test_a_dp_publish_over_the_budget_is_refused_and_records_nothing(tmp_path: Path) -> None:
    """A dp publish that would take an instant over the budget publishes nothing and charges nothing."""
    settings = Settings(
        data_dir=tmp_path, scheduler_enabled=False, privacy_mode="dp", privacy_epsilon=1.0, privacy_budget=0.5, grains=TINY_GRAINS
    )
    with pytest.raises(BudgetExceeded, match=r"budget 0\.5"):
        build_demo(Store(tmp_path), DemoSpec(seed=3, end=datetime(2026, 11, 1, tzinfo=UTC), days=8, size=2_000), settings=settings)
    assert Store(tmp_path).current() is None
    with BudgetLedger(tmp_path / LEDGER_FILE) as ledger:
        assert ledger.peak("nyc") == 0.0


@pytest.fixture(scope="module")
def dp_client(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data_dir = tmp_path_factory.mktemp("dp")
    shutil.copytree(tiny_dir, data_dir, dirs_exist_ok=True)
    settings = Settings(data_dir=data_dir, scheduler_enabled=False, privacy_mode="dp", privacy_epsilon=1.0, privacy_budget=2.0)
    with TestClient(create_app(settings)) as c:
        yield c


def test_a_dp_server_serves_the_snapshots_own_release(dp_client: TestClient, client: TestClient, openapi: dict[str, Any]) -> None:
    """One release per snapshot: a server configured for dp serves what the snapshot published
    (suppress, k = 11), the same cells as any other server, and spends no budget."""
    served = dp_client.get(f"/heat?level=borough&time_bin=day&limit=1000&{WINDOW}").json()
    _validate(openapi, "HeatOut", served)
    assert served["privacy"] == {"mode": "suppress", "k": 11, "epsilon": None, "epsilon_spent": None}
    assert served["cells"] == client.get(f"/heat?level=borough&time_bin=day&limit=1000&{WINDOW}").json()["cells"]
    for category in ("Noise - Residential", "Illegal Parking", "HEAT/HOT WATER"):  # nothing to overspend
        assert dp_client.get("/heat", params={"level": "borough", "category": category}).status_code == 200
    anomalies = dp_client.get(f"/anomalies?level=neighborhood&{WINDOW}")
    assert anomalies.status_code == 200
    assert anomalies.json()["privacy"]["mode"] == "suppress"
