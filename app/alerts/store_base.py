"""The engine and transactions of the alerts store, shared by the parts of
:class:`app.alerts.store.AlertStore` (SQLite in WAL mode with foreign keys and a busy timeout, or
PostgreSQL by URL)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.alerts.models import AuditEntry

__all__ = ["StoreBase"]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _private_sqlite_file(database: str | None) -> None:
    """The SQLite file (it holds webhook secrets) readable by its owner only; SQLite gives its WAL
    and shared-memory files the same mode."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if path.parent.is_dir():
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        path.chmod(0o600)


class StoreBase:
    """One SQLAlchemy engine and its sessions; the schema is brought to the newest Alembic
    revision when the store opens (``migrate=False`` to leave it as it is)."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = make_url(url)
        _private_sqlite_file(self.url.database if self.url.get_backend_name() == "sqlite" else None)
        self.engine: Engine = create_engine(self.url, pool_pre_ping=True)
        if self.url.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            self.migrate()

    def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to ``revision`` (Alembic, on this store's engine)."""
        config = Config()
        config.set_main_option("script_location", str(files("app.alerts").joinpath("migrations")))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        with self._sessions.begin() as session:
            yield session

    @staticmethod
    def _audit(s: Session, at: datetime, key_id: int | None, action: str, subject: str, detail: dict[str, object] | None = None) -> None:
        """Add an audit entry to the transaction ``s`` (never a secret in ``detail``)."""
        s.add(AuditEntry(at=at, key_id=key_id, action=action, subject=subject, detail=detail or {}))
