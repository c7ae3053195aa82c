"""Orchestration, the one place that runs data -> engine -> store: build the demo city, poll the
registered sources, recompute anomalies and publish a snapshot. Used by the CLI and the scheduler.

    python -m app.pipeline demo [--size N] [--seed S] [--end ISO] [--days D] [--force]
    python -m app.pipeline refresh
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import duckdb
import httpx
import polars as pl
import structlog

from app.config import Settings, get_settings
from app.data.demo import DemoCity, DemoSpec, floor_hour
from app.data.demo_feed import DemoSource, Source
from app.data.geography import load_geography, tract_parents
from app.data.ingest import IngestReport, ingest_source
from app.data.registry import SourceSpec, get_source
from app.data.snapshot import Snapshot, query, read_events, read_units
from app.data.store import Store
from app.engine.attribution import rounded_drivers
from app.engine.baselines import BASELINE
from app.engine.bins import cube_counts
from app.engine.detect import detect
from app.engine.evaluate import history_start
from app.engine.explain import explain

__all__ = ["PLANTED_FILE", "build_demo", "ingest_live", "publish", "recompute_anomalies", "refresh", "registered_sources"]

log = structlog.get_logger(__name__)
PLANTED_FILE = "planted_anomalies.csv"
_ANOMALY_LEVELS = ("tract", "neighborhood")
_ANOMALY_DAYS = 14


def build_demo(store: Store, spec: DemoSpec, force: bool = False) -> Snapshot:
    """Build the demo city into ``store`` and publish it (unless a snapshot exists and not ``force``)."""
    current = store.current()
    if current is not None and not force:
        log.info("demo.exists", snapshot=current.id)
        return current
    t0 = time.perf_counter()
    geo = load_geography("nyc")
    city = DemoCity(spec, geo)
    frames = city.generate(spec.start, spec.end)
    source = DemoSource(spec)
    with store.writer() as con:
        for table in ("request", "incident", "closure", "anomaly", "geo_unit", "ingest_state", "snapshot_meta"):
            con.execute(f"DELETE FROM {table}")
        store.upsert(con, "geo_unit", geo.units)
        for kind, frame in frames.items():
            store.upsert(con, kind, frame.drop("planted"))
        _set_state(con, source.name, cursor=spec.end, ok=True)
        con.executemany("INSERT OR REPLACE INTO snapshot_meta VALUES (?, ?)", list(source.to_meta().items()))
        recompute_anomalies(con, "nyc")
    truth = _ground_truth(city, frames)
    store.data_dir.mkdir(parents=True, exist_ok=True)
    truth.write_csv(store.data_dir / PLANTED_FILE)
    snap = store.publish({"built_by": "demo"})
    log.info(
        "demo.built",
        snapshot=snap.id,
        events=sum(f.height for f in frames.values()),
        planted=truth.height,
        seconds=round(time.perf_counter() - t0, 2),
    )
    return snap


def _ground_truth(city: DemoCity, frames: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """The plan with the number of events each planted anomaly really added or relabelled."""
    realised = pl.concat([f.select("planted") for f in frames.values()]).drop_nulls().group_by("planted").len()
    plan = city.planted.join(realised.rename({"planted": "anomaly_id", "len": "events"}), on="anomaly_id", how="left")
    return plan.with_columns(pl.col("events").fill_null(0)).drop("start_day", "end_day", "start_hour", "end_hour")


def registered_sources(store: Store) -> list[Source]:
    """Sources recorded in the store (today: the demo feed, when the store was built from it)."""
    snap = store.current()
    demo = DemoSource.from_meta(snap.meta) if snap is not None else None
    return [demo] if demo is not None else []


def refresh(store: Store, now: datetime | None = None, live_sources: Sequence[str] = ()) -> Snapshot | None:
    """One poll: the demo feed up to ``now`` and each named registry source from its cursor, then
    recompute anomalies of the touched cities and publish. The CLI and the scheduler both use it."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    demo = registered_sources(store)
    cities: set[str] = set()
    if demo:
        with store.writer() as con:
            for source in demo:
                _pull_demo(store, con, source, now)
        cities |= {s.city for s in demo}
    for name in live_sources:
        spec = get_source(name)
        asyncio.run(ingest_live(store, spec))
        cities.add(spec.city)
    if not cities:
        return store.current()
    return publish(store, cities, built_by="refresh")


def _pull_demo(store: Store, con: duckdb.DuckDBPyConnection, source: Source, now: datetime) -> None:
    state = query(con, 'SELECT "cursor" FROM ingest_state WHERE source = $s', {"s": source.name})
    since = datetime.fromisoformat(state["cursor"][0]) if state.height and state["cursor"][0] else now - timedelta(days=1)
    if since >= now:
        return
    try:
        frames = source.pull(since, now)
        for table, frame in frames.items():
            store.upsert(con, table, frame)
        _set_state(con, source.name, cursor=now, ok=True)
        log.info(
            "source.polled", source=source.name, since=since.isoformat(), until=now.isoformat(), rows=sum(f.height for f in frames.values())
        )
    except Exception:
        log.exception("source.failed", source=source.name)
        _set_state(con, source.name, cursor=None, ok=False)


async def ingest_live(
    store: Store, spec: SourceSpec, since: str | None = None, on_page: Callable[[int], None] | None = None
) -> IngestReport:
    """Ingest one registry source over the network with the process' HTTP settings."""
    settings = get_settings()
    async with httpx.AsyncClient(
        timeout=settings.http_timeout, headers={"User-Agent": "city-service-heat/0.1"}, follow_redirects=True
    ) as client:
        return await ingest_source(store, spec, client, since=since, on_page=on_page)


