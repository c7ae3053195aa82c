"""Alembic environment of the alerts store: runs on the connection the store hands over
(``config.attributes["connection"]``), so migrations use the store's engine and its pragmas."""

from __future__ import annotations

from alembic import context

from app.alerts.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
