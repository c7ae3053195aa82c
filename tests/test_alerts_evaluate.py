"""Event rules against real rows through the user's path: real NYC 311 rows imported by the file
path into a real store, published, evaluated against a real alerts store (SQLite): each match is
queued once, with the provider's own record, and only for rows stored after the cursor."""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient

from app.alerts.evaluate import STREAM, anomaly_stream, evaluate_anomalies, evaluate_events
from app.alerts.rules import AddressRule, AnomalyRule, AreaRule, Filters, KeywordRule, RadiusRule, normalize_address
from app.alerts.store import AlertStore
from app.api.main import create_app
from app.config import Settings
from app.data.registry import get_source
from app.data.sources.export_file import ingest_file
from app.data.store import Store
from conftest import SHARED_DATA

NYC_JSON = SHARED_DATA / "events" / "soda_examples" / "nyc311_erm2-nwe9_soda_response_2024-05-27.json.gz"
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
NEEDS_NYC = pytest.mark.skipif(not NYC_JSON.exists(), reason=f"shared real data absent ({NYC_JSON.name}); see ../shared/data/README.md")


@pytest.fixture
def client(tiny_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(tiny_settings)) as c:
        yield c


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(gzip.compress(json.dumps(rows).encode()))
    return path


def _metres(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance, written out independently of the matcher's."""
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    c = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return 6_371_008.8 * math.acos(max(-1.0, min(1.0, c)))


@NEEDS_NYC
def test_event_rules_queue_each_new_real_row_once(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = json.loads(gzip.decompress(NYC_JSON.read_bytes()))
    old, new = rows[:500], rows[500:]
    spec = get_source("nyc311")
    store = Store(tmp_path / "data")
    ingest_file(store, spec, _write(tmp_path / "old.json.gz", old))
    alerts = AlertStore(f"sqlite:///{tmp_path / 'alerts.sqlite'}")
    key, _ = alerts.create_key("test")
    endpoint = alerts.create_endpoint(key.id, "webhook", "https://example.org/hook")

    # Rules from the rows themselves: an address, a point, a word of a descriptor, a tract.
    located = [r for r in new if "latitude" in r and r.get("incident_address")]
    target = located[0]
    lat, lon = float(target["latitude"]), float(target["longitude"])
    word = "noise"
    rules = {
        "address": AddressRule(address=target["incident_address"].lower()),
        "radius": RadiusRule(lat=lat, lon=lon, radius_m=400),
        "keyword": KeywordRule(keyword=word),
    }
    ids = {}
    for name, rule in rules.items():
        made = alerts.create_rule(key.id, name, rule, Filters(), city="nyc", timezone="America/New_York")
        alerts.link(made.id, endpoint.id)
        ids[name] = made.id

    first = store.publish({"source": "test"})
    assert evaluate_events(alerts, first, "nyc") == 0  # the first evaluation starts the watch
    assert alerts.cursor("nyc", STREAM) is not None
    assert first.rows_stored_after("nyc", EPOCH).height == 500

    ingest_file(store, spec, _write(tmp_path / "new.json.gz", new))
    second = store.publish({"source": "test"})
    stored = second.rows_stored_after("nyc", EPOCH).filter(pl.col("event_id").is_in([f"nyc311:{r['unique_key']}" for r in new]))
    assert stored.height == 500
    area_tract = stored.filter(pl.col("tract_id").is_not_null())["tract_id"][0]
    area = alerts.create_rule(key.id, "area", AreaRule(level="tract", unit_id=area_tract), Filters(), city="nyc")
    alerts.link(area.id, endpoint.id)
    ids["area"] = area.id

    queued = evaluate_events(alerts, second, "nyc")
    got: dict[str, set[str]] = {name: set() for name in ids}
    by_rule = {v: k for k, v in ids.items()}
    for d in alerts.deliveries(key.id):
        got[by_rule[d.rule_id]].add(d.item_id)
        assert d.payload["record"]["status"]  # the provider's own record travels, as published
    assert queued == sum(len(v) for v in got.values())

    # The oracle: the raw rows, with no project code but the documented address normalisation.
    def ident(r: dict[str, Any]) -> str:
        return f"nyc311:{r['unique_key']}"

    want_address = {
        ident(r) for r in new if normalize_address(r.get("incident_address") or "-") == normalize_address(target["incident_address"])
    }
    want_radius = {ident(r) for r in new if "latitude" in r and _metres(lat, lon, float(r["latitude"]), float(r["longitude"])) <= 400}
    want_keyword = {ident(r) for r in new if word in ((r.get("descriptor") or "") + "\n" + (r.get("incident_address") or "")).lower()}
    want_area = set(stored.filter(pl.col("tract_id") == area_tract)["event_id"].to_list())
    assert got["address"] == want_address
    assert target["unique_key"] in {i.split(":")[1] for i in got["address"]}
    assert got["radius"] == want_radius
    assert len(want_radius) >= 1
    assert got["keyword"] == want_keyword
    assert len(want_keyword) >= 1
    assert got["area"] == want_area
    assert len(want_area) >= 1
    old_ids = {ident(r) for r in old}
    assert not any(got[name] & old_ids for name in got)  # rows stored before the watch started never alert

    # Evaluating again, and re-importing the same rows (stored again, later), sends nothing twice.
    assert evaluate_events(alerts, second, "nyc") == 0
    ingest_file(store, spec, _write(tmp_path / "new.json.gz", new))
    assert evaluate_events(alerts, store.publish({"source": "test"}), "nyc") == 0
    assert len(alerts.deliveries(key.id)) == queued


def test_an_anomaly_rule_fires_once_for_a_planted_anomaly_with_released_numbers(
    tmp_path: Path, tiny_store: Store, client: TestClient
) -> None:
    """The tiny demo's planted neighborhood spike (QN1102, Noise - Street/Sidewalk, 26-27 Oct) is
    newly released since a cursor of 20 Oct: a rule on that unit and category fires for it, an
    unrestricted rule fires for exactly what ``/anomalies`` lists, every payload number is a released
    one, and a second evaluation sends nothing."""
    snap = tiny_store.current()
    assert snap is not None
    alerts = AlertStore(f"sqlite:///{tmp_path / 'alerts.sqlite'}")
    key, _ = alerts.create_key("test")
    endpoint = alerts.create_endpoint(key.id, "webhook", "https://example.org/hook")
    planted = alerts.create_rule(key.id, "planted", AnomalyRule(level="neighborhood", unit_ids=["QN1102"]), Filters(), city="nyc")
    # the spike's own category cell is withheld in the sparse tiny city (its count is below k there)
    withheld = alerts.create_rule(
        key.id,
        "withheld",
        AnomalyRule(level="neighborhood", min_z=0.0, max_q=1.0),
        Filters(categories=["Noise - Street/Sidewalk"]),
        city="nyc",
    )
    everything = alerts.create_rule(key.id, "all", AnomalyRule(level="neighborhood", min_z=3.0, max_q=0.05), Filters(), city="nyc")
    for rule in (planted, withheld, everything):
        alerts.link(rule.id, endpoint.id)
    since = datetime(2026, 10, 20, 4, tzinfo=UTC)  # local midnight in New York
    alerts.enqueue("nyc", anomaly_stream("neighborhood"), since.isoformat(), [])

    queued = evaluate_anomalies(alerts, snap, "nyc")
    sent = alerts.deliveries(key.id)
    assert queued == len(sent) > 0
    mine = [d for d in sent if d.rule_id == planted.id]
    assert {(d.payload["category"], d.payload["bin_start"][:10]) for d in mine} >= {("*", "2026-10-26"), ("*", "2026-10-27")}
    assert all(d.payload["unit_id"] == "QN1102" for d in mine)
    released = snap.release("nyc").filter(
        (pl.col("level") == "neighborhood") & (pl.col("category") == "Noise - Street/Sidewalk") & pl.col("count").is_not_null()
    )
    shown = {(r["unit_id"], r["bin_start"].isoformat()[:19]) for r in released.iter_rows(named=True)}
    spike = [d for d in sent if d.rule_id == withheld.id]
    assert all((d.payload["unit_id"], d.payload["bin_start"][:19]) in shown for d in spike)  # only released cells alert
    assert not any(d.payload["unit_id"] == "QN1102" for d in spike)
    for d in sent:
        assert d.source == "anomaly"
        assert isinstance(d.payload["count"], int)  # a released count, never a withheld one
        if d.rule_id != withheld.id:
            assert d.payload["zscore"] >= 3.0
            assert d.payload["q"] <= 0.05
        assert d.payload["narrative"].strip()

    until = snap.release_meta("nyc")["complete_until"]["neighborhood"]
    listed = client.get(
        "/anomalies",
        params={"level": "neighborhood", "since": since.isoformat(), "until": until.isoformat(), "min_z": 3, "q": 0.05, "limit": 1000},
    ).json()["items"]
    want = {(a["unit_id"], a["category"], datetime.fromisoformat(a["window_start"]).astimezone(UTC).isoformat()[:19]) for a in listed}
    got = {(d.payload["unit_id"], d.payload["category"], d.payload["bin_start"][:19]) for d in sent if d.rule_id == everything.id}
    assert got == want

    assert evaluate_anomalies(alerts, snap, "nyc") == 0  # the cursor moved: nothing is newly released
    assert len(alerts.deliveries(key.id)) == queued
