"""Hardening of the alert API over real HTTP (FastAPI's TestClient on the real app, a real SQLite
alerts store): request bodies are capped before routing and auth, a 422 echoes short, encodable
inputs, time zones polars cannot use are refused, polygon specs are checked cheaply before shapely
builds them, and endpoint ids are strict, distinct integers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import app.alerts.rules as rules_module
from app.alerts.rules import MAX_VERTICES
from app.api.errors import MAX_ECHO
from app.api.main import create_app
from tests.test_api_alerts import RADIUS, Api, _key, _settings

LIMIT = 4_000
SQUARE = [[-74.0, 40.7], [-73.9, 40.7], [-73.9, 40.8], [-74.0, 40.8], [-74.0, 40.7]]


@pytest.fixture
def client(tiny_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(tiny_dir, tmp_path / "alerts.sqlite", max_body_bytes=LIMIT))) as c:
        yield c


@pytest.fixture
def api(client: TestClient) -> Api:
    return _key(client, "desk")


def _raw(api: Api, method: str, url: str, body: bytes) -> Any:
    return getattr(api, method)(url, content=body, headers={"Content-Type": "application/json"})


# ---- 1. request body size limit ----------------------------------------------------------------
def test_a_body_over_the_limit_is_a_413_before_auth(client: TestClient, api: Api) -> None:
    big = json.dumps({"name": "r", "city": "nyc", "spec": {"kind": "keyword", "keyword": "x" * (2 * LIMIT)}})
    for method in ("post", "put", "patch"):
        r = getattr(client, method)("/rules", content=big, headers={"Content-Type": "application/json"})  # no key at all
        assert r.status_code == 413, (method, r.text)
        assert r.json() == {"detail": f"request body larger than {LIMIT} bytes"}
        assert "ratelimit-limit" not in r.headers  # auth (which spends a token) never ran
    assert api.post("/rules", content=big, headers={"Content-Type": "application/json"}).status_code == 413
    assert api.get("/rules").json()["total"] == 0


def test_a_streamed_body_over_the_limit_is_a_413(api: Api) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"name": "r", "city": "nyc", "spec": {"kind": "keyword", "keyword": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}}'

    r = api.post("/rules", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json() == {"detail": f"request body larger than {LIMIT} bytes"}
    assert api.get("/rules").json()["total"] == 0


def test_a_streamed_body_is_read_only_up_to_the_limit(client: TestClient) -> None:
    """At the ASGI interface of the real app: the middleware stops asking for chunks once the
    limit is passed, and answers 413 at once."""
    asked = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}  # an endless body

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/rules",
        "raw_path": b"/rules",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "state": {},
    }
    asyncio.run(client.app(scope, receive, send))  # type: ignore[arg-type]
    assert asked == LIMIT // 1000 + 1
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == {"detail": f"request body larger than {LIMIT} bytes"}


def test_bodies_within_the_limit_and_other_requests_pass(client: TestClient, api: Api) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "streamed", "city": "nyc", '
        yield json.dumps({"spec": RADIUS})[1:].encode()

    made = api.post("/rules", content=chunks(), headers={"Content-Type": "application/json"})
    assert made.status_code == 201, made.text
    patched = api.patch(f"/rules/{made.json()['id']}", json={"paused": True})
    assert (patched.status_code, patched.json()["paused"]) == (200, True)
    assert api.get("/rules").json()["total"] == 1
    assert client.get("/healthz").status_code == 200
    assert client.post("/rules", json={}).status_code == 401  # a small body still reaches auth


# ---- 2. the 422 echo ---------------------------------------------------------------------------
def test_a_422_echoes_long_strings_cut(api: Api) -> None:
    r = api.post("/rules", json={"name": "n" * 1000, "city": "nyc", "spec": RADIUS})
    assert r.status_code == 422, r.text
    (error,) = [e for e in r.json()["detail"] if e["loc"][-1] == "name"]
    assert error["input"] == "n" * MAX_ECHO + "…"


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "\\ud800", "city": "nyc", "spec": {"kind": "radius", "lat": 40.75, "lon": -73.99, "radius_m": 400}}',
        b'{"name": "r", "city": "\\udfff", "spec": {"kind": "radius", "lat": 40.75, "lon": -73.99, "radius_m": 400}}',
        b'{"name": "r", "city": "nyc", "spec": {"kind": "keyword", "keyword": "\\ud800\\ud800"}}',
        b'{"name": "r", "\\ud800": 1, "city": "nyc", "spec": {"kind": "radius", "lat": 40.75, "lon": -73.99, "radius_m": 400}}',
        b'{"name": "r", "city": "nyc", "timezone": "\\ud800", "spec": {"kind": "radius", "lat": 40.75, "lon": -73.99, "radius_m": 400}}',
    ],
)
def test_a_lone_surrogate_is_never_a_500(api: Api, body: bytes) -> None:
    for url in ("/rules", "/rules/preview"):
        r = _raw(api, "post", url, body)
        assert r.status_code in (201, 422, 200), (url, r.status_code, r.text)
        r.json()  # well-formed UTF-8 JSON


# ---- 3. time zones polars cannot use -----------------------------------------------------------
@pytest.mark.parametrize("zone", ["localtime", "Factory", "posix/../localtime", "Mars/Olympus"])
def test_a_time_zone_polars_cannot_use_is_a_422(api: Api, zone: str) -> None:
    body = {"name": "r", "city": "nyc", "spec": RADIUS, "timezone": zone}
    for url in ("/rules", "/rules/preview"):
        r = api.post(url, json=body)
        assert r.status_code == 422, (url, r.text)
        assert any(e["loc"][-1] == "timezone" for e in r.json()["detail"]), r.text
    rule = api.post("/rules", json={"name": "r", "city": "nyc", "spec": RADIUS}).json()
    r = api.patch(f"/rules/{rule['id']}", json={"timezone": zone})
    assert r.status_code == 422, r.text
    assert "timezone" in r.json()["message"]
    assert api.get(f"/rules/{rule['id']}").json() == rule
    assert api.get("/rules").json()["total"] == 1


def test_a_usable_time_zone_still_previews(api: Api) -> None:
    r = api.post("/rules/preview", json={"city": "nyc", "spec": RADIUS, "timezone": "Europe/London"})
    assert r.status_code == 200, r.text


# ---- 4. polygon specs --------------------------------------------------------------------------
def _polygon(geometry: Any) -> dict[str, Any]:
    return {"name": "r", "city": "nyc", "spec": {"kind": "polygon", "geometry": geometry}}


@pytest.mark.parametrize(
    ("geometry", "rule"),
    [
        ({"type": "Polygon", "coordinates": [SQUARE], "bbox": [0, 0, 1, 1]}, "only type and coordinates"),
        ({"type": "Polygon", "coordinates": [SQUARE], "crs": {"type": "name"}}, "only type and coordinates"),
        ({"type": "Polygon", "coordinates": [[[*p, 0, 0] for p in SQUARE]]}, "position"),
        ({"type": "Polygon", "coordinates": [[[True, False]] * 5]}, "position"),
        ({"type": "Polygon", "coordinates": "nope"}, "nested lists"),
        ({"type": "MultiPolygon", "coordinates": [SQUARE]}, "nested lists"),
        ({"type": "Polygon", "coordinates": [SQUARE[:2]]}, "GeoJSON"),
    ],
)
def test_a_malformed_polygon_is_a_422(api: Api, geometry: dict[str, Any], rule: str) -> None:
    for url in ("/rules", "/rules/preview"):
        r = api.post(url, json=_polygon(geometry))
        assert r.status_code == 422, (url, r.text)
        assert any(e["loc"][-1] == "geometry" and rule.lower() in e["msg"].lower() for e in r.json()["detail"]), r.text
    assert api.post("/rules", json=_polygon({"type": "Polygon", "coordinates": [SQUARE]})).status_code == 201


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400])
def test_non_finite_coordinates_are_a_422(api: Api, bad: str) -> None:
    body = json.dumps(_polygon({"type": "Polygon", "coordinates": [SQUARE]})).replace("-73.9, 40.7", f"{bad}, 40.7", 1)
    assert bad in body
    for url in ("/rules", "/rules/preview"):
        r = _raw(api, "post", url, body.encode())
        assert r.status_code == 422, (url, r.text)
        assert any(e["loc"][-1] == "geometry" for e in r.json()["detail"]), r.text


def test_a_huge_polygon_is_refused_before_shapely_builds_it(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []
    real_shape = rules_module.shape
    monkeypatch.setattr(rules_module, "shape", lambda value: built.append(value) or real_shape(value))
    n = 1_000_000
    ring = [[-74.0 + i * 1e-7, 40.7] for i in range(n)] + [[-74.0, 40.8], [-74.0, 40.7]]
    body = json.dumps(_polygon({"type": "Polygon", "coordinates": [ring]})).encode()
    with TestClient(create_app(_settings(tiny_dir, tmp_path / "alerts.sqlite", max_body_bytes=len(body) + 1))) as client:
        api = _key(client, "desk")
        start = time.perf_counter()
        r = _raw(api, "post", "/rules", body)
        elapsed = time.perf_counter() - start
        assert r.status_code == 422, r.text[:500]
        assert any(f"more than {MAX_VERTICES} vertices" in e["msg"] for e in r.json()["detail"])
        assert len(r.content) < 10_000  # the echo of the geometry is short
        assert built == []  # refused from the raw coordinates
        assert elapsed < 15, elapsed  # parsing the JSON dominates; no shapely work on a million vertices
        assert api.post("/rules", json=_polygon({"type": "Polygon", "coordinates": [SQUARE]})).status_code == 201
        assert built  # a plain polygon is still built and checked by shapely


# ---- 5. endpoint ids ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ids", "rule"),
    [
        ([True], "valid integer"),
        ([1, False], "valid integer"),
        ([1.0], "valid integer"),
        (["1"], "valid integer"),
        ([1, 1], "repeat"),
        ([3, 2, 3, 2], "repeat an id: 2, 3"),
    ],
)
def test_bad_endpoint_ids_are_a_422(api: Api, ids: list[Any], rule: str) -> None:
    endpoint = api.post("/endpoints", json={"kind": "email", "target": "desk@example.org"}).json()
    assert endpoint["id"] == 1
    r = api.post("/rules", json={"name": "r", "city": "nyc", "spec": RADIUS, "endpoint_ids": ids})
    assert r.status_code == 422, r.text
    assert any("endpoint_ids" in e["loc"] and rule.lower() in e["msg"].lower() for e in r.json()["detail"]), r.text
    assert api.get("/rules").json()["total"] == 0
    rule_made = api.post("/rules", json={"name": "r", "city": "nyc", "spec": RADIUS, "endpoint_ids": [1]}).json()
    r = api.patch(f"/rules/{rule_made['id']}", json={"endpoint_ids": ids})
    assert r.status_code == 422, r.text
    assert api.get(f"/rules/{rule_made['id']}").json()["endpoint_ids"] == [1]
