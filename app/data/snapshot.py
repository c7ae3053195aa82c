"""Read-only access to one published snapshot: the only place the read side runs SQL.

A snapshot never changes once published, so whole frames (events, geography) are loaded once and
memoised on the object; everything above the data layer works on those polars frames.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import polars as pl

__all__ = ["EVENT_SCHEMA", "Snapshot", "connect", "query", "read_events", "read_units"]

T = TypeVar("T")
#: Derived results kept per snapshot (frames of events and units are among them).
MEMO_SIZE = 256

#: Columns of the unified event frame the engine consumes (one row per current event).
EVENT_SCHEMA = {
    "kind": pl.String,
    "category": pl.String,
    "tract_id": pl.String,
    "area_id": pl.String,  # the neighborhood-level unit of a row located in no tract (else null)
    "ts": pl.Datetime("us", "UTC"),
    "lon": pl.Float64,
    "lat": pl.Float64,
}

_EVENTS_SQL = """
SELECT 'request' AS kind, category, tract_id, CASE WHEN tract_id IS NULL THEN area_id END AS area_id, ts, lon, lat
FROM request WHERE city = $city AND valid_to IS NULL
UNION ALL
SELECT 'incident', type, tract_id, CASE WHEN tract_id IS NULL THEN area_id END, ts, lon, lat FROM incident WHERE city = $city AND valid_to IS NULL
UNION ALL
SELECT 'closure', kind, tract_id, CASE WHEN tract_id IS NULL THEN area_id END, start_ts, lon, lat FROM closure WHERE city = $city AND valid_to IS NULL
"""


#: Rows of every kind stored after an instant, as the alerts match them (their provider record in ``attrs``).
_NEW_ROWS_SQL = """
SELECT id AS event_id, source, 'request' AS kind, category, ts, descriptor AS text, lon, lat, tract_id, area_id, attrs, valid_from
FROM request WHERE city = $city AND valid_to IS NULL AND valid_from > $after
UNION ALL
SELECT id, source, 'incident', type, ts, NULL, lon, lat, tract_id, area_id, attrs, valid_from
FROM incident WHERE city = $city AND valid_to IS NULL AND valid_from > $after
UNION ALL
SELECT id, source, 'closure', kind, start_ts, description, lon, lat, tract_id, area_id, attrs, valid_from
FROM closure WHERE city = $city AND valid_to IS NULL AND valid_from > $after
ORDER BY valid_from, event_id
"""

#: The same rows by event time (``ts``; a closure's start): what a rule preview matches.
_ROWS_BETWEEN_SQL = """
SELECT id AS event_id, source, 'request' AS kind, category, ts, descriptor AS text, lon, lat, tract_id, area_id, attrs, valid_from
FROM request WHERE city = $city AND valid_to IS NULL AND ts > $since AND ts <= $until
UNION ALL
SELECT id, source, 'incident', type, ts, NULL, lon, lat, tract_id, area_id, attrs, valid_from
FROM incident WHERE city = $city AND valid_to IS NULL AND ts > $since AND ts <= $until
UNION ALL
SELECT id, source, 'closure', kind, start_ts, description, lon, lat, tract_id, area_id, attrs, valid_from
FROM closure WHERE city = $city AND valid_to IS NULL AND start_ts > $since AND start_ts <= $until
ORDER BY ts, event_id
"""


def connect(path: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file with the session time zone pinned to UTC (ICU is built in)."""
    con = duckdb.connect(str(path), read_only=read_only)
    con.execute("SET GLOBAL TimeZone = 'UTC'")  # GLOBAL: cursors are connections of their own
    return con


def query(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None) -> pl.DataFrame:
    """Run ``sql`` on a fresh cursor of ``con`` (DuckDB connections are not thread-safe)."""
    cur = con.cursor()
    try:
        frame: pl.DataFrame = cur.sql(sql, params=params or None).pl()
        return frame
    finally:
        cur.close()


def read_events(con: duckdb.DuckDBPyConnection, city: str) -> pl.DataFrame:
    """All current events of ``city`` as one frame with :data:`EVENT_SCHEMA`, sorted by time."""
    try:
        frame = query(con, _EVENTS_SQL, {"city": city})
    except duckdb.BinderException:  # a snapshot from before rows could name their area: none do
        frame = query(con, _EVENTS_SQL.replace("CASE WHEN tract_id IS NULL THEN area_id END", "NULL::VARCHAR"), {"city": city})
    return frame.cast(EVENT_SCHEMA).sort("ts")  # type: ignore[arg-type]  # polars accepts a name->dtype mapping


