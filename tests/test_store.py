"""The store: schema, idempotent upserts, snapshot publishing under concurrent readers (threads
and another process), pruning, crash leftovers, and the demo feed's incremental refresh."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from app.data.demo import DemoCity, DemoSpec
from app.data.geography import load_geography
from app.data.snapshot import Snapshot, query
from app.data.store import Store
from app.pipeline import build_demo, refresh
from conftest import snapshot_sql

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
UTC_TS = "TIMESTAMP WITH TIME ZONE"

#: The documented schema (app/data/schema.sql): every table with its columns in order.
COLUMNS: dict[str, list[str]] = {
    "request": [
        "id",
        "source",
        "source_id",
        "city",
        "ts",
        "category",
        "descriptor",
        "lon",
        "lat",
        "tract_id",
        "attrs",
        "valid_from",
        "valid_to",
        "area_id",  # a row known only by its neighborhood-level unit
    ],
    "incident": [
        "id",
        "source",
        "source_id",
        "city",
        "ts",
        "type",
        "severity",
        "lon",
        "lat",
        "tract_id",
        "attrs",
        "valid_from",
        "valid_to",
        "area_id",  # a row known only by its neighborhood-level unit
    ],
    "closure": [
        "id",
        "source",
        "source_id",
        "city",
        "start_ts",
        "end_ts",
        "kind",
        "description",
        "lon",
        "lat",
        "tract_id",
        "attrs",
        "valid_from",
        "valid_to",
        "area_id",  # a row known only by its neighborhood-level unit
    ],
    "geo_unit": ["city", "level", "unit_id", "name", "parent_id", "lon", "lat", "geom_wkb"],
    "anomaly": ["city", "level", "unit_id", "category", "window_start", "window_end", "zscore", "evidence"],
    "ingest_state": [
        "source",
        "cursor",
        "etag",
        "last_modified",
        "last_success",
        "consecutive_failures",
        "drift",
        "breaker_opened_at",
        "last_error",
        "rows_total",
        "unlocated_total",
    ],
    "snapshot_meta": ["key", "value"],
    # The release and the score of every cell, stored with the snapshot at publish time.
    "release_cell": ["city", "level", "grain", "unit_id", "parent_id", "category", "bin_start", "count", "suppressed", "partial"],
    "score_cell": [
        "city", "level", "grain", "unit_id", "category", "bin_start", "observed", "expected", "variance", "baseline_days",
        "scored", "reason", "p", "zscore", "q", "p_low", "z_low", "q_low",
    ],
    "release_meta": ["city", "mode", "k", "epsilon", "grains", "timezone", "history_start", "horizon", "computed_at"],
}  # fmt: skip
TIME_COLUMNS = {
    "ts", "start_ts", "end_ts", "valid_from", "valid_to", "window_start", "window_end", "last_success", "breaker_opened_at",
    "bin_start", "history_start", "horizon", "computed_at",
}  # fmt: skip


# ---- hand-made rows ----------------------------------------------------------------------------
def _events(table: str, n: int, start: int = 0, label: str = "A") -> pl.DataFrame:
    """``n`` rows of ``table`` with ids ``t:<start>..``; ``label`` fills the category-like column."""
    ids = [str(i) for i in range(start, start + n)]
    ts = pl.Series([T0 + timedelta(minutes=i) for i in range(start, start + n)], dtype=pl.Datetime("us", "UTC"))
    base = pl.DataFrame({"id": [f"t:{i}" for i in ids], "source": "t", "source_id": ids, "city": "nyc"}).with_columns(valid_from=ts)
    if table == "request":
        return base.with_columns(ts=ts, category=pl.lit(label))
    if table == "incident":
        return base.with_columns(ts=ts, type=pl.lit(label), severity=pl.lit(2, pl.Int16))
    return base.with_columns(start_ts=ts, end_ts=ts + timedelta(hours=3), kind=pl.lit(label))


_LABEL = {"request": "category", "incident": "type", "closure": "kind"}


def _current(store: Store) -> Snapshot:
    snap = store.current()
    assert snap is not None
    return snap


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


# ---- schema ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_columns(tiny_snap: Snapshot) -> pl.DataFrame:
    return snapshot_sql(
        tiny_snap.path, "SELECT table_name, column_name, data_type FROM information_schema.columns ORDER BY table_name, ordinal_position"
    )


@pytest.mark.parametrize("table", list(COLUMNS))
def test_schema_has_documented_columns(tiny_columns: pl.DataFrame, table: str) -> None:
    assert tiny_columns.filter(pl.col("table_name") == table)["column_name"].to_list() == COLUMNS[table]


@pytest.mark.parametrize(("table", "column"), [(t, c) for t, cols in COLUMNS.items() for c in cols if c in TIME_COLUMNS])
def test_time_columns_are_timestamptz(tiny_columns: pl.DataFrame, table: str, column: str) -> None:
    row = tiny_columns.filter((pl.col("table_name") == table) & (pl.col("column_name") == column))
    assert row["data_type"].to_list() == [UTC_TS]


def test_no_naive_timestamps_anywhere(tiny_columns: pl.DataFrame) -> None:
    assert tiny_columns.filter(pl.col("data_type").str.starts_with("TIMESTAMP") & (pl.col("data_type") != UTC_TS)).height == 0


def test_timestamps_are_stored_and_read_as_utc(tmp_path: Path) -> None:
    store = Store(tmp_path)
    local = datetime(2026, 1, 1, 12, tzinfo=ZoneInfo("America/New_York"))  # 17:00 UTC
    frame = _events("request", 1).with_columns(ts=pl.Series([local], dtype=pl.Datetime("us", "America/New_York")))
    with store.writer() as con:
        store.upsert(con, "request", frame)
    snap = store.publish()
    events = snap.events("nyc")
    assert events.schema["ts"] == pl.Datetime("us", "UTC")
    assert events["ts"].to_list() == [datetime(2026, 1, 1, 17, tzinfo=UTC)]
    text, tz = snapshot_sql(snap.path, "SELECT ts::VARCHAR AS s, current_setting('TimeZone') AS tz FROM request").row(0)
    assert text == "2026-01-01 17:00:00+00"
    assert tz in {"UTC", "Etc/UTC"}


# ---- upsert ------------------------------------------------------------------------------------
@pytest.mark.parametrize("table", ["request", "incident", "closure"])
def test_upsert_is_idempotent_on_id(tmp_path: Path, table: str) -> None:
    store = Store(tmp_path)
    frame = _events(table, 20)
    with store.writer() as con:
        assert store.upsert(con, table, frame) == 20
        store.upsert(con, table, frame)
        store.upsert(con, table, frame.reverse())
        assert _count(con, table) == 20


@pytest.mark.parametrize("table", ["request", "incident", "closure"])
def test_upsert_replaces_updated_rows_and_adds_new_ones(tmp_path: Path, table: str) -> None:
    store = Store(tmp_path)
    label = _LABEL[table]
    with store.writer() as con:
        store.upsert(con, table, _events(table, 10))
        # Rows 5..14: 5..9 exist and change their label, 10..14 are new.
        store.upsert(con, table, _events(table, 10, start=5, label="B"))
        rows = query(con, f"SELECT source_id, {label} AS label FROM {table} ORDER BY source_id::INT")
    assert rows["source_id"].to_list() == [str(i) for i in range(15)]
    assert rows["label"].to_list() == ["A"] * 5 + ["B"] * 10


def test_upsert_of_empty_frame_is_a_no_op(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.writer() as con:
        assert store.upsert(con, "request", _events("request", 0)) == 0
        assert _count(con, "request") == 0


# ---- publishing under concurrent readers -------------------------------------------------------
def _state(snap: Snapshot) -> tuple[tuple[str, int], ...]:
    counts = {**snap.row_counts(), "ingest_state": snap.ingest_state().height}
    return tuple(sorted(counts.items()))


_READER_SCRIPT = """
import json, sys, time
from pathlib import Path
from app.data.store import Store
store, out, stop = Store(Path(sys.argv[1])), open(sys.argv[2], "w"), Path(sys.argv[3])
while not stop.exists():
    try:
        snap = store.current()
        counts = {**snap.row_counts(), "ingest_state": snap.ingest_state().height}
        out.write(json.dumps(sorted(counts.items())) + "\\n")
    except Exception as exc:
        out.write(json.dumps({"error": repr(exc)}) + "\\n")
    out.flush()
