"""The alert REST API over real HTTP (FastAPI's TestClient on the real app) and a real SQLite alerts
store: bearer keys, ownership (another key's objects are 404s), every 422 rule, secrets shown once
and never read back nor audited, a signed test send to a local receiver, the per-key token bucket,
retry of a dead delivery, and previews whose counts equal an independent oracle over real NYC 311
rows imported through the user's path."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from pytest_httpserver import HTTPServer
from sqlalchemy import text
from standardwebhooks.webhooks import Webhook
from werkzeug import Request, Response

from app.alerts.evaluate import anomaly_stream, evaluate_anomalies
from app.alerts.rules import AnomalyRule, Filters, KeywordRule
from app.alerts.store import AlertStore
from app.api.alerts_deps import open_alerts
from app.api.main import create_app
from app.config import Settings
from app.data.registry import get_source
from app.data.snapshot import Snapshot
from app.data.sources.export_file import ingest_file
from app.data.store import Store
from conftest import SHARED_DATA
from tests.smtp_inbox import Inbox

NYC_JSON = SHARED_DATA / "events" / "soda_examples" / "nyc311_erm2-nwe9_soda_response_2024-05-27.json.gz"
NEEDS_NYC = pytest.mark.skipif(not NYC_JSON.exists(), reason=f"shared real data absent ({NYC_JSON.name}); see ../shared/data/README.md")


def _settings(data_dir: Path, alerts: Path, **extra: Any) -> Settings:
    return Settings(data_dir=data_dir, scheduler_enabled=False, alerts_url=f"sqlite:///{alerts}", webhook_allow="localhost", **extra)


class Api:
    """A client of the real app with one key's bearer token, and the app's alerts store."""

    def __init__(self, client: TestClient, token: str, key_id: int) -> None:
        self.client, self.token, self.key_id = client, token, key_id
        self.headers = {"Authorization": f"Bearer {token}"}

    @property
    def store(self) -> AlertStore:
        return open_alerts(self.client.app)  # type: ignore[arg-type]

    def __getattr__(self, method: str) -> Any:
        call = getattr(self.client, method)
        return lambda url, **kw: call(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)


def _key(client: TestClient, name: str) -> Api:
    key, token = open_alerts(client.app).create_key(name)  # type: ignore[arg-type]
    return Api(client, token, key.id)


@pytest.fixture
def client(tiny_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(tiny_dir, tmp_path / "alerts.sqlite"))) as c:
        yield c


@pytest.fixture
def api(client: TestClient) -> Api:
    return _key(client, "desk")


def _hook(server: HTTPServer) -> str:
    return server.url_for("/hook").replace("127.0.0.1", "localhost")


RADIUS = {"kind": "radius", "lat": 40.75, "lon": -73.99, "radius_m": 400}


# ---- keys --------------------------------------------------------------------------------------
def test_the_alert_api_needs_a_live_key(client: TestClient) -> None:
    desk = _key(client, "desk")
    for headers in ({}, {"Authorization": "Bearer csh_not-a-key"}, {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer"}):
        for method, url in (
            ("get", "/rules"),
            ("post", "/rules"),
            ("get", "/endpoints"),
            ("get", "/deliveries"),
            ("post", "/rules/preview"),
        ):
            r = getattr(client, method)(url, headers=headers, **({"json": {}} if method == "post" else {}))
            assert r.status_code == 401, (headers, url, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
    assert desk.get("/rules").status_code == 200
    desk.store.revoke_key(str(desk.key_id))
    r = desk.get("/rules")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


# ---- rules -------------------------------------------------------------------------------------
def test_rules_round_trip(api: Api, httpserver: HTTPServer) -> None:
    hook = api.post("/endpoints", json={"kind": "webhook", "target": _hook(httpserver)})
    assert hook.status_code == 201, hook.text
    mail = api.post("/endpoints", json={"kind": "email", "target": "desk@example.org"}).json()
    body = {
        "name": "near the office",
        "city": "nyc",
        "spec": RADIUS,
        "filters": {"categories": ["Noise - Residential"]},
        "daily_cap": 20,
        "quiet_start": "22:00",
        "quiet_end": "07:00",
        "endpoint_ids": [hook.json()["id"], mail["id"]],
    }
    made = api.post("/rules", json=body)
    assert made.status_code == 201, made.text
    rule = made.json()
    assert rule["timezone"] == "America/New_York"  # the city's, when none is given
    assert rule["spec"] == {"kind": "radius", "lat": 40.75, "lon": -73.99, "radius_m": 400.0}
    assert rule["endpoint_ids"] == sorted(body["endpoint_ids"])
    assert api.get(f"/rules/{rule['id']}").json() == rule
    assert [r["id"] for r in api.get("/rules").json()["items"]] == [rule["id"]]

    patched = api.patch(f"/rules/{rule['id']}", json={"paused": True, "endpoint_ids": [mail["id"]], "daily_cap": None})
    assert patched.status_code == 200, patched.text
    got = api.get(f"/rules/{rule['id']}").json()
    assert (got["paused"], got["endpoint_ids"], got["daily_cap"], got["quiet_start"]) == (True, [mail["id"]], None, "22:00")
    assert got["updated_at"] > rule["updated_at"]
    swapped = api.patch(f"/rules/{rule['id']}", json={"spec": {"kind": "keyword", "keyword": "heat"}, "timezone": "Europe/London"}).json()
    assert (swapped["spec"], swapped["timezone"]) == ({"kind": "keyword", "keyword": "heat"}, "Europe/London")
    assert api.store.event_rules("nyc") == []  # paused: not matched

    actions = [e.action for e in api.store.audit(api.key_id)]
    assert actions[-3:] == ["rule.create", "rule.update", "rule.update"]
    assert api.delete(f"/rules/{rule['id']}").status_code == 204
    assert api.get(f"/rules/{rule['id']}").status_code == 404
    assert api.get("/rules").json()["total"] == 0
    assert api.store.audit(api.key_id)[-1].action == "rule.delete"


def test_another_keys_objects_are_not_found(client: TestClient, httpserver: HTTPServer) -> None:
    owner, other = _key(client, "owner"), _key(client, "other")
    endpoint = owner.post("/endpoints", json={"kind": "webhook", "target": _hook(httpserver)}).json()
    rule = owner.post("/rules", json={"name": "r", "city": "nyc", "spec": RADIUS, "endpoint_ids": [endpoint["id"]]}).json()
    owner.store.enqueue("nyc", "events", "p", [(rule["id"], "demo", "E1", {"x": 1})])
    delivery = owner.get("/deliveries").json()["items"][0]
    for method, url, kw in (
        ("get", f"/rules/{rule['id']}", {}),
        ("patch", f"/rules/{rule['id']}", {"json": {"paused": True}}),
        ("delete", f"/rules/{rule['id']}", {}),
        ("get", f"/endpoints/{endpoint['id']}", {}),
        ("delete", f"/endpoints/{endpoint['id']}", {}),
        ("post", f"/endpoints/{endpoint['id']}/test", {}),
        ("post", f"/endpoints/{endpoint['id']}/rotate", {}),
        ("post", f"/deliveries/{delivery['id']}/retry", {}),
        ("get", "/rules/999999", {}),
    ):
        r = getattr(other, method)(url, **kw)
        assert r.status_code == 404, (method, url, r.text)
    assert other.get("/rules").json()["items"] == []
    assert other.get("/endpoints").json()["items"] == []
    assert other.get("/deliveries").json() == {"total": 0, "limit": 100, "offset": 0, "next_offset": None, "items": []}
    stolen = other.post("/rules", json={"name": "r", "city": "nyc", "spec": RADIUS, "endpoint_ids": [endpoint["id"]]})
    assert stolen.status_code == 422
    assert ["body", "endpoint_ids"] in [e["loc"] for e in stolen.json()["detail"]]
    mine = other.post("/rules", json={"name": "mine", "city": "nyc", "spec": RADIUS}).json()
    assert other.patch(f"/rules/{mine['id']}", json={"endpoint_ids": [endpoint["id"]]}).status_code == 422
    assert owner.get(f"/rules/{rule['id']}").json()["paused"] is False  # untouched by the other key
    assert owner.get(f"/endpoints/{endpoint['id']}").status_code == 200


BAD_RULES = [
    ({"timezone": "Mars/Olympus"}, ("timezone",), "IANA"),
    ({"timezone": "../../etc/passwd"}, ("timezone",), "IANA"),
    ({"quiet_start": "25:00", "quiet_end": "07:00"}, ("quiet_start",), "HH:MM"),
    ({"digest_at": "7:5"}, ("digest_at",), "HH:MM"),
    ({"quiet_start": "22:00"}, ("quiet_end",), "together"),
    ({"daily_cap": 0}, ("daily_cap",), "greater than or equal to 1"),
    ({"daily_cap": 10_001}, ("daily_cap",), "less than or equal to 10000"),
    ({"city": "atlantis"}, ("city",), "unknown city"),
    ({"spec": {**RADIUS, "radius_m": -5}}, ("spec", "radius", "radius_m"), "greater than 0"),
    ({"spec": {**RADIUS, "radius_m": 1e9}}, ("spec", "radius", "radius_m"), "less than or equal"),
    ({"spec": {**RADIUS, "lat": 95}}, ("spec", "radius", "lat"), "less than or equal to 90"),
    ({"spec": {"kind": "area", "level": "tract", "unit_id": "no-such-tract"}}, ("spec", "unit_id"), "geography"),
    ({"spec": {"kind": "anomaly", "level": "borough", "unit_ids": ["XX"]}}, ("spec", "unit_ids"), "geography"),
    ({"spec": {"kind": "polygon", "geometry": {"type": "Point", "coordinates": [0, 0]}}}, ("spec", "polygon", "geometry"), "Polygon"),
    ({"spec": {"kind": "teleport"}}, ("spec",), "tag"),
    ({"name": ""}, ("name",), "at least 1"),
    ({"endpoint_ids": [2**40]}, ("endpoint_ids", 0), "less than or equal"),
    ({"colour": "red"}, ("colour",), "extra"),
]


@pytest.mark.parametrize(("change", "loc", "rule"), BAD_RULES, ids=[str(c)[:60] for c, _, _ in BAD_RULES])
def test_a_bad_rule_is_a_422_naming_field_and_rule(api: Api, change: dict[str, Any], loc: tuple[Any, ...], rule: str) -> None:
    body = {"name": "r", "city": "nyc", "spec": RADIUS, **change}
    for url in ("/rules", "/rules/preview"):
        if url == "/rules/preview" and loc == ("name",):
            continue  # a preview needs no name
        r = api.post(url, json=body)
        assert r.status_code == 422, (url, r.text)
        errors = r.json()["detail"]
        assert any(tuple(e["loc"][1:]) == loc and rule.lower() in e["msg"].lower() for e in errors), errors
    assert api.get("/rules").json()["total"] == 0


def test_a_bad_patch_is_a_422_and_changes_nothing(api: Api) -> None:
    rule = api.post("/rules", json={"name": "r", "city": "nyc", "spec": RADIUS}).json()
    for patch, field in (
        ({"timezone": "Nowhere/Land"}, "timezone"),
        ({"quiet_start": "22:00"}, "quiet_end"),
        ({"city": "atlantis"}, "city"),
    ):
        r = api.patch(f"/rules/{rule['id']}", json=patch)
        assert r.status_code == 422, r.text
        assert field in r.json()["message"]
    assert api.get(f"/rules/{rule['id']}").json() == rule


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        ({"kind": "webhook", "target": "http://127.0.0.1:9/hook"}, "non-public address"),
        ({"kind": "webhook", "target": "http://169.254.169.254/latest"}, "non-public address"),
        ({"kind": "webhook", "target": "http://metadata.google.internal/"}, "metadata"),
        ({"kind": "webhook", "target": "ftp://example.org/x"}, "http or https"),
        ({"kind": "email", "target": "not-an-address"}, "email target"),
        ({"kind": "email", "target": "a@b.org\r\nBcc: victim@example.org"}, "email target"),
        ({"kind": "discord", "target": "https://example.org/api/webhooks/1/abc"}, "discord"),
        ({"kind": "pigeon", "target": "roof"}, "webhook"),
    ],
)
def test_a_bad_endpoint_is_a_422_naming_the_target(api: Api, body: dict[str, str], rule: str) -> None:
    r = api.post("/endpoints", json=body)
    assert r.status_code == 422, r.text
    field = "kind" if body["kind"] == "pigeon" else "target"
    assert any(e["loc"] == ["body", field] and rule.lower() in e["msg"].lower() for e in r.json()["detail"]), r.json()
    assert api.get("/endpoints").json()["items"] == []


def test_quotas_are_409s(tiny_dir: Path, tmp_path: Path) -> None:
    settings = _settings(tiny_dir, tmp_path / "alerts.sqlite", alerts_max_rules=2, alerts_max_endpoints=1)
    with TestClient(create_app(settings)) as c:
        api = _key(c, "desk")
        assert [api.post("/rules", json={"name": f"r{i}", "city": "nyc", "spec": RADIUS}).status_code for i in range(3)] == [201, 201, 409]
        assert "at most 2 rules" in api.post("/rules", json={"name": "r", "city": "nyc", "spec": RADIUS}).json()["detail"]
        hooks = [api.post("/endpoints", json={"kind": "email", "target": f"d{i}@example.org"}).status_code for i in range(2)]
        assert hooks == [201, 409]


# ---- endpoints and secrets -------------------------------------------------------------------------
def test_secrets_are_shown_once_and_never_read_back_or_audited(api: Api, httpserver: HTTPServer) -> None:
    made = api.post("/endpoints", json={"kind": "webhook", "target": _hook(httpserver)})
    assert made.status_code == 201
    secret = made.json()["secret"]
    assert secret.startswith("whsec_")
    endpoint_id = made.json()["id"]
    rotated = api.post(f"/endpoints/{endpoint_id}/rotate")
    assert rotated.status_code == 200
    new_secret = rotated.json()["secret"]
    assert new_secret.startswith("whsec_")
    assert new_secret != secret
    assert rotated.json()["previous_secret_until"] is not None
    mail = api.post("/endpoints", json={"kind": "email", "target": "desk@example.org"}).json()
    assert mail["secret"] is None
    assert api.post(f"/endpoints/{mail['id']}/rotate").status_code == 409

    reads = [api.get("/endpoints"), api.get(f"/endpoints/{endpoint_id}"), api.get("/rules"), api.get("/deliveries")]
    for r in reads:
        assert r.status_code == 200
        for s in (secret, new_secret, secret[6:], new_secret[6:], api.token):
            assert s not in r.text
    assert "secret" not in api.get(f"/endpoints/{endpoint_id}").json()
    with api.store.engine.connect() as con:
        audit = con.execute(text("SELECT action, subject, detail FROM audit_log")).all()
    dumped = json.dumps([list(map(str, row)) for row in audit])
    assert {"endpoint.create", "endpoint.rotate"} <= {row[0] for row in audit}
    for s in (secret, new_secret, secret[6:], new_secret[6:], api.token, "desk@example.org", _hook(httpserver)):
        assert s not in dumped


def test_a_test_send_is_signed_and_says_what_happened(api: Api, httpserver: HTTPServer) -> None:
    seen: list[dict[str, Any]] = []
    made = api.post("/endpoints", json={"kind": "webhook", "target": _hook(httpserver)}).json()
    secret = made["secret"]

    def receive(request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = request.get_data(as_text=True)
        seen.append(Webhook(secret).verify(body, headers))  # raises unless the signature is valid
        return Response("ok", status=200 if len(seen) == 1 else 500)

    httpserver.expect_request("/hook", method="POST").respond_with_handler(receive)
    r = api.post(f"/endpoints/{made['id']}/test")
    assert r.status_code == 200
    assert r.json() == {"sent": True, "code": 200, "reason": None}
    assert seen[0]["type"] == "alert.test"
    failed = api.post(f"/endpoints/{made['id']}/test").json()
    assert (failed["sent"], failed["code"]) == (False, 500)
    assert "500" in failed["reason"]
    assert api.get(f"/endpoints/{made['id']}").json()["disabled_reason"] is None
    mail = api.post("/endpoints", json={"kind": "email", "target": "desk@example.org"}).json()
    unsent = api.post(f"/endpoints/{mail['id']}/test").json()  # this server has no SMTP server configured
    assert unsent["sent"] is False
    assert "CSH_SMTP_HOST" in unsent["reason"]


def test_a_test_email_reaches_a_real_smtp_server(tiny_dir: Path, tmp_path: Path, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    settings = _settings(tiny_dir, tmp_path / "alerts.sqlite", smtp_host="127.0.0.1", smtp_port=port, smtp_from="alerts@heat.example.org")
    settings = settings.model_copy(update={"smtp_security": "none", "alerts_link_secret": SecretStr("l" * 40)})
    with TestClient(create_app(settings)) as client:
        api = _key(client, "mail")
        mail = api.post("/endpoints", json={"kind": "email", "target": "desk@example.org"}).json()
        assert api.post(f"/endpoints/{mail['id']}/test").json() == {"sent": True, "code": 250, "reason": None}
    (message,) = inbox.messages
    assert message["To"] == "desk@example.org"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Subject"] == "A test from City Service Heat"


def test_deleting_an_endpoint_unlinks_it(api: Api) -> None:
    mail = api.post("/endpoints", json={"kind": "email", "target": "desk@example.org"}).json()
    rule = api.post("/rules", json={"name": "r", "city": "nyc", "spec": RADIUS, "endpoint_ids": [mail["id"]]}).json()
    assert api.delete(f"/endpoints/{mail['id']}").status_code == 204
    assert api.get(f"/endpoints/{mail['id']}").status_code == 404
    assert api.get(f"/rules/{rule['id']}").json()["endpoint_ids"] == []


# ---- deliveries ----------------------------------------------------------------------------------------
def test_a_dead_delivery_can_be_retried(api: Api) -> None:
    store = api.store
    hook = api.post("/endpoints", json={"kind": "webhook", "target": "http://localhost:9/x"}).json()
    rule = api.post("/rules", json={"name": "r", "city": "nyc", "spec": RADIUS, "endpoint_ids": [hook["id"]]}).json()
    now = datetime.now(UTC)
    store.enqueue("nyc", "events", "p", [(rule["id"], "demo", "E1", {}), (rule["id"], "demo", "E2", {})], now=now)
    (delivery, _, lease), *_ = store.claim(now, kinds=("webhook",), limit=1)
    store.settle(delivery.id, lease, "dead", None, "404 refused: not retried", now, code=404)
    dead = api.get("/deliveries", params={"status": "dead"}).json()
    assert [d["id"] for d in dead["items"]] == [delivery.id]
    item = dead["items"][0]
    assert (item["attempts"], item["last_status"], item["last_error"], item["rule_id"]) == (1, 404, "404 refused: not retried", rule["id"])
    assert api.get("/deliveries", params={"rule_id": rule["id"]}).json()["total"] == 2
    assert api.get("/deliveries", params={"rule_id": rule["id"] + 1}).json()["total"] == 0
    assert api.get("/deliveries", params={"status": "lost"}).status_code == 422
    assert api.get("/deliveries", params={"limit": 1}).json()["next_offset"] == 1

    retried = api.post(f"/deliveries/{delivery.id}/retry")
    assert retried.status_code == 200, retried.text
    assert (retried.json()["status"], retried.json()["attempts"]) == ("pending", 0)
    assert datetime.fromisoformat(retried.json()["next_attempt_at"]) <= datetime.now(UTC)  # due now
    pending = api.get("/deliveries", params={"status": "pending"}).json()["items"]
    assert delivery.id in [d["id"] for d in pending]
    again = api.post(f"/deliveries/{delivery.id}/retry")
    assert again.status_code == 409
    assert "only a dead, capped or paused delivery" in again.json()["detail"]
    assert store.audit(api.key_id)[-1].action == "delivery.retry"


# ---- rate limit ---------------------------------------------------------------------------------------
def test_the_token_bucket_answers_429_after_the_burst(tiny_dir: Path, tmp_path: Path) -> None:
    settings = _settings(tiny_dir, tmp_path / "alerts.sqlite", alerts_rate_burst=3, alerts_rate_per_minute=1)
    with TestClient(create_app(settings)) as c:
        one, two = _key(c, "one"), _key(c, "two")
        answers = [one.get("/rules") for _ in range(4)]
        assert [r.status_code for r in answers] == [200, 200, 200, 429]
        assert [r.headers["ratelimit-remaining"] for r in answers] == ["2", "1", "0", "0"]
        assert all(r.headers["ratelimit-limit"] == "3" for r in answers)
        refused = answers[-1]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert int(refused.headers["ratelimit-reset"]) >= int(refused.headers["retry-after"])
        assert two.get("/rules").status_code == 200  # a bucket per key
        anonymous = [c.get("/rules").status_code for _ in range(4)]  # keyed by client address
        assert anonymous == [401, 401, 401, 429]
        assert c.get("/heat").status_code == 200  # the data API is not limited


# ---- previews ------------------------------------------------------------------------------------------
def _haversine_m(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> np.ndarray:
    """Great-circle metres, written here independently of the matcher."""
    p, p0 = np.radians(lat), np.radians(lat0)
    h = np.sin((p - p0) / 2) ** 2 + np.cos(p) * np.cos(p0) * np.sin(np.radians(lon - lon0) / 2) ** 2
    out: np.ndarray = 2 * 6_371_008.8 * np.arcsin(np.sqrt(h))
    return out


@pytest.fixture(scope="module")
def nyc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """Real NYC 311 rows imported by the file path and published: a tenth of them dated 20 days
    earlier (inside the 30-day window) and a tenth 40 days earlier (outside it)."""
    if not NYC_JSON.exists():
        pytest.skip(f"shared real data absent ({NYC_JSON.name}); see ../shared/data/README.md")
    rows: list[dict[str, Any]] = json.loads(gzip.decompress(NYC_JSON.read_bytes()))
    for i, row in enumerate(rows):
        shift = {0: 20, 1: 40}.get(i % 10, 0)
        row["created_date"] = (datetime.fromisoformat(row["created_date"]) - timedelta(days=shift)).isoformat(timespec="milliseconds")
        row["_shift"] = shift
    tmp = tmp_path_factory.mktemp("nyc-preview")
    path = tmp / "rows.json.gz"
    path.write_bytes(gzip.compress(json.dumps([{k: v for k, v in r.items() if k != "_shift"} for r in rows]).encode()))
    store = Store(tmp / "data")
    ingest_file(store, get_source("nyc311"), path)
    store.publish({"source": "test"})
    return tmp, rows


@pytest.fixture
def nyc_api(nyc: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> Iterator[Api]:
    with TestClient(create_app(_settings(nyc[0] / "data", tmp_path / "alerts.sqlite"))) as c:
        yield _key(c, "desk")


def _located(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    located = [r for r in rows if "latitude" in r]
    return (
        np.array([float(r["latitude"]) for r in located]),
        np.array([float(r["longitude"]) for r in located]),
        np.array([r["_shift"] <= 30 for r in located]),
        np.array([f"nyc311:{r['unique_key']}" for r in located]),
    )


@NEEDS_NYC
def test_a_radius_preview_counts_what_an_independent_oracle_counts(nyc: tuple[Path, list[dict[str, Any]]], nyc_api: Api) -> None:
    lat, lon, in_window, ids = _located(nyc[1])
    lat0, lon0 = float(np.median(lat)), float(np.median(lon))
    near = (_haversine_m(lat, lon, lat0, lon0) <= 3000) & in_window
    want = set(ids[near].tolist())
    assert 10 <= len(want) < in_window.sum()
    body = {"city": "nyc", "spec": {"kind": "radius", "lat": lat0, "lon": lon0, "radius_m": 3000}, "daily_cap": 1}
    r = nyc_api.post("/rules/preview", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["total"] == len(want)
    assert {m["id"] for m in got["matches"]} == want
    assert not got["truncated"]
    assert got["expected_per_day"] == round(len(want) / 30, 3)
    assert sum(d["matches"] for d in got["days"]) == len(want)
    assert got["expected_alerts_per_day"] == round(sum(1 for d in got["days"] if d["matches"]) / 30, 3)  # a cap of 1 a day
    assert len({d["date"] for d in got["days"]}) == len(got["days"]) >= 30
    assert datetime.fromisoformat(got["until"]) - datetime.fromisoformat(got["since"]) == timedelta(days=30)
    times = [m["time"] for m in got["matches"]]
    assert times == sorted(times, reverse=True)
    ring = np.array(got["geometry"]["coordinates"][0])
    assert got["geometry"]["type"] == "Polygon"
    assert np.allclose(_haversine_m(ring[:, 1], ring[:, 0], lat0, lon0), 3000, rtol=1e-4)  # the circle drawn is the radius
    assert nyc_api.get("/rules").json()["total"] == 0  # nothing saved

    capped = nyc_api.post("/rules/preview", json={"city": "nyc", "spec": body["spec"]}).json()
    assert capped["expected_alerts_per_day"] == capped["expected_per_day"]  # no cap: every match is an alert


@NEEDS_NYC
def test_a_polygon_preview_counts_what_an_independent_oracle_counts(nyc: tuple[Path, list[dict[str, Any]]], nyc_api: Api) -> None:
    lat, lon, in_window, ids = _located(nyc[1])
    lat0, lon0 = float(np.median(lat)), float(np.median(lon))
    w, s, e, n = lon0 - 0.03, lat0 - 0.02, lon0 + 0.04, lat0 + 0.025
    inside = (lon > w) & (lon < e) & (lat > s) & (lat < n) & in_window
    geometry = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    r = nyc_api.post(
        "/rules/preview", json={"city": "nyc", "spec": {"kind": "polygon", "geometry": geometry}, "filters": {"kinds": ["request"]}}
    )
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["total"] == int(inside.sum()) >= 10
    assert {m["id"] for m in got["matches"]} == set(ids[inside].tolist())
    assert got["geometry"] == geometry
    only = nyc_api.post(
        "/rules/preview",
        json={"city": "nyc", "spec": {"kind": "polygon", "geometry": geometry}, "filters": {"categories": ["no such category"]}},
    ).json()
    assert only["total"] == 0


def test_an_area_preview_draws_the_unit_and_counts_its_events(api: Api, tiny_snap: Snapshot) -> None:
    newest = tiny_snap.events("nyc")["ts"].max()
    assert isinstance(newest, datetime)
    events = tiny_snap.events("nyc").filter((pl.col("ts") > newest - timedelta(days=30)) & pl.col("tract_id").is_not_null())
    tract = events.group_by("tract_id").len().sort("len", descending=True)["tract_id"][0]
    r = api.post("/rules/preview", json={"city": "nyc", "spec": {"kind": "area", "level": "tract", "unit_id": tract}})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["total"] == events.filter(pl.col("tract_id") == tract).height > 0
    assert got["geometry"]["type"] in ("Polygon", "MultiPolygon")
    assert len(got["matches"]) == min(500, got["total"])
    assert got["truncated"] == (got["total"] > 500)


def test_an_anomaly_preview_lists_what_live_alerts_would_fire_on(api: Api, tiny_snap: Snapshot, tmp_path: Path) -> None:
    """The planted neighborhood spike (QN1102, 26-27 Oct) is in the preview, and the preview lists
    exactly what the live evaluation queues for the same rule over the same 30 days."""
    spec = {"kind": "anomaly", "level": "neighborhood", "unit_ids": ["QN1102"], "min_z": 3.0, "max_q": 0.05}
    r = api.post("/rules/preview", json={"city": "nyc", "spec": spec})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["total"] == len(got["anomalies"]) > 0
    assert {("*", "2026-10-26"), ("*", "2026-10-27")} <= {(a["category"], a["bin_start"][:10]) for a in got["anomalies"]}
    assert got["geometry"] is not None
    assert got["matches"] == []

    live = AlertStore(f"sqlite:///{tmp_path / 'live.sqlite'}")
    key, _ = live.create_key("k")
    rule = live.create_rule(key.id, "r", AnomalyRule.model_validate(spec), Filters(), city="nyc")
    live.link(rule.id, live.create_endpoint(key.id, "webhook", "https://example.org/h").id)
    live.enqueue("nyc", anomaly_stream("neighborhood"), got["since"], [])
    evaluate_anomalies(live, tiny_snap, "nyc")
    queued = {(d.payload["unit_id"], d.payload["category"], d.payload["bin_start"]) for d in live.deliveries(key.id)}
    shown = {(a["unit_id"], a["category"], datetime.fromisoformat(a["bin_start"]).isoformat()) for a in got["anomalies"]}
    assert shown == queued
    live.close()


def test_a_preview_before_any_snapshot_is_a_503(tmp_path: Path) -> None:
    with TestClient(create_app(_settings(tmp_path / "empty", tmp_path / "alerts.sqlite"))) as c:
        api = _key(c, "desk")
        assert api.post("/rules/preview", json={"city": "nyc", "spec": RADIUS}).status_code == 503
        assert api.post("/rules", json={"name": "r", "city": "nyc", "spec": RADIUS}).status_code == 201  # rules need no snapshot


def test_the_store_keeps_rules_made_through_the_api(api: Api) -> None:
    """What the API stores is what live matching reads."""
    mail = api.post("/endpoints", json={"kind": "email", "target": "desk@example.org"}).json()
    api.post("/rules", json={"name": "k", "city": "nyc", "spec": {"kind": "keyword", "keyword": "heat"}, "endpoint_ids": [mail["id"]]})
    [(_, spec, filters)] = api.store.event_rules("nyc")
    assert (spec, filters) == (KeywordRule(keyword="heat"), Filters())


# ---- no input is a server error --------------------------------------------------------------------------
_ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
    st.sampled_from(["nyc", "UTC", "22:00", "24:00", "tract", "borough", "MN", "QN1102", "request", "volume", ""]),
)
_SPECS = st.one_of(
    st.fixed_dictionaries({"kind": st.just("radius"), "lat": _ODD, "lon": _ODD, "radius_m": _ODD}),
    st.fixed_dictionaries({"kind": st.sampled_from(["keyword", "address", "plate"]), "keyword": _ODD, "address": _ODD, "plate": _ODD}).map(
        lambda d: {k: v for k, v in d.items() if k == "kind" or k == d["kind"]}
    ),
    st.fixed_dictionaries({"kind": st.just("area"), "level": _ODD, "unit_id": _ODD}),
    st.fixed_dictionaries(
        {"kind": st.just("anomaly"), "level": _ODD, "unit_ids": st.lists(_ODD, max_size=2), "min_z": _ODD, "max_q": _ODD}
    ),
    st.fixed_dictionaries(
        {
            "kind": st.just("polygon"),
            "geometry": st.fixed_dictionaries(
                {"type": st.just("Polygon"), "coordinates": st.lists(st.lists(st.lists(_ODD, max_size=3), max_size=5), max_size=2)}
            ),
        }
    ),
    _ODD,
)
_BODIES = st.fixed_dictionaries(
    {"name": st.just("r"), "city": st.one_of(st.just("nyc"), st.just("nyc"), _ODD), "spec": _SPECS},
    optional={
        "timezone": _ODD,
        "daily_cap": _ODD,
        "quiet_start": _ODD,
        "quiet_end": _ODD,
        "digest_at": _ODD,
        "filters": st.fixed_dictionaries({}, optional={"categories": st.lists(_ODD, max_size=2), "kinds": st.lists(_ODD, max_size=2)}),
        "endpoint_ids": st.lists(_ODD, max_size=2),
        "paused": _ODD,
    },
)


def test_no_rule_body_is_a_server_error(tiny_dir: Path, tmp_path: Path) -> None:
    with TestClient(create_app(_settings(tiny_dir, tmp_path / "alerts.sqlite", alerts_rate_burst=10_000))) as c:
        assert _fuzz(_key(c, "desk")) >= 3 * 50  # many bodies, each answered 2xx or a 422 with a message


def _fuzz(api: Api) -> int:
    rule = api.post("/rules", json={"name": "r", "city": "nyc", "spec": RADIUS}).json()
    answered = [0]

    @settings(max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(body=_BODIES)
    def check(body: dict[str, Any]) -> None:
        for method, url, ok in (("post", "/rules", 201), ("post", "/rules/preview", 200), ("patch", f"/rules/{rule['id']}", 200)):
            r = getattr(api, method)(url, content=json.dumps(body), headers={"content-type": "application/json"})
            assert r.status_code in (ok, 422), f"{method} {url} {body} -> {r.status_code}: {r.text[:300]}"
            if r.status_code == 422:
                assert r.json()["message"]
            answered[0] += 1

    check()
    return answered[0]


def test_a_bucket_refills_at_its_rate_and_forgets_the_least_recent_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.api import ratelimit
    from app.api.ratelimit import TokenBuckets

    now = [0.0]
    buckets = TokenBuckets(rate_per_minute=6, burst=2, clock=lambda: now[0])  # a token every 10 s
    assert [buckets.take("a").allowed for _ in range(3)] == [True, True, False]
    refused = buckets.take("a")
    assert (refused.retry_after_s, refused.reset_s, refused.remaining) == (10, 20, 0)
    now[0] = 9.9
    assert not buckets.take("a").allowed
    now[0] = 10.0
    assert buckets.take("a").allowed
    assert not buckets.take("a").allowed
    now[0] = 1000.0
    assert buckets.take("a").remaining == 1  # refilled to the burst, never past it
    monkeypatch.setattr(ratelimit, "MAX_BUCKETS", 2)
    for client in ("b", "c"):
        buckets.take(client)
    assert set(buckets._buckets) == {"b", "c"}


def test_ids_out_of_range_are_422s_and_the_store_closes_with_the_app(tiny_dir: Path, tmp_path: Path) -> None:
    app = create_app(_settings(tiny_dir, tmp_path / "alerts.sqlite"))
    with TestClient(app) as c:
        api = _key(c, "desk")
        for method, url in (
            ("get", "/rules/0"),
            ("get", f"/rules/{2**40}"),
            ("delete", "/endpoints/-1"),
            ("post", f"/deliveries/{2**63}/retry"),
        ):
            r = getattr(api, method)(url)
            assert r.status_code == 422, (url, r.text)
        assert api.get("/deliveries", params={"rule_id": 2**40}).status_code == 422
        assert app.state.alerts is not None
    assert app.state.alerts is None  # closed at shutdown
