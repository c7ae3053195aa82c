"""The one owner of DuckDB files: a single writer on a working database, and immutable snapshots
published by copy + atomic rename + pointer swap, so readers never see a half-written state.

Layout under ``data_dir``::

    work.duckdb              the writer's database (ingest upserts land here)
    snapshots/<id>.duckdb    immutable published copies, newest ``keep`` kept
    CURRENT                  one line: the file name of the live snapshot
"""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

from app.data.snapshot import Snapshot, connect

__all__ = ["EVENT_TABLES", "SCHEMA_SQL", "Store"]

SCHEMA_SQL = Path(__file__).with_name("schema.sql").read_text()
EVENT_TABLES = ("request", "incident", "closure")
_OPEN_ATTEMPTS = 5


class Store:
    """Working database, snapshot publishing and read access for one ``data_dir``.

    >>> store = Store(Path("data"))                       # doctest: +SKIP
    >>> with store.writer() as con: store.upsert(con, "request", frame)   # doctest: +SKIP
    >>> snap = store.publish({"source": "demo"})          # doctest: +SKIP
    >>> store.current().row_counts()                      # doctest: +SKIP
    """

    def __init__(self, data_dir: Path, keep: int = 3) -> None:
        self.data_dir = Path(data_dir)
        self.snapshots_dir = self.data_dir / "snapshots"
        self.keep = keep
        self._pointer = self.data_dir / "CURRENT"
        self._open_lock = threading.Lock()
        self._open: dict[str, Snapshot] = {}

    # ---- writing -------------------------------------------------------------------------------
    @contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Exclusive read-write connection to the working database (one writer, across processes)."""
        self.snapshots_dir.mkdir(parents=True, exist_ok=True)
        with self._write_lock():
            con = connect(self.data_dir / "work.duckdb")
            try:
                con.execute(SCHEMA_SQL)
                yield con
            finally:
                con.close()

    @staticmethod
    def upsert(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame) -> int:
        """Insert or replace ``frame`` rows into ``table`` by primary key; columns matched by name."""
        if frame.is_empty():
            return 0
        con.register("_upsert_frame", frame.to_arrow())
        try:
            con.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM _upsert_frame")
        finally:
            con.unregister("_upsert_frame")
        return frame.height

    @staticmethod
    def replace_release(
        con: duckdb.DuckDBPyConnection, city: str, release: pl.DataFrame, scores: pl.DataFrame, meta: dict[str, object]
    ) -> None:
        """Replace ``city``'s release, scores and release facts in the working database (they are
        copied into the next snapshot with everything else)."""
        for table in ("release_cell", "score_cell", "release_meta"):
            con.execute(f"DELETE FROM {table} WHERE city = $city", {"city": city})
        for table, frame in (("release_cell", release), ("score_cell", scores)):
            if frame.height:
                con.register("_frame", frame.with_columns(city=pl.lit(city)).to_arrow())
                try:
                    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _frame")
                finally:
                    con.unregister("_frame")
        con.execute(
            "INSERT INTO release_meta BY NAME SELECT $city AS city, $mode AS mode, $k AS k, $epsilon AS epsilon, $grains AS grains, "
            "$timezone AS timezone, $history_start AS history_start, $horizon AS horizon, now() AS computed_at",
            {"city": city, **meta},
        )

    def publish(self, meta: dict[str, str] | None = None) -> Snapshot:
        """Copy the working database to a new immutable snapshot and make it current atomically."""
        self.snapshots_dir.mkdir(parents=True, exist_ok=True)
        with self._write_lock():
            work = self.data_dir / "work.duckdb"
            if not work.exists():
                raise FileNotFoundError(f"no working database at {work}; ingest something first")
            created = datetime.now(UTC)
            snap_id = created.strftime("%Y%m%dT%H%M%S%fZ")
            final = self.snapshots_dir / f"{snap_id}.duckdb"
            tmp = final.with_suffix(".tmp")
            shutil.copyfile(work, tmp)
            con = connect(tmp)
            try:
                stamp = {**(meta or {}), "snapshot_id": snap_id, "created_at": created.isoformat()}
                con.executemany("INSERT OR REPLACE INTO snapshot_meta VALUES (?, ?)", list(stamp.items()))
                con.execute("CHECKPOINT")
            finally:
                con.close()
            _fsync(tmp)
            os.replace(tmp, final)
            pointer_tmp = self._pointer.with_suffix(".tmp")
            pointer_tmp.write_text(final.name + "\n")
            _fsync(pointer_tmp)
            os.replace(pointer_tmp, self._pointer)
            self._prune(final)
        snap = self.current()
        assert snap is not None  # we just published it
        return snap

    def _prune(self, newest: Path) -> None:
        """Delete all but the newest ``keep`` snapshots; open readers keep their unlinked file."""
        snaps = sorted(self.snapshots_dir.glob("*.duckdb"))
        for old in snaps[: max(0, len(snaps) - self.keep)]:
            if old != newest:
                old.unlink(missing_ok=True)
        for stale in self.snapshots_dir.glob("*.tmp"):
            stale.unlink(missing_ok=True)

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / ".writer.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ---- reading -------------------------------------------------------------------------------
    def current(self) -> Snapshot | None:
        """The live snapshot (opened read-only once and shared), or ``None`` before the first publish."""
        for attempt in range(_OPEN_ATTEMPTS):
            try:
                name = self._pointer.read_text().strip()
            except FileNotFoundError:
                return None
            try:
                return self._opened(name)
            except (duckdb.IOException, FileNotFoundError):
                # Pruned between reading the pointer and opening it: the pointer has moved on.
                if attempt == _OPEN_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _opened(self, name: str) -> Snapshot:
        with self._open_lock:
            snap = self._open.get(name)
            if snap is None:
                snap = Snapshot(self.snapshots_dir / name)
                self._open[name] = snap
                # Keep the previous snapshot for readers still using it; forget older ones.
                for old in list(self._open)[:-2]:
                    del self._open[old]
            return snap


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
