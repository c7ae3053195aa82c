"""The ``dp`` budget ledger: the persisted record of every noisy release and the guard of the
privacy budget (see :class:`BudgetLedger`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from app.engine.privacy import Policy, _hierarchy, dp_epsilon, dp_release

__all__ = ["LEDGER_FILE", "BudgetExceeded", "BudgetLedger"]

#: File name of the budget ledger inside a data directory.
LEDGER_FILE = "privacy_ledger.duckdb"

#: Length of one bin of each time-bin name (the ledger charges per bin).
_BIN_STEP: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}


class BudgetExceeded(RuntimeError):  # noqa: N818  # name fixed by the API routes that catch it
    """A ``dp`` release would push the privacy loss of some instant of a city over the budget."""

    def __init__(self, city: str, bin_start: datetime, spent: float, epsilon: float, budget: float) -> None:
        self.city, self.bin_start, self.spent, self.epsilon, self.budget = city, bin_start, spent, epsilon, budget
        super().__init__(
            f"privacy budget of {city!r} exhausted at bin {bin_start.isoformat()}: "
            f"ε spent {spent:g} + requested {epsilon:g} > budget {budget:g}"
        )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    city VARCHAR NOT NULL, category VARCHAR NOT NULL, time_bin VARCHAR NOT NULL,
    bin_start TIMESTAMP NOT NULL, bin_end TIMESTAMP NOT NULL,
    epsilon DOUBLE NOT NULL, released_at TIMESTAMP NOT NULL,
    PRIMARY KEY (city, category, time_bin, bin_start)
);
CREATE TABLE IF NOT EXISTS publish_cells (
    city VARCHAR NOT NULL, series VARCHAR NOT NULL, level VARCHAR NOT NULL, grain VARCHAR NOT NULL, bin_start TIMESTAMP NOT NULL,
    unit_id VARCHAR NOT NULL, parent_id VARCHAR, category VARCHAR NOT NULL, count BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS release_cells (
    city VARCHAR NOT NULL, category VARCHAR NOT NULL, time_bin VARCHAR NOT NULL, bin_start TIMESTAMP NOT NULL,
    level VARCHAR NOT NULL, unit_id VARCHAR NOT NULL, parent_id VARCHAR, count BIGINT NOT NULL, thresholded BOOLEAN NOT NULL
);
"""


_PUBLISH_SCHEMA = pl.Schema(
    {
        "level": pl.String(),
        "unit_id": pl.String(),
        "parent_id": pl.String(),
        "category": pl.String(),
        "bin_start": pl.Datetime("us"),
        "count": pl.Int64(),
    }
)


