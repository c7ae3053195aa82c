"""Alerts: rules that watch new reports and released anomalies, and their signed deliveries.

Alert state is mutable and transactional, unlike the immutable event snapshots, so it has a store
of its own (:class:`app.alerts.store.AlertStore`, SQLAlchemy with Alembic migrations): embedded
SQLite in WAL mode by default, PostgreSQL by URL for deployments with several processes."""
