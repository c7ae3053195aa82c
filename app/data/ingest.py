"""The ingest loop shared by the CLI and the scheduler: pages from an adapter -> canonical rows ->
point-in-tract join -> idempotent upsert, with the cursor committed in the same transaction.

A per-source circuit breaker (state in ``ingest_state``) stops hammering a failing provider: after
``failures`` consecutive failed runs it opens; after ``cooldown`` one probe run is let through
(half-open); a success closes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import httpx
import numpy as np
import polars as pl
import structlog

from app.data.contract import CONTRACTS_DIR, detect_drift, load_contract
from app.data.geography import locate
from app.data.registry import SourceSpec
from app.data.snapshot import query
from app.data.sources import IngestCursor, RawPage, adapter_for
from app.data.store import Store
from app.metrics import BREAKER_OPEN, INGEST_FAILURES, INGEST_ROWS, INGEST_UNLOCATED, SCHEMA_DRIFT

__all__ = ["Breaker", "IngestReport", "canonical_rows", "commit_page", "ingest_source", "read_state"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Breaker:
    """Open after ``failures`` consecutive failed runs; probe again after ``cooldown``."""

    failures: int = 5
    cooldown: timedelta = timedelta(minutes=15)


@dataclass
class IngestReport:
    """What one run did."""

    source: str
    pages: int = 0
    rows: int = 0
    unlocated: int = 0
    rejected: int = 0
    not_modified: bool = False
    skipped_open_breaker: bool = False
    drift: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


def read_state(con: duckdb.DuckDBPyConnection, source: str) -> dict[str, Any]:
    """The source's ingest_state row (a fresh one when it has none yet)."""
    con.execute("INSERT INTO ingest_state (source) VALUES ($s) ON CONFLICT DO NOTHING", {"s": source})
    rows = query(con, "SELECT * FROM ingest_state WHERE source = $s", {"s": source}).to_dicts()
    return rows[0]


