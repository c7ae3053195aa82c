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
from app.data.demo_feed import DEMO_SOURCE, DemoSource, Source
from app.data.geography import LEVELS, load_geography
from app.data.ingest import IngestReport, ingest_source
from app.data.registry import SourceSpec, city_timezone, get_source
from app.data.snapshot import Snapshot, query, read_events, read_units
from app.data.store import Store
from app.engine.dp_publish import series_key
from app.engine.grains import DEFAULT_GRAINS, GRAINS, bin_expr, check_grains, grain_rank, parse_grains
from app.engine.ledger import LEDGER_FILE, BudgetExceeded, BudgetLedger
from app.engine.privacy import Policy
from app.engine.publish import Published, publish_city
from app.engine.scores import DEFAULT_MIN_Z, DEFAULT_Q
from app.engine.suppression import UnprotectedCells

__all__ = ["PLANTED_FILE", "build_demo", "ingest_live", "publish", "recompute_anomalies", "refresh", "registered_sources"]

log = structlog.get_logger(__name__)
PLANTED_FILE = "planted_anomalies.csv"


def build_demo(store: Store, spec: DemoSpec, force: bool = False, settings: Settings | None = None) -> Snapshot:
    """Build the demo city into ``store`` and publish it (unless a snapshot exists and not ``force``);
    ``settings`` give the release rule (default: the process settings)."""
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
        # a new demo dataset: the noisy bins of the one it replaces must not be re-served for it
        ((settings or get_settings()).data_dir / LEDGER_FILE).unlink(missing_ok=True)
        store.upsert(con, "geo_unit", geo.units)
        for kind, frame in frames.items():
            store.upsert(con, kind, frame.drop("planted"))
        _set_state(con, source.name, cursor=spec.end, ok=True)
        con.executemany("INSERT OR REPLACE INTO snapshot_meta VALUES (?, ?)", list(source.to_meta().items()))
        recompute_anomalies(con, "nyc", settings)
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


def publish(store: Store, cities: set[str], built_by: str, settings: Settings | None = None) -> Snapshot:
    """Publish the release and scores of ``cities`` in the working database, then a snapshot. A
    ``dp`` city whose new release would go over the privacy budget keeps its previous release
    (nothing of the refused one is recorded or written) and the other cities are published."""
    with store.writer() as con:
        for city in sorted(cities):
            try:
                recompute_anomalies(con, city, settings)
            except BudgetExceeded as err:
                log.error("release.refused", city=city, reason=str(err))
    return store.publish({"built_by": built_by})


def recompute_anomalies(
    con: duckdb.DuckDBPyConnection, city: str, settings: Settings | None = None, horizon: datetime | None = None
) -> int:
    """Publish ``city``'s release and the score of every cell into the working database (the
    next snapshot carries them); returns the number of released anomalies at the default
    thresholds, which are also kept in the ``anomaly`` table for quick listing."""
    settings = settings or get_settings()
    events = read_events(con, city)
    units = read_units(con, city)
    tz = city_timezone(city)
    policy = Policy(settings.privacy_mode, settings.privacy_k, epsilon=settings.privacy_epsilon)
    horizon = horizon or _horizon(con, city)
    t0 = time.perf_counter()
    spent: dict[str, float] = {}
    if policy.mode == "dp":
        published = _publish_dp(events, units, city, tz, policy, horizon, parse_grains(settings.grains), settings, spent)
    else:
        published = _publish_coarsening(events, units, tz, policy, horizon, parse_grains(settings.grains))
    meta: dict[str, object] = {
        "mode": policy.mode,
        "k": policy.k,
        "epsilon": policy.epsilon if policy.mode == "dp" else None,
        "grains": json.dumps(
            {"grains": published.grains, "complete_until": {k: v.isoformat() for k, v in published.complete_until.items()}, **spent}
        ),
        "timezone": tz,
        "history_start": published.history_start,
        "horizon": published.horizon,
    }
    Store.replace_release(con, city, published.release, published.scores, meta)
    rows = anomaly_rows(published.scores, city, tz)
    con.execute("DELETE FROM anomaly WHERE city = $city", {"city": city})
    if rows.height:
        con.register("_anomalies", rows.to_arrow())
        con.execute("INSERT INTO anomaly BY NAME SELECT * FROM _anomalies")
        con.unregister("_anomalies")
    log.info(
        "release.published",
        city=city,
        cells=published.release.height,
        scored=published.scores.height,
        seconds=round(time.perf_counter() - t0, 2),
    )
    return rows.height


