"""The alerts store on SQLite (WAL) and on a real PostgreSQL server: migrations build the schema
the models declare, keys are stored as hashes and shown once, revoked keys stop working, changes
are audited, and the CLI does the same."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from app.alerts.models import Base
from app.alerts.rules import Filters, KeywordRule, RadiusRule
from app.alerts.store import KEY_PREFIX, AlertStore, hash_token

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(alert_store: AlertStore) -> AlertStore:
    return alert_store


def test_migrations_build_the_schema_the_models_declare(store: AlertStore) -> None:
    with store.engine.connect() as con:
        diff = compare_metadata(MigrationContext.configure(con, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    tables = set(inspect(store.engine).get_table_names())
    assert {"api_keys", "rules", "endpoints", "rule_endpoints", "deliveries", "evaluation_cursors", "audit_log"} <= tables
    uniques = inspect(store.engine).get_unique_constraints("deliveries")
    assert [sorted(u["column_names"]) for u in uniques] == [sorted(["rule_id", "endpoint_id", "source", "item_id"])]


def test_a_second_open_migrates_nothing_and_keeps_data(store: AlertStore) -> None:
    key, token = store.create_key("first")
    again = AlertStore(store.url.render_as_string(hide_password=False))
    assert again.authenticate(token) is not None
    assert [k.id for k in again.list_keys()] == [key.id]
    again.close()


def test_keys_are_hashed_shown_once_and_revocable(store: AlertStore) -> None:
    key, token = store.create_key("  ops team ")
    assert token.startswith(KEY_PREFIX)
    assert len(token) > 40
    assert key.name == "ops team"
    assert token.startswith(key.prefix)
    assert key.prefix != token
    with store.engine.connect() as con:
        stored = con.execute(text("SELECT sha256, prefix FROM api_keys")).one()
    assert stored.sha256 == hash_token(token)
    assert token not in stored
    found = store.authenticate(token)
    assert found is not None
    assert found.id == key.id
    assert isinstance(found.created_at, datetime)
    assert found.created_at.utcoffset() is not None
    assert store.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.authenticate("not-a-key") is None
    store.revoke_key(key.prefix)
    assert store.authenticate(token) is None
    actions = [(e.action, e.key_id) for e in store.audit()]
    assert actions == [("key.create", key.id), ("key.revoke", key.id)]
    assert all(token not in str(e.detail) for e in store.audit())
    with pytest.raises(LookupError):
        store.revoke_key("csh_nothing")
    with pytest.raises(ValueError, match="name"):
        store.create_key("   ")


def test_the_sqlite_file_is_private(tmp_path: Path) -> None:
    AlertStore(f"sqlite:///{tmp_path / 'a.sqlite'}").close()
    assert (tmp_path / "a.sqlite").stat().st_mode & 0o077 == 0  # it holds the webhook secrets


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    s = AlertStore(f"sqlite:///{tmp_path / 'a.sqlite'}")
    with s.engine.connect() as con:
        assert con.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert con.execute(text("PRAGMA foreign_keys")).scalar() == 1
        with pytest.raises(Exception, match="FOREIGN KEY"):
            con.execute(text("INSERT INTO rule_endpoints (rule_id, endpoint_id) VALUES (99, 99)"))
    s.close()


def test_cli_creates_lists_and_revokes_keys(tmp_path: Path) -> None:
    env = {"CSH_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.alerts", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    made = cli("keys", "create", "night desk")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith(KEY_PREFIX)
    listed = cli("keys", "list")
    assert "night desk" in listed.stdout
    assert "live" in listed.stdout
    assert token not in listed.stdout
    assert cli("keys", "revoke", "1").returncode == 0
    assert "revoked" in cli("keys", "list").stdout
    missing = cli("keys", "revoke", "77")
    assert missing.returncode == 2
    assert "no single key" in missing.stderr
    s = AlertStore(f"sqlite:///{tmp_path / 'alerts.sqlite'}")
    assert s.authenticate(token) is None
    s.close()


def _rule_with_endpoints(store: AlertStore, n_endpoints: int = 2) -> tuple[int, int, list[int]]:
    key, _ = store.create_key("desk")
    rule = store.create_rule(
        key.id, "near the office", RadiusRule(lat=40.7, lon=-73.9, radius_m=250), Filters(categories=["Noise"]), city="nyc"
    )
    endpoints = [store.create_endpoint(key.id, "webhook", f"https://example.org/hook/{i}").id for i in range(n_endpoints)]
    for endpoint in endpoints:
        store.link(rule.id, endpoint)
    return key.id, rule.id, endpoints


def test_rules_round_trip_and_only_live_ones_are_matched(store: AlertStore) -> None:
    key_id, rule_id, _ = _rule_with_endpoints(store)
    lonely = store.create_rule(key_id, "no endpoint", KeywordRule(keyword="noise"), Filters(), city="nyc")
    paused = store.create_rule(key_id, "paused", KeywordRule(keyword="heat"), Filters(), city="nyc", paused=True)
    store.link(paused.id, store.create_endpoint(key_id, "email", "a@example.org").id)
    live = store.event_rules("nyc")
    assert [(i, type(spec).__name__, f.categories) for i, spec, f in live] == [(rule_id, "RadiusRule", ["Noise"])]
    assert live[0][1] == RadiusRule(lat=40.7, lon=-73.9, radius_m=250)
    assert store.event_rules("chicago") == []
    assert {r.id for r in store.rules(key_id)} == {rule_id, lonely.id, paused.id}
    other, _ = store.create_key("other")
    with pytest.raises(LookupError):
        store.link(rule_id, store.create_endpoint(other.id, "webhook", "https://example.org/x").id)
    assert store.delete_rule(other.id, rule_id) is False  # not its rule
    assert store.delete_rule(key_id, rule_id) is True
    assert store.event_rules("nyc") == []
    assert [e.action for e in store.audit(key_id)][-1] == "rule.delete"


def test_webhook_endpoints_get_a_signing_secret(store: AlertStore) -> None:
    key, _ = store.create_key("k")
    hook = store.create_endpoint(key.id, "webhook", "https://example.org/h")
    mail = store.create_endpoint(key.id, "email", "ops@example.org")
    assert hook.secret is not None
    assert hook.secret.startswith("whsec_")
    assert mail.secret is None
    with pytest.raises(ValueError, match="kind"):
        store.create_endpoint(key.id, "pigeon", "x")
    assert all(hook.secret not in str(e.detail) for e in store.audit())


def test_enqueue_is_once_per_rule_endpoint_item_and_moves_the_cursor(store: AlertStore) -> None:
    _, rule_id, endpoints = _rule_with_endpoints(store)
    assert store.cursor("nyc", "events") is None
    matches = [(rule_id, "nyc_311", "A1", {"descriptor": "Loud Music"}), (rule_id, "nyc_311", "A2", {})]
    assert store.enqueue("nyc", "events", "2026-11-01T00:00:00+00:00", matches) == 2 * len(endpoints)
    assert store.cursor("nyc", "events") == "2026-11-01T00:00:00+00:00"
    # the same matches again (a crash before the cursor moved, a re-run): nothing new
    assert store.enqueue("nyc", "events", "2026-11-02T00:00:00+00:00", [*matches, (rule_id, "nyc_311", "A3", {})]) == len(endpoints)
    queued = store.deliveries(status="pending")
    assert len(queued) == 3 * len(endpoints)
    assert {(d.endpoint_id, d.item_id) for d in queued} == {(e, i) for e in endpoints for i in ("A1", "A2", "A3")}
    assert queued[0].payload == {"descriptor": "Loud Music"}
    assert store.cursor("nyc", "events") == "2026-11-02T00:00:00+00:00"


def test_a_failed_enqueue_leaves_cursor_and_queue_unchanged(store: AlertStore) -> None:
    _, rule_id, _ = _rule_with_endpoints(store, 1)
    store.enqueue("nyc", "events", "p1", [(rule_id, "s", "A1", {})])
    with pytest.raises(ValueError, match="not JSON"):
        store.enqueue("nyc", "events", "p2", [(rule_id, "s", "A2", {"bad": object()})])  # not JSON: refused before anything is written
    assert store.cursor("nyc", "events") == "p1"
    assert [d.item_id for d in store.deliveries()] == ["A1"]


def test_rules_endpoints_and_retries_are_changed_by_their_owner_only(store: AlertStore) -> None:
    from datetime import UTC

    from app.alerts.queue import RetryRefusedError
    from app.alerts.rule_book import QuotaExceededError

    key_id, rule_id, endpoints = _rule_with_endpoints(store)
    other, _ = store.create_key("other")
    assert store.get_rule(other.id, rule_id) is None
    assert store.update_rule(other.id, rule_id, paused=True) is None
    assert store.get_endpoint(other.id, endpoints[0]) is None
    assert store.delete_endpoint(other.id, endpoints[0]) is False
    assert store.unlink(other.id, rule_id, endpoints[0]) is False
    with pytest.raises(LookupError):
        store.rotate_secret(endpoints[0], key_id=other.id)
    with pytest.raises(LookupError):  # another key's endpoint cannot be linked
        store.update_rule(
            other.id, store.create_rule(other.id, "o", KeywordRule(keyword="xy"), Filters(), city="nyc").id, endpoint_ids=endpoints
        )

    changed = store.update_rule(key_id, rule_id, paused=True, spec=KeywordRule(keyword="heat"), daily_cap=5, endpoint_ids=[endpoints[1]])
    assert changed is not None
    got = store.get_rule(key_id, rule_id)
    assert got is not None
    assert (got.paused, got.kind, got.params["keyword"], got.daily_cap) == (True, "keyword", "heat", 5)
    assert store.rule_endpoint_ids([rule_id]) == {rule_id: [endpoints[1]]}
    assert store.audit(key_id)[-1].detail == {"fields": ["daily_cap", "paused", "spec", "endpoint_ids"], "paused": True}
    with pytest.raises(ValueError, match="no field"):
        store.update_rule(key_id, rule_id, owner=other.id)
    assert store.unlink(key_id, rule_id, endpoints[1]) is True
    assert store.rule_endpoint_ids([rule_id]) == {rule_id: []}
    with pytest.raises(QuotaExceededError):
        store.create_rule(key_id, "more", KeywordRule(keyword="yz"), Filters(), city="nyc", most=store.count_rules(key_id))
    with pytest.raises(QuotaExceededError):
        store.create_endpoint(key_id, "email", "a@example.org", most=len(store.endpoints(key_id)))

    store.update_rule(key_id, rule_id, endpoint_ids=endpoints)
    now = datetime.now(UTC)
    store.enqueue("nyc", "events", "p", [(rule_id, "s", f"E{i}", {}) for i in range(3)], now=now)
    page, total = store.delivery_page(key_id, limit=2, offset=1)
    assert total == 6
    assert [d.id for d in page] == sorted((d.id for d in store.deliveries(key_id)), reverse=True)[1:3]
    assert store.delivery_page(other.id) == ([], 0)
    (delivery, _, lease), *_ = store.claim(now, kinds=("webhook",), limit=1)
    with pytest.raises(RetryRefusedError, match="sending"):
        store.retry(key_id, delivery.id, now)
    store.settle(delivery.id, lease, "dead", None, "gave up", now)
    assert store.delivery_page(key_id, status="dead")[1] == 1
    assert store.retry(other.id, delivery.id, now) is None
    retried = store.retry(key_id, delivery.id, now)
    assert retried is not None
    assert (retried.status, retried.attempts, retried.next_attempt_at) == ("pending", 0, now)
    assert store.delete_endpoint(key_id, endpoints[0]) is True
    assert store.endpoints(key_id)[0].id == endpoints[1]
    assert {d.endpoint_id for d in store.deliveries(key_id)} == {endpoints[1]}
