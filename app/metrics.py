"""Prometheus metrics of the process (served at ``/metrics``): ingest volume, drift and breakers."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = ["BREAKER_OPEN", "INGEST_FAILURES", "INGEST_ROWS", "INGEST_UNLOCATED", "SCHEMA_DRIFT"]

INGEST_ROWS = Counter("csh_ingest_rows_total", "Rows upserted by ingest.", ["source"])
INGEST_UNLOCATED = Counter("csh_ingest_unlocated_total", "Rows kept without a usable location.", ["source"])
INGEST_FAILURES = Counter("csh_ingest_failures_total", "Failed ingest runs.", ["source"])
SCHEMA_DRIFT = Gauge("csh_schema_drift_fields", "Fields drifting from the payload contract (new, vanished or retyped).", ["source", "kind"])
BREAKER_OPEN = Gauge("csh_source_breaker_open", "1 while the source's circuit breaker is open.", ["source"])