def read_units(con: duckdb.DuckDBPyConnection, city: str) -> pl.DataFrame:
    """Units of ``city`` at every level, without polygons."""
    return query(
        con, "SELECT level, unit_id, name, parent_id, lon, lat FROM geo_unit WHERE city = $city ORDER BY level, unit_id", {"city": city}
    )


class Snapshot:
    """One immutable DuckDB snapshot opened read-only; safe to share between threads.

    >>> snap = Store(Path("data")).current()      # doctest: +SKIP
    >>> snap.events("nyc").height                 # doctest: +SKIP
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._con = connect(path, read_only=True)
        self._memo: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()  # guards the memo dict only; builds run outside it
        self._building: dict[tuple[Any, ...], threading.Lock] = {}
        meta = dict(self._query("SELECT key, value FROM snapshot_meta").iter_rows())
        self.meta: dict[str, str] = meta
        self.id: str = meta.get("snapshot_id", path.stem)
        self.created_at = (
            datetime.fromisoformat(meta["created_at"]) if "created_at" in meta else datetime.fromtimestamp(path.stat().st_mtime, UTC)
        )

    def _query(self, sql: str, params: dict[str, Any] | None = None) -> pl.DataFrame:
        return query(self._con, sql, params)

    def memo(self, key: tuple[Any, ...], build: Callable[[], T]) -> T:
        """``build()`` once per ``key`` for this snapshot's lifetime (least recently used dropped
        past :data:`MEMO_SIZE`). Caching on the snapshot, not in a global cache, lets a replaced
        snapshot and everything derived from it be freed together."""
        with self._lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                return self._memo[key]  # type: ignore[no-any-return]  # memo values are typed by their key's builder
            pending = self._building.get(key)
            if pending is None:
                pending = self._building[key] = threading.Lock()
        # Built outside the snapshot-wide lock, so a slow build never stalls readers of other keys;
        # one lock per key makes concurrent askers of the same key wait for one build.
        with pending:
            with self._lock:
                if key in self._memo:
                    return self._memo[key]  # type: ignore[no-any-return]  # memo values are typed by their key's builder
            value = build()
            with self._lock:
                self._memo[key] = value
                self._building.pop(key, None)
                while len(self._memo) > MEMO_SIZE:
                    self._memo.popitem(last=False)
            return value

    # ---- what the engine and the API read -----------------------------------------------------
    def row_counts(self) -> dict[str, int]:
        """Current rows per table (events count only rows not soft-deleted)."""
        sql = """SELECT 'request' t, count(*) n FROM request WHERE valid_to IS NULL
                 UNION ALL SELECT 'incident', count(*) FROM incident WHERE valid_to IS NULL
                 UNION ALL SELECT 'closure', count(*) FROM closure WHERE valid_to IS NULL
                 UNION ALL SELECT 'geo_unit', count(*) FROM geo_unit
                 UNION ALL SELECT 'anomaly', count(*) FROM anomaly"""
        return {t: int(n) for t, n in self._query(sql).iter_rows()}

    @property
    def exact_counts_public(self) -> bool:
        """False when some city's release is ``dp``: raw row counts and exact event times (health,
        provenance, city facts) would then reveal what the noise protects, so they are withheld."""
        return not any(self.release_meta(city).get("mode") == "dp" for city in self.cities())

    def cities(self) -> list[str]:
        """Cities that have geography in this snapshot."""
        return self.memo(("cities",), lambda: self._query("SELECT DISTINCT city FROM geo_unit ORDER BY city")["city"].to_list())

    def units(self, city: str, level: str | None = None) -> pl.DataFrame:
        """Units of ``city`` (one level or all): unit_id, level, name, parent_id, lon, lat (no polygons)."""
        units = self.memo(("units", city), lambda: read_units(self._con, city))
        return units if level is None else units.filter(pl.col("level") == level)

    def unit_geometries(self, city: str, level: str) -> pl.DataFrame:
        """Units of one level with their polygons as WKB (``geom_wkb``)."""
        return self.memo(
            ("geoms", city, level),
            lambda: self._query(
                "SELECT unit_id, name, parent_id, lon, lat, geom_wkb FROM geo_unit WHERE city = $city AND level = $level ORDER BY unit_id",
                {"city": city, "level": level},
            ),
        )

    def events(self, city: str) -> pl.DataFrame:
        """All current events of ``city`` as one frame with :data:`EVENT_SCHEMA`, loaded once."""
        return self.memo(("events", city), lambda: read_events(self._con, city))

    def rows_stored_after(self, city: str, after: datetime) -> pl.DataFrame:
        """Current rows of ``city`` stored (``valid_from``) after ``after``, oldest first: ``event_id,
        source, kind, category, ts, text, lon, lat, tract_id, area_id, attrs`` (the provider's
        record as JSON text), ``valid_from``. What the alerts match; not memoised (one read per
        evaluation)."""
        frame = self._query(_NEW_ROWS_SQL, {"city": city, "after": after})
        return frame.with_columns(pl.col("attrs").cast(pl.String)) if frame.height else frame

    def rows_between(self, city: str, since: datetime, until: datetime) -> pl.DataFrame:
        """Current rows of ``city`` whose event time lies in ``(since, until]``, by time, with the
        columns of :meth:`rows_stored_after` (what a rule preview matches; not memoised)."""
        frame = self._query(_ROWS_BETWEEN_SQL, {"city": city, "since": since, "until": until})
        return frame.with_columns(pl.col("attrs").cast(pl.String)) if frame.height else frame

    def newest_event_time(self, city: str) -> datetime | None:
        """Event time of the newest current row of ``city`` (memoised)."""

        def read() -> datetime | None:
            row = self._query(
                "SELECT max(v) AS v FROM (SELECT max(ts) AS v FROM request WHERE city = $city AND valid_to IS NULL UNION ALL "
                "SELECT max(ts) FROM incident WHERE city = $city AND valid_to IS NULL UNION ALL "
                "SELECT max(start_ts) FROM closure WHERE city = $city AND valid_to IS NULL)",
                {"city": city},
            )
            value = row["v"][0] if row.height else None
            return value if isinstance(value, datetime) else None

        return self.memo(("newest-event-time", city), read)

    def newest_stored(self, city: str) -> datetime | None:
        """When the newest current row of ``city`` was stored (the alerts' cursor starts there)."""
        row = self._query(
            "SELECT max(v) AS v FROM (SELECT max(valid_from) AS v FROM request WHERE city = $city UNION ALL "
            "SELECT max(valid_from) FROM incident WHERE city = $city UNION ALL SELECT max(valid_from) FROM closure WHERE city = $city)",
            {"city": city},
        )
        value = row["v"][0] if row.height else None
        return value if isinstance(value, datetime) else None

    def anomalies(self, city: str) -> pl.DataFrame:
        """Anomalies stored with this snapshot (computed by the pipeline at publish time)."""
        return self.memo(
            ("anomalies", city),
            lambda: self._query(
                "SELECT level, unit_id, category, window_start, window_end, zscore, evidence FROM anomaly WHERE city = $city ORDER BY zscore DESC",
                {"city": city},
            ),
        )

    def release(self, city: str) -> pl.DataFrame:
        """The published cells of ``city`` (every level at its grain), computed at publish time:
        ``level, grain, unit_id, parent_id, category, bin_start, count`` (null where withheld or
        incomplete), ``suppressed``, ``partial``; absent cells of complete bins are zeros."""
        return self.memo(
            ("release", city),
            lambda: self._query(
                "SELECT level, grain, unit_id, parent_id, category, bin_start, count, suppressed, partial FROM release_cell "
                "WHERE city = $city ORDER BY level, category, unit_id, bin_start",
                {"city": city},
            ).with_columns(pl.col("bin_start").dt.convert_time_zone("UTC")),
        )

    def scores(self, city: str) -> pl.DataFrame:
        """The score of every cell of ``city`` at every level and grain (see :mod:`app.engine.scoring`)."""
        return self.memo(
            ("scores", city),
            lambda: self._query(
                "SELECT * EXCLUDE (city) FROM score_cell WHERE city = $city ORDER BY level, grain, category, unit_id, bin_start",
                {"city": city},
            ).with_columns(pl.col("bin_start").dt.convert_time_zone("UTC")),
        )

    def release_meta(self, city: str) -> dict[str, Any]:
        """How ``city``'s release was made: mode, k, epsilon, grains per level, time zone, history
        start and horizon, and under ``dp`` ``epsilon_spent`` (at the city's most-charged instant,
        after this release) and ``privacy_budget`` (empty when the snapshot has no release for it)."""

        def read() -> dict[str, Any]:
            rows = self._query("SELECT * FROM release_meta WHERE city = $city", {"city": city}).to_dicts()
            if not rows:
                return {}
            meta = rows[0]
            packed = json.loads(meta["grains"]) if isinstance(meta["grains"], str) else meta["grains"]
            meta["grains"] = packed["grains"]
            meta["complete_until"] = {k: datetime.fromisoformat(v) for k, v in packed["complete_until"].items()}
            meta["epsilon_spent"] = packed.get("epsilon_spent")
            meta["privacy_budget"] = packed.get("privacy_budget")
            return meta

        return self.memo(("release_meta", city), read)

    def ingest_state(self) -> pl.DataFrame:
        """Per-source ingest state (cursor, last success, failures, breaker, drift, totals)."""
        return self._query("SELECT * FROM ingest_state ORDER BY source")
