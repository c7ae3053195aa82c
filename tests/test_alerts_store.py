"""The alerts store on SQLite (WAL) and on a real PostgreSQL server: migrations build the schema
the models declare, keys are stored as hashes and shown once, revoked keys stop working, changes
are audited, and the CLI does the same."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from app.alerts.models import Base
from app.alerts.store import KEY_PREFIX, AlertStore, hash_token
from tests.postgres import postgres_server

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AlertStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    else:
        base = request.getfixturevalue("pg_url")
        name = f"alerts_{abs(hash(request.node.nodeid)) % 10**9}"
        admin = AlertStore(base, migrate=False)
        with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as con:
            con.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            con.execute(text(f'CREATE DATABASE "{name}"'))
        admin.close()
        url = base.rsplit("/", 1)[0] + f"/{name}"
    s = AlertStore(url)
    yield s
    s.close()


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
