"""The ``/alerts`` page's session state against a real SQLite alerts store and the tiny demo
snapshot: sign in, write a rule, preview it, save, pause, delete; plus the views built headless
(a map click sets the centre; the page renders into a Bokeh document)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from bokeh.document import Document
from bokeh.events import Tap
from holoviews.util.transform import lon_lat_to_easting_northing

from app.alerts.preview import preview_rule
from app.alerts.rules import AnomalyRule, AreaRule, Filters, KeywordRule, PlateRule, RadiusRule
from app.alerts.store import AlertStore
from app.config import Settings
from app.data.snapshot import Snapshot
from app.views.alerts_map import AlertsMap
from app.views.alerts_page import alerts_page
from app.views.alerts_preview import summary
from app.views.alerts_state import BAD_KEY, AlertsState


@pytest.fixture
def alerts(tmp_path: Path) -> Iterator[AlertStore]:
    store = AlertStore(f"sqlite:///{tmp_path / 'alerts.sqlite'}")
    yield store
    store.close()


@pytest.fixture
def state(alerts: AlertStore, tiny_snap: Snapshot, tiny_settings: Settings) -> AlertsState:
    return AlertsState(alerts, settings=tiny_settings, snapshot=tiny_snap)


def _centre(snap: Snapshot) -> tuple[float, float]:
    """A neighborhood centre of the tiny city (lat, lon): a place with events around it."""
    row = snap.units("nyc", "neighborhood").sort("unit_id").row(0, named=True)
    return float(row["lat"]), float(row["lon"])


def test_sign_in_refuses_bad_and_revoked_keys(state: AlertsState, alerts: AlertStore) -> None:
    assert not state.sign_in("csh_not-a-key")
    assert state.sign_in_error == BAD_KEY
    assert state.key_id is None
    key, token = alerts.create_key("page")
    alerts.revoke_key(str(key.id))
    assert not state.sign_in(token)
    assert state.sign_in_error == BAD_KEY


def test_too_many_failures_make_the_session_wait(state: AlertsState) -> None:
    for _ in range(5):
        state.sign_in("csh_wrong")
    assert not state.sign_in("csh_wrong")
    assert "Too many failed attempts" in state.sign_in_error


def test_create_preview_save_pause_delete(state: AlertsState, alerts: AlertStore, tiny_snap: Snapshot) -> None:
    key, token = alerts.create_key("page")
    assert state.sign_in(token)
    assert state.key_id == key.id
    assert "page" in state.key_name
    assert token not in repr(state.param.values())  # the key itself is never kept
    assert state.city == "nyc"
    assert state.draft.timezone == "America/New_York"
    lat, lon = _centre(tiny_snap)
    state.draft.param.update(rule_name="Near the first neighborhood", kind="radius", lat=lat, lon=lon, radius_m=1500, daily_cap=3)

    preview = state.run_preview()
    assert preview is not None
    assert state.error == ""
    expected = preview_rule(
        tiny_snap, "nyc", RadiusRule(lat=lat, lon=lon, radius_m=1500), Filters(), timezone="America/New_York", daily_cap=3
    )
    assert preview.total == expected.total > 0
    assert f'<span class="csh-preview-count">{expected.total}</span>' in summary(preview)
    assert all(d.alerts <= 3 for d in preview.days)
    assert state.matches_frame().height == len([m for m in expected.matches if m.lon is not None])

    state.draft.radius_m = 1600
    assert state.preview is None  # a changed rule drops the old preview
    state.draft.radius_m = 1500
    shown: list[str] = []
    asyncio.run(state.run_preview_async(lambda step: (shown.append("applied"), step())[1]))  # the page's path: matching in a thread
    assert shown == ["applied"]
    assert state.preview is not None
    assert state.preview.total == expected.total
    endpoint_id = state.add_endpoint("email", "ops@example.org")
    assert state.preview is not None  # where it delivers does not change what it matches
    assert endpoint_id is not None
    assert state.draft.endpoint_ids == [endpoint_id]
    assert state.secret == ""  # an email endpoint has no signing secret
    rule_id = state.save()
    assert rule_id is not None, state.error
    [row] = state.rules
    assert row == {
        "id": rule_id,
        "name": "Near the first neighborhood",
        "kind": "radius",
        "city": "nyc",
        "paused": False,
        "endpoints": "email ops@example.org",
    }
    assert state.draft.rule_name == ""  # saving again needs a new name
    assert state.save() is None
    assert "Rule name" in state.error
    stored = alerts.get_rule(key.id, rule_id)
    assert stored is not None
    assert stored.daily_cap == 3
    assert stored.timezone == "America/New_York"
    assert alerts.rule_endpoint_ids([rule_id]) == {rule_id: [endpoint_id]}

    assert state.set_paused(rule_id, True)
    assert state.rules[0]["paused"] is True
    assert state.set_paused(rule_id, False)
    assert state.rules[0]["paused"] is False
    assert state.delete_rule(rule_id)
    assert state.rules == []
    assert alerts.rules(key.id) == []


@pytest.mark.parametrize(
    ("changes", "shown"),
    [
        ({"kind": "radius", "lat": None, "lon": -73.9}, "Latitude: Input should be a valid number"),
        ({"kind": "radius", "lat": 40.7, "lon": -73.9, "radius_m": 90_000.0}, "Radius (m): Input should be less than or equal to 50000"),
        ({"kind": "keyword", "keyword": " "}, "Keyword:"),
        ({"kind": "polygon", "polygon": [[-73.9, 40.7], [-73.8, 40.7]]}, "Polygon:"),
        ({"kind": "area", "level": "borough", "unit_id": "nowhere"}, "Unit id: no borough 'nowhere'"),
        ({"kind": "plate", "plate": "AB", "timezone": "Mars/Olympus"}, "Time zone: Value error, 'Mars/Olympus' is not an IANA time zone"),
        ({"kind": "plate", "plate": "AB", "quiet_start": "22:00"}, "Quiet until: Value error, quiet_start and quiet_end"),
        ({"kind": "plate", "plate": "AB", "digest_at": "25:00"}, "Digest at: Value error, '25:00' is not a local time"),
    ],
)
def test_bad_input_shows_the_validators_message(state: AlertsState, alerts: AlertStore, changes: dict[str, object], shown: str) -> None:
    _, token = alerts.create_key("page")
    state.sign_in(token)
    state.draft.param.update(rule_name="x", **changes)
    assert state.run_preview() is None
    assert shown in state.error, state.error
    assert state.save() is None
    assert state.rules == []


def test_a_new_webhook_shows_its_secret_once(state: AlertsState, alerts: AlertStore) -> None:
    _, token = alerts.create_key("page")
    state.sign_in(token)
    assert state.add_endpoint("webhook", "http://127.0.0.1:9/hook") is None  # a loopback target is refused
    assert "target refused" in state.error
    allowed = AlertsState(alerts, settings=Settings(data_dir=Path("."), webhook_allow="127.0.0.1"), snapshot=state.snapshot)
    allowed.sign_in(token)
    assert allowed.add_endpoint("webhook", "http://127.0.0.1:9/hook") is not None
    assert allowed.secret.startswith("whsec_")
    allowed.draft.param.update(kind="keyword", keyword="noise")
    allowed.run_preview()
    assert allowed.secret == ""  # shown once: the next action clears it


def test_revoked_mid_session_signs_out(state: AlertsState, alerts: AlertStore) -> None:
    key, token = alerts.create_key("page")
    state.sign_in(token)
    alerts.revoke_key(str(key.id))
    state.draft.param.update(rule_name="x", kind="keyword", keyword="noise")
    assert state.save() is None
    assert state.key_id is None
    assert "revoked" in state.sign_in_error


def test_map_click_sets_the_centre_and_picks_an_area(state: AlertsState, tiny_snap: Snapshot) -> None:
    view = AlertsMap(state=state)
    lat, lon = _centre(tiny_snap)
    x, y = lon_lat_to_easting_northing(lon, lat)
    view._tapped(Tap(model=None, x=float(x), y=float(y)))
    assert state.draft.lat == pytest.approx(lat, abs=1e-5)
    assert state.draft.lon == pytest.approx(lon, abs=1e-5)
    assert len(view._watched.data["xs"]) == 1  # the circle is drawn
    state.draft.param.update(kind="area", level="neighborhood")
    view._tapped(Tap(model=None, x=float(x), y=float(y)))
    assert state.draft.unit_id == state.unit_at("neighborhood", lon, lat) is not None


def test_polygon_drawn_on_the_map_becomes_the_draft(state: AlertsState, tiny_snap: Snapshot) -> None:
    view = AlertsMap(state=state)
    state.draft.kind = "polygon"
    lat, lon = _centre(tiny_snap)
    ring = [(lon - 0.01, lat - 0.01), (lon + 0.01, lat - 0.01), (lon, lat + 0.01)]
    xs, ys = zip(*(lon_lat_to_easting_northing(a, b) for a, b in ring), strict=True)
    view._drawn.data = {"xs": [list(map(float, xs))], "ys": [list(map(float, ys))]}
    assert len(state.draft.polygon) == 3
    assert state.draft.polygon[0] == pytest.approx([lon - 0.01, lat - 0.01], abs=1e-5)
    assert state.draft.rule_in("nyc", preview=True).spec.kind == "polygon"


def test_page_renders_headless(state: AlertsState, alerts: AlertStore) -> None:
    _, token = alerts.create_key("page")
    assert state.sign_in(token)
    doc = Document()
    alerts_page(state).server_doc(doc)
    assert doc.roots  # the page built its Bokeh models without a browser
    assert doc.title


def _dead_delivery(alerts: AlertStore, rule_id: int) -> int:
    """Queue one match of the rule and let its first attempt fail for good (as the sender would)."""
    now = datetime.now(UTC)
    alerts.enqueue("nyc", "events", now.isoformat(), [(rule_id, "demo", "item-1", {"id": "item-1"})], now=now)
    [(delivery, _, lease)] = alerts.claim(now, kinds=("email",))
    assert alerts.settle(delivery.id, lease, "dead", None, "500 Internal Server Error: not retried", now, code=500)
    return delivery.id


def test_delivery_log_shows_a_dead_delivery_and_retries_it(state: AlertsState, alerts: AlertStore) -> None:
    _, token = alerts.create_key("page")
    state.sign_in(token)
    endpoint_id = state.add_endpoint("email", "ops@example.org")
    state.draft.param.update(rule_name="Noise", kind="keyword", keyword="noise")
    rule_id = state.save()
    assert rule_id is not None
    assert endpoint_id is not None
    delivery_id = _dead_delivery(alerts, rule_id)
    state.refresh()
    [row] = state.deliveries
    assert row == {"id": delivery_id, "rule": "Noise", "status": "dead", "attempts": 1, "last": "HTTP 500", "next": "—"}
    assert state.retry(delivery_id)
    [row] = state.deliveries
    assert row["status"] == "pending"
    assert row["attempts"] == 0
    assert not state.retry(delivery_id)  # only a dead one is retried
    assert "only a dead, capped or paused delivery" in state.error


def test_following_a_newer_snapshot_keeps_the_city(state: AlertsState, alerts: AlertStore, open_snap: Snapshot) -> None:
    _, token = alerts.create_key("page")
    state.sign_in(token)
    assert not state.follow(state.snapshot)
    assert state.follow(open_snap)
    assert state.snapshot is open_snap
    assert state.city == "nyc"


def test_the_page_is_not_in_the_openapi_schema(tiny_settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from app.api.main import create_app

    with TestClient(create_app(tiny_settings)) as client:
        paths = client.get("/openapi.json").json()["paths"]
        assert not [p for p in paths if p.startswith(("/alerts", "/dashboard"))]
        assert client.get("/alerts").status_code == 200


@pytest.mark.parametrize(
    ("changes", "spec"),
    [
        ({"kind": "keyword", "keyword": "noise"}, KeywordRule(keyword="noise")),
        ({"kind": "plate", "plate": "ab-12"}, PlateRule(plate="ab-12")),
        ({"kind": "area", "level": "borough", "unit_id": "BK"}, AreaRule(level="borough", unit_id="BK")),
        ({"kind": "anomaly", "anomaly_level": "city", "min_z": 2.0}, AnomalyRule(level="city", min_z=2.0)),
        ({"kind": "anomaly", "anomaly_level": "borough", "anomaly_units": ["BK"]}, AnomalyRule(level="borough", unit_ids=["BK"])),
    ],
)
def test_every_kind_previews_as_preview_rule_does(
    state: AlertsState, tiny_snap: Snapshot, changes: dict[str, object], spec: object
) -> None:
    state.draft.param.update(categories=["Noise - Residential"] if changes["kind"] == "keyword" else [], **changes)
    preview = state.run_preview()
    assert preview is not None, state.error
    filters = Filters(categories=list(state.draft.categories))
    assert preview == preview_rule(tiny_snap, "nyc", spec, filters, timezone="America/New_York")