def publish(store: Store, cities: set[str], built_by: str) -> Snapshot:
    """Recompute the anomalies of ``cities`` in the working database and publish a snapshot."""
    with store.writer() as con:
        for city in sorted(cities):
            recompute_anomalies(con, city)
    return store.publish({"built_by": built_by})


def recompute_anomalies(con: duckdb.DuckDBPyConnection, city: str, days: int = _ANOMALY_DAYS) -> int:
    """Replace ``city``'s stored anomalies with those of the last ``days`` days (daily bins,
    tract and neighborhood levels, the engine's default thresholds; one false-discovery family
    per week, like the lens' default 7-day window)."""
    events = read_events(con, city)
    con.execute("DELETE FROM anomaly WHERE city = $city", {"city": city})
    if events.height == 0:
        return 0
    rows = anomaly_rows(events, read_units(con, city), city, days)
    if rows.height:
        con.register("_anomalies", rows.to_arrow())
        con.execute("INSERT INTO anomaly BY NAME SELECT * FROM _anomalies")
        con.unregister("_anomalies")
    return rows.height


def anomaly_rows(events: pl.DataFrame, units: pl.DataFrame, city: str, days: int = _ANOMALY_DAYS) -> pl.DataFrame:
    """The anomaly table rows of the last ``days`` days of ``events`` (weekly families, newest first).

    The stored table is internal (raw evidence, no narrative): whatever leaves the process reads it
    back through the privacy gate."""
    last = events["ts"].max()
    first = events["ts"].min()
    assert isinstance(last, datetime)
    assert isinstance(first, datetime)
    until = last.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    earliest = history_start(first) + BASELINE
    parents = tract_parents(units)
    start = max(until - timedelta(days=days), earliest)
    cube = cube_counts(events.filter(pl.col("ts") >= start - BASELINE), parents, "day", (*_ANOMALY_LEVELS, "borough", "city"))
    n_units = {lvl: units.filter(pl.col("level") == lvl).height for lvl in _ANOMALY_LEVELS}
    frames = []
    hi = until
    while hi > start:
        lo = max(hi - timedelta(days=7), start)
        run = detect(cube, n_units, _ANOMALY_LEVELS, lo, hi)
        frames.append(explain(run, run.anomalies))
        hi = lo
    found = pl.concat([f for f in frames if f.height], how="diagonal_relaxed") if any(f.height for f in frames) else pl.DataFrame()
    if found.height == 0:
        return pl.DataFrame()
    evidence = pl.struct(
        observed="observed",
        expected=pl.col("expected").round(3),
        variance=pl.col("variance").round(3),
        # Sums run in parallel, so the last digits of floats may differ between runs: round them.
        p=pl.col("p").round_sig_figs(6),
        q=pl.col("q").round_sig_figs(6),
        baseline_start=pl.col("baseline_start").dt.to_string("%Y-%m-%dT%H:%M:%SZ"),
        baseline_end=pl.col("baseline_end").dt.to_string("%Y-%m-%dT%H:%M:%SZ"),
        bin=pl.lit("day"),
        effect="effect",
        share=pl.col("share").round(4),
        drivers=rounded_drivers(excess_digits=3),
    )
    return found.sort("level", "unit_id", "category", "bin_start").select(
        pl.lit(city).alias("city"),
        "level",
        "unit_id",
        "category",
        pl.col("bin_start").alias("window_start"),
        pl.col("bin_end").alias("window_end"),
        pl.col("zscore").round(6),
        evidence.struct.json_encode().alias("evidence"),
    )


def _set_state(con: duckdb.DuckDBPyConnection, source: str, cursor: datetime | None, ok: bool) -> None:
    con.execute("INSERT INTO ingest_state (source) VALUES ($s) ON CONFLICT DO NOTHING", {"s": source})
    if ok:
        con.execute(
            'UPDATE ingest_state SET "cursor" = $c, last_success = now(), consecutive_failures = 0 WHERE source = $s',
            {"s": source, "c": cursor.isoformat() if cursor else None},
        )
    else:
        con.execute("UPDATE ingest_state SET consecutive_failures = consecutive_failures + 1 WHERE source = $s", {"s": source})


def main(argv: list[str] | None = None, settings: Settings | None = None) -> None:
    """CLI entry point (see the module docstring)."""
    settings = settings or get_settings()
    parser = argparse.ArgumentParser(
        prog="python -m app.pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build the demo city snapshot if missing")
    demo.add_argument("--size", type=int, default=settings.demo_size, help="target number of events")
    demo.add_argument("--seed", type=int, default=settings.demo_seed)
    demo.add_argument("--days", type=int, default=settings.demo_days)
    demo.add_argument("--end", type=datetime.fromisoformat, default=None, help="end time (UTC ISO); default: now, floored to the hour")
    demo.add_argument("--force", action="store_true", help="rebuild even if a snapshot exists")
    sub.add_parser("refresh", help="poll sources, recompute anomalies, publish")
    args = parser.parse_args(argv)
    store = Store(settings.data_dir, keep=settings.keep_snapshots)
    snap: Snapshot | None
    if args.command == "demo":
        end = floor_hour(args.end.replace(tzinfo=args.end.tzinfo or UTC) if args.end else datetime.now(UTC))
        snap = build_demo(store, DemoSpec(args.seed, end, args.days, args.size), force=args.force)
    else:
        snap = refresh(store)
    print(json.dumps({"snapshot": snap.id if snap else None, "rows": snap.row_counts() if snap else {}}))


if __name__ == "__main__":
    main()
