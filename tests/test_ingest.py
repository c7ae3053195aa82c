"""The shared ingest loop with a scripted adapter: per-page commits, idempotence, the circuit
breaker, drift recording and the operator CLI's input errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx
import polars as pl
import pytest

from app.data import contract, ingest
from app.data.ingest import Breaker, ingest_source, main
from app.data.normalize import local_to_utc
from app.data.registry import FieldMap, SourceSpec
from app.data.snapshot import connect, query
from app.data.sources import IngestCursor, RawPage, register_adapter
from app.data.store import Store

SPEC = SourceSpec(
    name="scripted",
    provider="demo",
    city="nyc",
    table="request",
    base_url="http://127.0.0.1:9",
    fields=FieldMap(id="id", time="t", category="c"),
)
MANHATTAN = (-73.9857, 40.7484)  # a located row; (None, None) rows stay unlocated


def _row(i: int, cursor: str, c: str = "Noise", located: bool = True) -> dict[str, Any]:
    lon, lat = MANHATTAN if located else (None, None)
    return {"id": str(i), "t": f"2026-10-0{1 + i % 9}T12:00:00", "c": c, "lon": lon, "lat": lat, "cursor": cursor}


class Script:
    """Pages to serve, and the page index at which to fail (None: never)."""

    pages: ClassVar[list[list[dict[str, Any]]]] = []
    fail_at: ClassVar[int | None] = None


@register_adapter("demo")
class ScriptedAdapter:
    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec

    async def pages(self, client: httpx.AsyncClient, state: IngestCursor, since: str | None = None) -> AsyncIterator[RawPage]:
        for i, rows in enumerate(Script.pages):
            if Script.fail_at == i:
                raise httpx.ConnectError("provider down")
            if state.cursor is not None and rows and rows[-1]["cursor"] <= state.cursor:
                continue  # already committed: the adapter resumes after the stored cursor
            yield RawPage(rows=rows, cursor=rows[-1]["cursor"] if rows else None)

    def normalize(self, rows: list[dict[str, Any]]) -> pl.DataFrame:
        frame = pl.DataFrame(
            rows, schema={"id": pl.String, "t": pl.String, "c": pl.String, "lon": pl.Float64, "lat": pl.Float64, "cursor": pl.String}
        )
        return frame.select(
            pl.col("id").alias("source_id"),
            local_to_utc(frame["t"], "America/New_York").alias("ts"),
            pl.col("c").alias("category"),
            pl.lit(None, pl.String).alias("descriptor"),
            "lon",
            "lat",
            pl.lit("{}").alias("attrs"),
        )


@pytest.fixture(autouse=True)
def _script() -> None:
    Script.pages = [[_row(1, "a"), _row(2, "a", located=False)], [_row(3, "b"), _row(1, "b", c="Updated")], [_row(4, "c")]]
    Script.fail_at = None


def _run(store: Store, breaker: Breaker | None = None) -> ingest.IngestReport:
    async def go() -> ingest.IngestReport:
        async with httpx.AsyncClient() as client:
            return await ingest_source(store, SPEC, client, breaker=breaker)

    return asyncio.run(go())


def _requests(store: Store) -> pl.DataFrame:
    con = connect(store.data_dir / "work.duckdb", read_only=True)
    try:
        return query(con, "SELECT source_id, category, tract_id FROM request ORDER BY source_id")
    finally:
        con.close()


def _state(store: Store) -> dict[str, Any]:
    con = connect(store.data_dir / "work.duckdb", read_only=True)
    try:
        return query(con, "SELECT * FROM ingest_state WHERE source = 'scripted'").to_dicts()[0]
    finally:
        con.close()


def test_pages_are_upserted_with_updates_applied_and_unlocated_rows_kept(tmp_path: Path) -> None:
    store = Store(tmp_path)
    report = _run(store)
    assert (report.pages, report.rows, report.unlocated, report.error) == (3, 5, 1, None)
    rows = _requests(store)
    assert rows["source_id"].to_list() == ["1", "2", "3", "4"]  # row 1 came twice: one row, updated
    assert rows.filter(pl.col("source_id") == "1")["category"].item() == "Updated"
    assert rows.filter(pl.col("source_id") == "2")["tract_id"].item() is None
    assert rows.filter(pl.col("source_id") == "3")["tract_id"].item() is not None
    state = _state(store)
    assert state["cursor"] == "c"
    assert state["rows_total"] == 5
    assert state["unlocated_total"] == 1


def test_rerun_neither_loses_nor_duplicates(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _run(store)
    first = _requests(store)
    Script.pages.append([_row(5, "d")])
    report = _run(store)
    assert report.pages == 1  # only the new page
    assert _requests(store)["source_id"].to_list() == [*first["source_id"].to_list(), "5"]


def test_cursor_advances_only_with_committed_pages(tmp_path: Path) -> None:
    store = Store(tmp_path)
    Script.fail_at = 1
    report = _run(store)
    assert report.error is not None
    assert report.error.startswith("ConnectError")
    assert _requests(store)["source_id"].to_list() == ["1", "2"]  # page 0 committed, nothing after
    state = _state(store)
    assert (state["cursor"], state["consecutive_failures"]) == ("a", 1)
    assert "provider down" in state["last_error"]
    Script.fail_at = None
    assert _run(store).error is None
    assert _requests(store)["source_id"].to_list() == ["1", "2", "3", "4"]
    assert _state(store)["consecutive_failures"] == 0


def test_breaker_opens_after_repeated_failures_and_a_probe_closes_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    Script.fail_at = 0
    breaker = Breaker(failures=2, cooldown=timedelta(hours=1))
    _run(store, breaker)
    assert _state(store)["breaker_opened_at"] is None
    _run(store, breaker)
    assert _state(store)["breaker_opened_at"] is not None  # open after 2 failures
    Script.fail_at = None
    skipped = _run(store, breaker)
    assert skipped.skipped_open_breaker  # still cooling down: no request is made
    assert _requests(store).is_empty()
    probe = _run(store, Breaker(failures=2, cooldown=timedelta(0)))  # cool-down over: half-open probe
    assert probe.error is None
    assert probe.rows == 5
    state = _state(store)
    assert (state["breaker_opened_at"], state["consecutive_failures"]) == (None, 0)


def test_drift_is_recorded_and_known_fields_keep_flowing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contracts = tmp_path / "contracts"
    contracts.mkdir()
    schema = {
        "type": "object",
        "properties": {k: {"type": ["string", "number", "null"]} for k in ("id", "t", "c", "lon", "lat", "cursor", "gone")},
    }
    (contracts / "scripted.schema.json").write_text(json.dumps(schema))
    monkeypatch.setattr(contract, "CONTRACTS_DIR", contracts)
    monkeypatch.setattr(ingest, "CONTRACTS_DIR", contracts)
    contract.load_contract.cache_clear()
    Script.pages = [[{**_row(i, "a"), "surprise": {"x": 1}} for i in range(25)]]
    store = Store(tmp_path / "store")
    report = _run(store)
    contract.load_contract.cache_clear()
    assert report.rows == 25
    assert report.drift == {"new": ["surprise"], "vanished": ["gone"], "retyped": []}
    assert json.loads(_state(store)["drift"]) == report.drift


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--source", "no_such_source"], "invalid choice"),
        (["--source", "nyc311", "--since", "last tuesday"], "not an ISO date"),
        (["--source", "nyc311", "--file", "/nonexistent/export.csv"], "no such file"),
    ],
)
def test_cli_rejects_bad_input_clearly(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CSH_DATA_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "work.duckdb").exists()  # nothing written