"""


def _wait_for(cond: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.02)


def test_readers_never_see_a_half_published_state(tmp_path: Path) -> None:
    """A reader thread and a reader process loop over ``current()`` while the writer publishes."""
    store = Store(tmp_path, keep=3)
    publishes = 6

    def add_rows(step: int) -> None:
        with store.writer() as con:
            store.upsert(con, "request", _events("request", 40 * step + 10, start=0))
            store.upsert(con, "incident", _events("incident", step + 1))
            store.upsert(con, "closure", _events("closure", 3 * step))
            con.execute("INSERT INTO ingest_state (source) VALUES ($s)", {"s": f"src{step}"})

    add_rows(0)
    published = {_state(store.publish({"step": "0"}))}

    seen: list[tuple[tuple[str, int], ...]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read_loop() -> None:
        reader = Store(tmp_path)  # its own instance, as another server worker would have
        while not stop.is_set():
            try:
                snap = reader.current()
                assert snap is not None
                seen.append(_state(snap))
            except BaseException as exc:
                errors.append(exc)
                return

    out, stop_file = tmp_path / "reader.jsonl", tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, "-c", _READER_SCRIPT, str(tmp_path), str(out), str(stop_file)], cwd=ROOT)
    thread = threading.Thread(target=read_loop, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: bool(errors) or (bool(seen) and out.exists() and out.stat().st_size > 0))
        for step in range(1, publishes):
            add_rows(step)
            published.add(_state(store.publish({"step": str(step)})))
            time.sleep(0.15)  # let both readers loop over this snapshot
        final = _state(store.publish({"step": "again"}))  # same rows, new file
        # Both readers carry on until they have seen the final state (a dead reader ends the wait).
        _wait_for(lambda: bool(errors) or seen[-1] == final)
        _wait_for(lambda: proc.poll() is not None or out.read_text().endswith(json.dumps([list(kv) for kv in final]) + "\n"))
    finally:
        stop.set()
        stop_file.touch()
        thread.join(30)
        proc.wait(30)

    assert errors == []
    assert len(published) == publishes
    assert set(seen) <= published
    assert len(set(seen)) > 1
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line for line in lines if isinstance(line, dict)] == []
    seen_by_process = {tuple(tuple(kv) for kv in line) for line in lines}
    assert seen_by_process <= published
    assert len(seen_by_process) > 1
    assert proc.returncode == 0


def test_prune_keeps_newest_and_old_readers_keep_reading(tmp_path: Path) -> None:
    store = Store(tmp_path, keep=2)
    snaps = []
    for step in range(4):
        with store.writer() as con:
            store.upsert(con, "request", _events("request", 5, start=5 * step))
        snaps.append(store.publish())
        time.sleep(0.002)  # distinct snapshot ids even on a coarse clock
    first = snaps[0]
    assert not first.path.exists()
    assert sorted(p.name for p in store.snapshots_dir.glob("*.duckdb")) == sorted(s.path.name for s in snaps[-2:])
    assert (tmp_path / "CURRENT").read_text().strip() == snaps[-1].path.name
    # The first reader's file is gone from the directory, but its open snapshot still answers.
    assert first.row_counts()["request"] == 5
    assert first.events("nyc").height == 5
    assert _current(Store(tmp_path)).row_counts()["request"] == 20


@pytest.mark.parametrize("leftovers", [("snapshot",), ("pointer",), ("snapshot", "pointer")])
def test_crash_leftovers_do_not_affect_readers_and_are_cleaned(tmp_path: Path, leftovers: tuple[str, ...]) -> None:
    store = Store(tmp_path)
    with store.writer() as con:
        store.upsert(con, "request", _events("request", 7))
    published = store.publish()
    # What a publish killed half-way leaves: a partial copy and/or an unswapped pointer.
    partial = store.snapshots_dir / "29991231T235959999999Z.tmp"
    pointer_tmp = tmp_path / "CURRENT.tmp"
    if "snapshot" in leftovers:
        partial.write_bytes(b"\0" * 4096)
    if "pointer" in leftovers:
        pointer_tmp.write_text(partial.with_suffix(".duckdb").name + "\n")
    reader = _current(Store(tmp_path))
    assert reader.path == published.path
    assert reader.row_counts()["request"] == 7

    with store.writer() as con:
        store.upsert(con, "request", _events("request", 3, start=7))
    after = store.publish()
    assert not partial.exists()
    assert not pointer_tmp.exists()
    assert list(store.snapshots_dir.glob("*.tmp")) == []
    assert _current(Store(tmp_path)).row_counts()["request"] == 10
    assert after.path.exists()
    assert reader.row_counts()["request"] == 7


def test_publish_without_working_database_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Store(tmp_path).publish()
    assert Store(tmp_path).current() is None


# ---- refresh of the demo feed ------------------------------------------------------------------
FEED = DemoSpec(seed=5, end=datetime(2026, 9, 1, tzinfo=UTC), days=30, size=20_000)


@pytest.fixture(scope="module")
def feed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("feed")
    build_demo(Store(data_dir), FEED)
    return data_dir


@pytest.fixture
def feed_store(feed_dir: Path, tmp_path: Path) -> Store:
    """A private copy of the built demo store (refresh writes to it)."""
    shutil.copytree(feed_dir, tmp_path / "data")
    return Store(tmp_path / "data")


_TABLE_TS = {"request": "ts", "incident": "ts", "closure": "start_ts"}


def _rows(snap: Snapshot, table: str) -> pl.DataFrame:
    rows = snapshot_sql(snap.path, f"SELECT * FROM {table} ORDER BY id")
    # DuckDB names the session zone 'Etc/UTC'; the generator says 'UTC' (the same instants).
    return rows.with_columns(pl.col(pl.Datetime).dt.convert_time_zone("UTC"))


def _cursor(snap: Snapshot) -> datetime:
    return datetime.fromisoformat(snap.ingest_state().filter(pl.col("source") == "demo")["cursor"].item())


@pytest.mark.parametrize("hours", [5, 30])
def test_refresh_adds_exactly_the_new_events(feed_store: Store, hours: int) -> None:
    before = _current(feed_store)
    assert _cursor(before) == FEED.end
    now = FEED.end + timedelta(hours=hours)
    expected = DemoCity(FEED, load_geography("nyc")).generate(FEED.end, now)
    assert sum(f.height for f in expected.values()) > 0

    after = refresh(feed_store, now=now)
    assert after is not None
    assert after.path != before.path
    assert _cursor(after) == now
    for table, frame in expected.items():
        old, new = _rows(before, table), _rows(after, table)
        added = new.join(old.select("id"), on="id", how="anti").sort("id")
        assert set(added["id"]) == set(frame["id"])
        assert new.height == old.height + frame.height
        # The added rows are the generated ones, value for value.
        cols = ["id", _TABLE_TS[table], "tract_id", "lon", "lat"]
        assert_frame_equal(added.select(cols), frame.select(cols).sort("id"))
        # Nothing that was there changed.
        assert_frame_equal(new.join(old.select("id"), on="id", how="semi").sort("id"), old)

    again = refresh(feed_store, now=now)
    assert again is not None
    assert again.row_counts() == after.row_counts()
    assert _cursor(again) == now


def test_refresh_in_steps_equals_refresh_in_one_go(feed_dir: Path, tmp_path: Path) -> None:
    stores = []
    for name in ("steps", "one_go"):
        shutil.copytree(feed_dir, tmp_path / name)
        stores.append(Store(tmp_path / name))
    for hours in (1, 2, 7, 26):
        refresh(stores[0], now=FEED.end + timedelta(hours=hours))
    refresh(stores[1], now=FEED.end + timedelta(hours=26))
    a, b = _current(stores[0]), _current(stores[1])
    for table in _TABLE_TS:
        assert_frame_equal(_rows(a, table), _rows(b, table))