def _naive(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(tzinfo=None)


class BudgetLedger:
    """The persisted record of every ``dp`` release, and the guard of the privacy budget.

    A small DuckDB file holds, per ``(city, category, time_bin, bin_start)``, the ε charged and the
    released (post-processed) values. A repeated query re-serves the stored values, which costs
    nothing (post-processing of a past release), so only bins never released before are charged.
    ``category`` is the key of the released series and must identify the whole query predicate.

    The budget is per (city, instant): the ε of all releases whose bins cover an instant adds up
    (sequential composition across categories and bin widths; disjoint bins compose in parallel),
    and a release is refused whole (:class:`BudgetExceeded`, nothing recorded) when any of its bins
    would take some instant over ``budget``. Stored values are never refreshed: late events for an
    already released bin are not reflected (refreshing would cost budget again).

    The ledger keeps its DuckDB file open until :meth:`close` (DuckDB's file lock makes it the one
    writing process); each release runs in one transaction, under a lock for threads.
    """

    def __init__(self, path: Path | str, budget: float = 10.0) -> None:
        import duckdb

        self.path = Path(path)
        self.budget = float(budget)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = duckdb.connect(str(self.path))
        self._con.execute(_SCHEMA)

    def close(self) -> None:
        """Release the DuckDB file (and its lock)."""
        with self._lock:
            self._con.close()

    def __enter__(self) -> BudgetLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _session(self) -> Iterator[Any]:
        """The ledger's connection, one thread at a time (a DuckDB connection is not thread-safe)."""
        with self._lock:
            yield self._con

    def spent(self, city: str, at: datetime | None = None) -> float:
        """ε charged to ``city``: in total (for display) or, with ``at``, by the releases covering
        that instant (the number the budget bounds)."""
        with self._session() as con:
            if at is None:
                row = con.execute("SELECT coalesce(sum(epsilon), 0) FROM releases WHERE city = ?", [city]).fetchone()
            else:
                row = con.execute(
                    "SELECT coalesce(sum(epsilon), 0) FROM releases WHERE city = ? AND bin_start <= ? AND bin_end > ?",
                    [city, _naive(at), _naive(at)],
                ).fetchone()
        return float(row[0]) if row else 0.0

    def peak(self, city: str) -> float:
        """The largest ε charged to any instant of ``city``: the number the budget bounds."""
        with self._session() as con:
            rows = con.execute("SELECT bin_start, bin_end, epsilon FROM releases WHERE city = ?", [city]).fetchall()
        if not rows:
            return 0.0
        points = sorted({r[0] for r in rows} | {r[1] for r in rows})
        index = {p: i for i, p in enumerate(points)}
        delta = np.zeros(len(points))
        for start, end, eps in rows:
            delta[index[start]] += eps
            delta[index[end]] -= eps
        return float(np.cumsum(delta).max())

    def stored(self, city: str, category: str, time_bin: str, bins: Sequence[datetime] | None = None) -> pl.DataFrame:
        """The stored release cells of a series (of ``bins`` only, when given): the columns of
        :func:`dp_release`."""
        with self._session() as con:
            return self._stored(con, city, category, time_bin, bins)

    def charge(self, city: str, category: str, time_bin: str, released: pl.DataFrame, epsilon: float) -> None:
        """Record ``released`` (cells of :func:`dp_release`, bins never released before) at
        ``epsilon`` per bin, or raise :class:`BudgetExceeded` and record nothing."""
        with self._session() as con:
            con.begin()
            try:
                self._charge(con, city, category, time_bin, released, epsilon)
                con.commit()
            except BaseException:
                con.rollback()
                raise

    def release(
        self,
        city: str,
        category: str,
        time_bin: str,
        counts: pl.DataFrame,
        units: pl.DataFrame,
        bins: Sequence[datetime] | pl.Series,
        policy: Policy,
    ) -> pl.DataFrame:
        """The ``dp`` release of ``bins`` of one series: stored bins as stored, new bins released
        by :func:`dp_release` and charged, all in one transaction (refused whole when over budget).

        Output: the columns of :func:`dp_release`, for every requested bin."""
        if policy.mode != "dp":
            raise ValueError(f"the ledger releases 'dp' only, not {policy.mode!r}")
        wanted = sorted({b.astimezone(UTC) for b in bins})
        levels, _ = _hierarchy(units)
        with self._session() as con:
            con.begin()
            try:
                old = self._stored(con, city, category, time_bin, wanted)
                have = set(old["bin_start"].unique().to_list())
                new_bins = [b for b in wanted if b not in have]
                if new_bins:
                    epsilon = dp_epsilon(policy, len(levels))
                    self._check(con, city, time_bin, new_bins, epsilon)
                    fresh = dp_release(counts, units, new_bins, policy)
                    self._charge(con, city, category, time_bin, fresh, epsilon)
                    old = pl.concat([old, fresh])
                con.commit()
            except BaseException:
                con.rollback()
                raise
        rank = {lvl: i for i, lvl in enumerate(levels)}
        old = old.with_columns(_lvl=pl.col("level").replace_strict(rank, default=len(rank), return_dtype=pl.Int64))
        return old.sort("_lvl", "unit_id", "bin_start").drop("_lvl")

    # ---- publish-time releases (app.engine.dp_publish) ----
    def published(self, city: str, series: str, grains: Mapping[str, str]) -> dict[str, pl.DataFrame]:
        """Per level, the cells of every bin released so far in ``series`` (the release's
        configuration, :func:`app.engine.dp_publish.series_key`) at its grain: ``level, unit_id,
        parent_id, category, bin_start, count`` (what a publish re-serves and never noises again)."""
        out: dict[str, pl.DataFrame] = {}
        with self._session() as con:
            for level, grain in grains.items():
                frame: pl.DataFrame = con.sql(
                    "SELECT level, unit_id, parent_id, category, bin_start, count FROM publish_cells "
                    "WHERE city = ? AND series = ? AND level = ? AND grain = ?",
                    params=[city, series, level, grain],
                ).pl()
                out[level] = frame.cast(_PUBLISH_SCHEMA) if frame.height else pl.DataFrame(schema=_PUBLISH_SCHEMA)
        return {lvl: f.with_columns(pl.col("bin_start").dt.replace_time_zone("UTC")) for lvl, f in out.items()}

    def record(
        self,
        city: str,
        series: str,
        grains: Mapping[str, str],
        new: Mapping[str, pl.DataFrame],
        new_bins: Mapping[str, Sequence[tuple[datetime, datetime]]],
        epsilon: float,
    ) -> None:
        """Record the cells of bins released now, charging ``epsilon`` per bin of each level, in one
        transaction; raise :class:`BudgetExceeded` (recording nothing) when some instant of ``city``
        would go over the budget, or ``ValueError`` when a bin was recorded before."""
        heads = [
            (f"publish:{series}:{level}", grains[level], _naive(start), _naive(end))
            for level, bins in new_bins.items()
            for start, end in bins
        ]
        if not heads:
            return
        with self._session() as con:
            con.begin()
            try:
                keys = pl.DataFrame(heads, schema=["category", "time_bin", "bin_start", "bin_end"], orient="row")
                con.register("_keys", keys.to_arrow())
                dup = con.execute(
                    "SELECT count(*) FROM releases r JOIN _keys k USING (category, time_bin, bin_start) WHERE r.city = ?", [city]
                ).fetchone()
                if dup and dup[0]:
                    raise ValueError(f"bins of {city} already released: re-serve them, do not charge twice")
                self._check_spans(con, city, [h[2] for h in heads], [h[3] for h in heads], epsilon)
                now = datetime.now(UTC).replace(tzinfo=None)
                con.execute("INSERT INTO releases SELECT ?, category, time_bin, bin_start, bin_end, ?, ? FROM _keys", [city, epsilon, now])
                for level, cells in new.items():
                    rows = cells.select(
                        city=pl.lit(city),
                        series=pl.lit(series),
                        level=pl.lit(level),
                        grain=pl.lit(grains[level]),
                        bin_start=pl.col("bin_start").dt.convert_time_zone("UTC").dt.replace_time_zone(None),
                        unit_id="unit_id",
                        parent_id="parent_id",
                        category="category",
                        count=pl.col("count").cast(pl.Int64),
                    )
                    con.register("_cells", rows.to_arrow())
                    con.execute("INSERT INTO publish_cells SELECT * FROM _cells")
                    con.unregister("_cells")
                con.unregister("_keys")
                con.commit()
            except BaseException:
                con.rollback()
                raise

    # ---- internals (callers hold the lock and the transaction) ----
    @staticmethod
    def _stored(con: Any, city: str, category: str, time_bin: str, bins: Sequence[datetime] | None) -> pl.DataFrame:
        sql = (
            "SELECT level, unit_id, parent_id, bin_start, count, thresholded FROM release_cells "
            "WHERE city = ? AND category = ? AND time_bin = ?"
        )
        params: list[object] = [city, category, time_bin]
        if bins is not None:
            sql += " AND bin_start IN (SELECT unnest(?::TIMESTAMP[]))"
            params.append([_naive(b) for b in bins])
        frame: pl.DataFrame = con.sql(sql, params=params).pl()
        schema = pl.Schema(
            {
                "level": pl.String(),
                "unit_id": pl.String(),
                "parent_id": pl.String(),
                "bin_start": pl.Datetime("us"),
                "count": pl.Int64(),
                "thresholded": pl.Boolean(),
            }
        )
        frame = frame.cast(schema) if frame.height else pl.DataFrame(schema=schema)
        return frame.with_columns(pl.col("bin_start").dt.replace_time_zone("UTC"))

    def _check(self, con: Any, city: str, time_bin: str, bins: Sequence[datetime], epsilon: float) -> None:
        """:meth:`_check_spans` for bins of ``time_bin`` starting at ``bins``."""
        step = _BIN_STEP[time_bin]
        starts = [_naive(b) for b in bins]
        self._check_spans(con, city, starts, [s + step for s in starts], epsilon)

    def _check_spans(self, con: Any, city: str, starts: Sequence[datetime], ends: Sequence[datetime], epsilon: float) -> None:
        """Raise :class:`BudgetExceeded` when adding ``epsilon`` on the spans ``[starts[i], ends[i])``
        (naive UTC) takes some instant of ``city`` over the budget: the loss at an instant is the sum
        of ε of the releases covering it, a step function whose maximum over a span is found by a
        sweep over interval ends. The new spans are checked one by one: they must not overlap each
        other unless their ε is meant to add up (the levels of one publish do: each is charged)."""
        lo, hi = min(starts), max(ends)
        rows = con.execute(
            "SELECT bin_start, bin_end, epsilon FROM releases WHERE city = ? AND bin_start < ? AND bin_end > ?", [city, hi, lo]
        ).fetchall()
        new_s = np.array(list(starts), dtype="datetime64[us]")
        new_e = np.array(list(ends), dtype="datetime64[us]")
        old_s = np.array([r[0] for r in rows] + list(starts), dtype="datetime64[us]")
        old_e = np.array([r[1] for r in rows] + list(ends), dtype="datetime64[us]")
        eps = np.array([r[2] for r in rows] + [epsilon] * len(starts), dtype=np.float64)
        points = np.unique(np.concatenate([new_s, new_e, old_s, old_e]))
        delta = np.zeros(points.shape[0], np.float64)
        np.add.at(delta, np.searchsorted(points, old_s), eps)
        np.add.at(delta, np.searchsorted(points, old_e), -eps)
        loss = np.cumsum(delta)  # loss on [points[j], points[j + 1]) with every new span charged
        for s, e, b in zip(np.searchsorted(points, new_s), np.searchsorted(points, new_e), starts, strict=True):
            peak = float(loss[s:e].max()) if e > s else 0.0
            if peak > self.budget + 1e-9:
                raise BudgetExceeded(city, b.replace(tzinfo=UTC), peak - epsilon, epsilon, self.budget)

    def _charge(self, con: Any, city: str, category: str, time_bin: str, released: pl.DataFrame, epsilon: float) -> None:
        bins = sorted(set(released["bin_start"].to_list()))
        if not bins:
            return
        placeholders = [_naive(b) for b in bins]
        dup = con.execute(
            "SELECT count(*) FROM releases WHERE city = ? AND category = ? AND time_bin = ? AND bin_start IN (SELECT unnest(?::TIMESTAMP[]))",
            [city, category, time_bin, placeholders],
        ).fetchone()
        if dup and dup[0]:
            raise ValueError(f"bins of {city}/{category}/{time_bin} already released: re-serve them, do not charge twice")
        self._check(con, city, time_bin, bins, epsilon)
        step = _BIN_STEP[time_bin]
        now = datetime.now(UTC).replace(tzinfo=None)
        heads = pl.DataFrame(
            {
                "city": city,
                "category": category,
                "time_bin": time_bin,
                "bin_start": placeholders,
                "bin_end": [b + step for b in placeholders],
                "epsilon": epsilon,
                "released_at": now,
            }
        )
        cells = released.select(
            city=pl.lit(city),
            category=pl.lit(category),
            time_bin=pl.lit(time_bin),
            bin_start=pl.col("bin_start").dt.convert_time_zone("UTC").dt.replace_time_zone(None),
            level="level",
            unit_id="unit_id",
            parent_id="parent_id",
            count=pl.col("count").cast(pl.Int64),
            thresholded="thresholded",
        )
        con.register("_new_heads", heads.to_arrow())
        con.register("_new_cells", cells.to_arrow())
        con.execute("INSERT INTO releases SELECT * FROM _new_heads")
        con.execute("INSERT INTO release_cells SELECT * FROM _new_cells")
        con.unregister("_new_heads")
        con.unregister("_new_cells")