def canonical_rows(spec: SourceSpec, frame: pl.DataFrame, now: datetime) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Adapter output -> store rows: ids, source, city, tract join, validity; also the geo units the
    rows need and how many rows were rejected for having no time (the one column we cannot guess)."""
    time_col = "start_ts" if spec.table == "closure" else "ts"
    cat_col = {"request": "category", "incident": "type", "closure": "kind"}[spec.table]
    rejected = frame.filter(pl.col(time_col).is_null() | pl.col("source_id").is_null()).height
    frame = frame.filter(pl.col(time_col).is_not_null() & pl.col("source_id").is_not_null())
    if frame["source_id"].n_unique() < frame.height:  # a page rarely repeats an id; the check is far cheaper than unique
        frame = frame.unique("source_id", keep="last", maintain_order=True)
    lon = frame["lon"].fill_null(np.nan).to_numpy().astype(np.float64)
    lat = frame["lat"].fill_null(np.nan).to_numpy().astype(np.float64)
    tract_ids, units = locate(spec.city, lon, lat)
    out = frame.with_columns(
        pl.col(cat_col).fill_null("Unspecified"),
        source=pl.lit(spec.name),
        city=pl.lit(spec.city),
        id=pl.concat_str(pl.lit(spec.name + ":"), pl.col("source_id")),
        tract_id=pl.Series(tract_ids.tolist(), dtype=pl.String),
        valid_from=pl.lit(now, pl.Datetime("us", "UTC")),
        valid_to=pl.lit(None, pl.Datetime("us", "UTC")),
    )
    return out.with_columns(area_id=_area_ids(spec, out)), units, rejected


def _area_ids(spec: SourceSpec, frame: pl.DataFrame) -> pl.Series:
    """The neighborhood-level unit named by ``spec.fields.area`` for rows that no tract holds (an
    integral number loses its ``.0``, as boundary ids do); null elsewhere."""
    field = spec.fields.area
    if field is None or "attrs" not in frame.columns:
        return pl.Series("area_id", [None] * frame.height, dtype=pl.String)
    raw = frame["attrs"].str.json_path_match(f"$.{field}").str.strip_chars()
    as_int = raw.cast(pl.Float64, strict=False)
    ids = pl.select(
        pl.when(as_int.is_not_null() & (as_int == as_int.floor())).then(as_int.cast(pl.Int64).cast(pl.String)).otherwise(raw)
    ).to_series()
    return pl.select(pl.when(frame["tract_id"].is_null()).then(ids.replace("", None))).to_series().alias("area_id")


async def ingest_source(
    store: Store,
    spec: SourceSpec,
    client: httpx.AsyncClient,
    since: str | None = None,
    breaker: Breaker | None = None,
    on_page: Callable[[int], None] | None = None,
) -> IngestReport:
    """Pull what is new for ``spec`` into the working database (no snapshot is published here)."""
    breaker = breaker or Breaker()
    report = IngestReport(spec.name)
    adapter = adapter_for(spec)
    schema = _contract_for(spec)
    with store.writer() as con:
        state = read_state(con, spec.name)
        now = datetime.now(UTC)
        opened = state["breaker_opened_at"]
        if opened is not None and now - opened < breaker.cooldown:
            report.skipped_open_breaker = True
            log.warning("ingest.breaker_open", source=spec.name, opened_at=opened.isoformat())
            return report
        cursor = IngestCursor(state["cursor"], state["etag"], state["last_modified"])
        try:
            async for page in adapter.pages(client, cursor, since):
                if page.not_modified:
                    report.not_modified = True
                    break
                if schema is not None and page.rows:
                    _merge_drift(report.drift, detect_drift(schema, page.rows))
                rows, units, rejected = canonical_rows(spec, adapter.normalize(page.rows), now)
                unlocated = commit_page(con, store, spec, rows, units, page)
                report.pages += 1
                report.rows += rows.height
                report.unlocated += unlocated
                report.rejected += rejected
                INGEST_ROWS.labels(spec.name).inc(rows.height)
                INGEST_UNLOCATED.labels(spec.name).inc(unlocated)
                if on_page is not None:
                    on_page(rows.height)
        except Exception as exc:
            report.error = f"{type(exc).__name__}: {exc}"
            failures = int(state["consecutive_failures"] or 0) + 1
            open_now = failures >= breaker.failures
            con.execute(
                "UPDATE ingest_state SET consecutive_failures = $f, last_error = $err, breaker_opened_at = CASE WHEN $o THEN now() ELSE NULL END WHERE source = $s",
                {"f": failures, "err": report.error[:500], "o": open_now, "s": spec.name},
            )
            BREAKER_OPEN.labels(spec.name).set(1 if open_now else 0)
            INGEST_FAILURES.labels(spec.name).inc()
            log.error("ingest.failed", source=spec.name, failures=failures, breaker_open=open_now, error=report.error)
            return report
        drift = json.dumps(report.drift) if any(report.drift.values()) else None
        con.execute(
            "UPDATE ingest_state SET last_success = now(), consecutive_failures = 0, breaker_opened_at = NULL, last_error = NULL, drift = $d WHERE source = $s",
            {"d": drift, "s": spec.name},
        )
        BREAKER_OPEN.labels(spec.name).set(0)
        for kind, fields in report.drift.items():
            SCHEMA_DRIFT.labels(spec.name, kind).set(len(fields))
    log.info(
        "ingest.done",
        source=spec.name,
        pages=report.pages,
        rows=report.rows,
        unlocated=report.unlocated,
        rejected=report.rejected,
        drift=report.drift,
    )
    return report


def commit_page(
    con: duckdb.DuckDBPyConnection, store: Store, spec: SourceSpec, rows: pl.DataFrame, units: pl.DataFrame, page: RawPage | None = None
) -> int:
    """Upsert one page of store rows with its units, totals and (for a provider page) its cursor and
    validators, all in one transaction; returns how many rows are unlocated. File imports pass no page."""
    with _transaction(con):
        _ensure_units(con, store, spec.city, units)
        store.upsert(con, spec.table, rows)
        unlocated = rows.filter(pl.col("tract_id").is_null()).height
        con.execute(
            """UPDATE ingest_state SET "cursor" = coalesce($c, "cursor"), etag = coalesce($e, etag),
               last_modified = coalesce($lm, last_modified), rows_total = coalesce(rows_total, 0) + $n,
               unlocated_total = coalesce(unlocated_total, 0) + $u WHERE source = $s""",
            {
                "c": page.cursor if page else None,
                "e": page.etag if page else None,
                "lm": page.last_modified if page else None,
                "n": rows.height,
                "u": unlocated,
                "s": spec.name,
            },
        )
    return unlocated


def _contract_for(spec: SourceSpec) -> dict[str, Any] | None:
    """The entry's own contract, else its provider's (so an entry added to the registry alone is
    still watched for drift), else none."""
    for name in (spec.name, spec.provider):
        if (CONTRACTS_DIR / f"{name}.schema.json").exists():
            return load_contract(name)
    return None


def _merge_drift(total: dict[str, list[str]], page: dict[str, list[str]]) -> None:
    for kind, fields in page.items():
        total[kind] = sorted(set(total.get(kind, [])) | set(fields))


def _ensure_units(con: duckdb.DuckDBPyConnection, store: Store, city: str, units: pl.DataFrame) -> None:
    """Insert the geo units a page needs when the store does not have them yet; the city row is
    always replaced (an H3 region's outline grows with the cells it has seen)."""
    have = query(con, "SELECT unit_id, level FROM geo_unit WHERE city = $c", {"c": city})
    missing = units.join(have, on=["unit_id", "level"], how="anti") if have.height else units
    fresh = pl.concat([missing, units.filter(pl.col("level") == "city")]).unique(["level", "unit_id"])
    if fresh.height:
        store.upsert(con, "geo_unit", fresh)


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """One page = one transaction: rows and cursor land together or not at all."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _combined(source: str, reports: list[IngestReport]) -> IngestReport:
    """One report for a run over several registry entries (a split dataset)."""
    out = IngestReport(source)
    for r in reports:
        out.pages, out.rows, out.unlocated, out.rejected = (
            out.pages + r.pages,
            out.rows + r.rows,
            out.unlocated + r.unlocated,
            out.rejected + r.rejected,
        )
        _merge_drift(out.drift, r.drift)
        out.error = out.error or r.error
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m app.data.ingest --source NAME [--since ISO | --file EXPORT]``: ingest one registry
    source into ``CSH_DATA_DIR`` with a progress bar and JSON logs, then publish a snapshot."""
    import argparse
    import asyncio
    import logging
    from pathlib import Path

    from tqdm import tqdm

    from app.config import get_settings
    from app.data.registry import load_registry
    from app.engine.suppression import UnprotectedCells
    from app.pipeline import ingest_live, publish  # the CLI is an entry point: it may orchestrate

    registry = load_registry()
    parser = argparse.ArgumentParser(prog="python -m app.data.ingest", description=main.__doc__)
    parser.add_argument("--source", required=True, choices=sorted(registry), help="registry entry (app/data/sources.toml)")
    parser.add_argument("--since", help="backfill from this ISO date instead of the stored cursor")
    parser.add_argument("--file", type=Path, help="import a local CSV/JSON export of the source instead of calling the provider")
    parser.add_argument(
        "--id-field",
        help="with --file: the export column holding row ids when the export lacks the API's id field, "
        "or '@content' when it has no unique column (ids from each row's cells)",
    )
    parser.add_argument("--no-publish", action="store_true", help="leave the new rows in the working database only")
    args = parser.parse_args(argv)
    if args.since is not None:
        try:
            datetime.fromisoformat(args.since)
        except ValueError:
            parser.error(f"--since: not an ISO date: {args.since!r}")
    if args.file is not None and not args.file.is_file():
        parser.error(f"--file: no such file: {args.file}")
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    settings = get_settings()
    store = Store(settings.data_dir, keep=settings.keep_snapshots)
    spec = registry[args.source]
    with tqdm(unit=" rows", desc=spec.name, disable=None) as bar:
        if args.file is not None:
            from app.data.sources.export_file import ingest_file

            report = ingest_file(store, spec, args.file, id_field=args.id_field)
            bar.update(report.rows)
        else:
            from app.data.sources.socrata import covering_sources

            # A backfill across a split dataset (NYC 311 before 2020) reads each part, oldest first.
            parts = covering_sources(spec, args.since, registry) if spec.provider == "socrata" else [spec]
            reports = []
            for part in parts:
                reports.append(asyncio.run(ingest_live(store, part, since=args.since, on_page=bar.update)))
                if reports[-1].error:
                    break
            report = _combined(spec.name, reports)
    snapshot, error = None, report.error
    if not (args.no_publish or report.error):
        try:
            snapshot = publish(store, {spec.city}, built_by=f"ingest:{spec.name}")
        except UnprotectedCells as err:  # the rows stay stored; the current snapshot stays served
            error = f"{err}: the rows are stored but no snapshot was published (try CSH_GRAINS coarser or a larger area)"
    print(
        json.dumps(
            {
                "source": spec.name,
                "rows": report.rows,
                "unlocated": report.unlocated,
                "rejected": report.rejected,
                "pages": report.pages,
                "error": error,
                "drift": report.drift,
                "snapshot": snapshot.id if snapshot else None,
            }
        )
    )
    return 1 if error else 0


if __name__ == "__main__":
    raise SystemExit(main())