def _publish_coarsening(
    events: pl.DataFrame, units: pl.DataFrame, tz: str, policy: Policy, horizon: datetime | None, grains: dict[str, str] | None
) -> Published:
    """:func:`publish_city`, and when the audit cannot protect some withheld cell at these grains,
    again with every level one grain coarser (to weeks at most): a release is never published with
    an unprotected cell, and a city is not left without a release when a coarser one is safe."""
    while True:
        try:
            return publish_city(events, units, tz, policy, horizon=horizon, grains=grains)
        except UnprotectedCells as err:
            used = err.grains
            coarser = {lvl: GRAINS[min(grain_rank(g) + 1, len(GRAINS) - 1)] for lvl, g in used.items()}
            if coarser == used:
                raise
            log.warning("release.coarsened", reason=str(err), grains=coarser)
            grains = coarser


def _publish_dp(
    events: pl.DataFrame,
    units: pl.DataFrame,
    city: str,
    tz: str,
    policy: Policy,
    horizon: datetime | None,
    grains: dict[str, str] | None,
    settings: Settings,
    spent: dict[str, float],
) -> Published:
    """The ``dp`` publish: the ledger's released bins re-served, the new ones noised, recorded and
    charged before anything is published (:class:`app.engine.ledger.BudgetExceeded` leaves the
    city's previous release in place). ``spent`` receives the ε at the city's most-charged instant
    and the budget, which the snapshot carries (the server never opens the ledger)."""
    present = [lvl for lvl in LEVELS if units.filter(pl.col("level") == lvl).height]
    chosen = check_grains(grains or DEFAULT_GRAINS, present)
    with BudgetLedger(settings.data_dir / LEDGER_FILE, budget=settings.privacy_budget) as ledger:
        series = series_key(policy, chosen, present)
        published = publish_city(events, units, tz, policy, horizon=horizon, grains=chosen, stored=ledger.published(city, series, chosen))
        if published.dp is not None:
            ledger.record(city, series, published.grains, published.dp.new, published.dp.new_bins, published.dp.epsilon)
        spent.update(epsilon_spent=ledger.peak(city), privacy_budget=ledger.budget)
    return published


def _horizon(con: duckdb.DuckDBPyConnection, city: str) -> datetime | None:
    """Up to when ``city``'s data are complete: the demo feed's cursor when it has one, else the
    newest event (the bin holding it is still filling)."""
    if city != DemoSource.city:
        return None
    state = query(con, 'SELECT "cursor" FROM ingest_state WHERE source = $s', {"s": DEMO_SOURCE})
    if state.height and state["cursor"][0]:
        return datetime.fromisoformat(state["cursor"][0])
    return None


def anomaly_rows(scores: pl.DataFrame, city: str, tz: str = "UTC") -> pl.DataFrame:
    """Released anomalies at the default thresholds (q <= 0.05, z >= 3), for the ``anomaly`` table;
    each window is its bin (a local day or week ends at the next local midnight of ``tz``)."""
    if scores.height == 0:
        return pl.DataFrame()
    found = scores.filter(pl.col("scored") & (pl.col("q") <= DEFAULT_Q) & (pl.col("zscore") >= DEFAULT_MIN_Z))
    evidence = pl.struct(
        "grain",
        "observed",
        expected=pl.col("expected").round(3),
        variance=pl.col("variance").round(3),
        p=pl.col("p").round_sig_figs(6),
        q=pl.col("q").round_sig_figs(6),
        baseline_days="baseline_days",
    )
    return found.sort("level", "unit_id", "category", "bin_start").select(
        pl.lit(city).alias("city"),
        "level",
        "unit_id",
        "category",
        pl.col("bin_start").alias("window_start"),
        _bin_end(tz).alias("window_end"),
        pl.col("zscore").round(6),
        evidence.struct.json_encode().alias("evidence"),
    )


def _bin_end(tz: str) -> pl.Expr:
    """The end of each row's ``grain`` bin starting at ``bin_start`` (hours are UTC hours; days
    and weeks end at the next local midnight, 23 or 25 hours later on daylight-saving changes)."""
    start, grain = pl.col("bin_start"), pl.col("grain")
    return (
        pl.when(grain == "hour")
        .then(start + timedelta(hours=1))
        .when(grain == "day")
        .then(bin_expr(start + timedelta(days=1, hours=12), "day", tz))
        .otherwise(bin_expr(start + timedelta(weeks=1, hours=12), "week", tz))
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
