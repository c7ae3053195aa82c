"""The embedded demo city: real NYC geography, simulated 311 requests, NYPD incidents and street
closures, with planted anomalies and their ground truth.

Everything is a pure function of ``(seed, end, days, size)``; each UTC day is drawn from its own
random stream, so generating a window in one go or hour by hour (the live-like feed) yields the
very same events and ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property

import numpy as np
import polars as pl
import shapely
from numpy.typing import NDArray

from app.data.demo_mix import CRIME_PATH, MIX_PATH
from app.data.geography import CityGeography

__all__ = ["KINDS", "DemoCity", "DemoSpec", "floor_hour"]

KINDS = ("request", "incident", "closure")
_KIND_SHARE = {"request": 0.85, "incident": 0.14, "closure": 0.01}
_SOURCES = {"request": "demo_311", "incident": "demo_nypd", "closure": "demo_closures"}
_CLOSURE_KINDS = ["Street Construction", "Utility Work", "Water Main Break", "Special Event", "Film Permit", "Crane Operation"]
_UNLOCATED = 0.01  # share of rows published without coordinates, as in the real 311 extracts
_BASELINE_DAYS = 28  # planted anomalies start after this much clean history
_DAY_US = 86_400_000_000

# Hour-of-day (UTC-naive, local rhythm) shapes per profile; the weekly factor favours weekends at night.
_HOURLY = {
    "night": np.array([9, 8, 6, 4, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9], float),
    "evening": np.array([3, 2, 1, 1, 1, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4, 5, 6, 7, 8, 8, 7, 6, 5, 4], float),
    "morning": np.array([2, 1, 1, 1, 2, 4, 7, 9, 9, 8, 7, 6, 5, 5, 4, 4, 4, 4, 4, 4, 3, 3, 3, 2], float),
    "day": np.array([1, 1, 1, 1, 1, 2, 3, 5, 7, 8, 8, 8, 8, 8, 8, 7, 6, 5, 4, 3, 2, 2, 1, 1], float),
}
_WEEKLY = {  # Monday .. Sunday
    "night": np.array([0.8, 0.8, 0.85, 0.9, 1.2, 1.5, 1.3]),
    "evening": np.array([1.0, 1.0, 1.0, 1.0, 1.1, 1.0, 0.9]),
    "morning": np.array([1.2, 1.1, 1.1, 1.0, 1.0, 0.8, 0.8]),
    "day": np.array([1.15, 1.15, 1.1, 1.1, 1.05, 0.75, 0.7]),
}


def floor_hour(ts: datetime) -> datetime:
    """``ts`` in UTC rounded down to the hour (the demo's default end time is now, floored)."""
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class DemoSpec:
    """What defines a demo city: its seed, end time (exclusive, UTC), days of history and size."""

    seed: int = 20261121
    end: datetime = datetime(2026, 11, 1, tzinfo=UTC)
    days: int = 60
    size: int = 1_200_000

    @property
    def start(self) -> datetime:
        return self.end - timedelta(days=self.days)


@dataclass(frozen=True)
class _Catalog:
    """Categories of one kind with their shares, daily profile and per-row attributes."""

    names: NDArray[np.object_]
    shares: NDArray[np.float64]
    profiles: NDArray[np.object_]
    extra: pl.DataFrame  # kind-specific columns, one row per category


class DemoCity:
    """Simulator for one :class:`DemoSpec` over one city's geography.

    >>> city = DemoCity(DemoSpec(size=5_000), load_geography("nyc"))   # doctest: +SKIP
    >>> frames = city.generate(city.spec.start, city.spec.end)         # doctest: +SKIP
    """

    def __init__(self, spec: DemoSpec, geo: CityGeography) -> None:
        self.spec, self.geo = spec, geo
        rng = np.random.default_rng([spec.seed, 0])
        n = len(geo.tract_ids)
        self._bounds = shapely.bounds(geo.tract_geoms)
        shapely.prepare(geo.tract_geoms)
        self._weight = {k: rng.lognormal(0.0, 0.9, n) for k in KINDS}
        self._catalog = {"request": _requests_catalog(), "incident": _incidents_catalog(), "closure": _closures_catalog()}
        self._cum = {}
        for kind, cat in self._catalog.items():
            affinity = rng.lognormal(0.0, 0.35, (len(cat.names), n))
            w = affinity * self._weight[kind][None, :]
            self._cum[kind] = np.cumsum(w / w.sum(axis=1, keepdims=True), axis=1)
            self._cum[kind][:, -1] = 1.0
        self._plan_rng = np.random.default_rng([spec.seed, 1])

    # ---- planted anomalies -------------------------------------------------------------------
    @cached_property
    def planted(self) -> pl.DataFrame:
        """The ground-truth plan: one row per planted anomaly (ids, unit, category, window, size)."""
        return _plan_anomalies(self)

    def _tracts_of(self, level: str, unit_id: str) -> NDArray[np.int64]:
        if level == "tract":
            return np.flatnonzero(self.geo.tract_ids == unit_id)
        parents = self.geo.tract_parents().filter(pl.col("neighborhood_id") == unit_id)["tract_id"].to_list()
        return np.flatnonzero(np.isin(self.geo.tract_ids, parents))

    # ---- generation --------------------------------------------------------------------------
    def generate(self, since: datetime, until: datetime) -> dict[str, pl.DataFrame]:
        """All events with ``since <= ts < until`` per kind, plus a ``planted`` column (ground truth)."""
        first = int(since.timestamp() // 86_400)
        last = int((until.timestamp() - 1) // 86_400)
        out: dict[str, list[pl.DataFrame]] = {k: [] for k in KINDS}
        for day in range(first, last + 1):
            for kind in KINDS:
                out[kind].append(self._day(kind, day))
        lo, hi = since.astimezone(UTC), until.astimezone(UTC)
        ts = {"request": "ts", "incident": "ts", "closure": "start_ts"}
        return {k: pl.concat(v).filter(pl.col(ts[k]).is_between(lo, hi, closed="left")) for k, v in out.items()}

    def _day(self, kind: str, day: int) -> pl.DataFrame:
        rng = np.random.default_rng([self.spec.seed, 2 + KINDS.index(kind), day])
        cat = self._catalog[kind]
        rate = self.spec.size * _KIND_SHARE[kind] / (self.spec.days * 24)
        dt0 = datetime.fromtimestamp(day * 86_400, UTC)
        hod = np.arange(24)
        profile = np.stack([_HOURLY[p][hod] / _HOURLY[p].mean() * _WEEKLY[p][dt0.weekday()] / _WEEKLY[p].mean() for p in cat.profiles])
        counts = rng.poisson(rate * cat.shares[:, None] * profile)  # (category, hour)
        c_idx, h_idx = np.nonzero(counts)
        reps = counts[c_idx, h_idx]
        c_ev, h_ev = np.repeat(c_idx, reps), np.repeat(h_idx, reps)
        u = rng.random(len(c_ev))
        tract = np.minimum(_rows_searchsorted(self._cum[kind], c_ev, u), len(self.geo.tract_ids) - 1)
        planted = np.full(len(c_ev), -1, dtype=np.int64)
        c_ev, h_ev, tract, planted = self._apply_planted(kind, day, rng, c_ev, h_ev, tract, planted)
        secs = h_ev * 3600 + rng.integers(0, 3600, len(c_ev))
        order = np.lexsort((c_ev, secs))
        c_ev, tract, secs, planted = c_ev[order], tract[order], secs[order], planted[order]
        lon, lat = self._points(rng, tract)
        lon[rng.random(len(lon)) < _UNLOCATED] = np.nan
        located = np.isfinite(lon)
        lat[~located] = np.nan
        ts = pl.Series("ts", day * _DAY_US + secs.astype(np.int64) * 1_000_000).cast(pl.Datetime("us", "UTC"))
        source = _SOURCES[kind]
        frame = pl.DataFrame(
            {
                # Typed full-length columns, not scalars: a day without events must not turn into Null columns.
                "source": pl.Series([source] * len(c_ev), dtype=pl.String),
                "source_id": pl.Series([f"{day}-{i}" for i in range(len(c_ev))], dtype=pl.String),
                "city": pl.Series([self.geo.city] * len(c_ev), dtype=pl.String),
                "ts": ts,
                "cat_idx": c_ev,
                "lon": pl.Series(lon).fill_nan(None),
                "lat": pl.Series(lat).fill_nan(None),
                "tract_id": pl.Series(self.geo.tract_ids[tract].tolist(), dtype=pl.String),
                "planted": pl.Series(planted).replace(-1, None),
            }
        ).with_columns(tract_id=pl.when(pl.col("lon").is_not_null()).then("tract_id"))
        frame = frame.with_columns(
            id=pl.concat_str("source", pl.lit(":"), "source_id"), valid_from=pl.col("ts"), valid_to=pl.lit(None, pl.Datetime("us", "UTC"))
        )
        frame = frame.join(
            cat.extra.with_row_index("cat_idx").with_columns(pl.col("cat_idx").cast(pl.Int64)), on="cat_idx", how="left"
        ).drop("cat_idx")
        if kind == "closure":
            hours = np.clip(rng.lognormal(2.5, 1.2, len(frame)), 1, 24 * 21).round()
            frame = frame.rename({"ts": "start_ts"}).with_columns(
                end_ts=pl.col("start_ts") + pl.Series((hours * 3_600_000_000).astype(np.int64)).cast(pl.Duration("us"))
            )
        return frame

    def _apply_planted(
        self,
        kind: str,
        day: int,
        rng: np.random.Generator,
        c_ev: NDArray[np.int64],
        h_ev: NDArray[np.int64],
        tract: NDArray[np.int64],
        planted: NDArray[np.int64],
    ) -> tuple[NDArray[np.int64], ...]:
        plan = self.planted.filter((pl.col("source_kind") == kind) & (pl.col("start_day") <= day) & (pl.col("end_day") >= day))
        names = list(self._catalog[kind].names)
        for row in plan.iter_rows(named=True):
            tracts = self._tracts_of(row["level"], row["unit_id"])
            hours = np.arange(24) + day * 24
            in_win = (hours >= row["start_hour"]) & (hours < row["end_hour"])
            target = names.index(row["category"])
            if row["kind"] == "mix_shift":
                hit = np.isin(tract, tracts) & in_win[h_ev] & (c_ev != target) & (rng.random(len(c_ev)) < row["intensity"])
                c_ev = np.where(hit, target, c_ev)
                planted = np.where(hit, row["anomaly_id"], planted)
                continue
            # Exact extra count: every extra event's hour and tract is drawn once per anomaly.
            arng = np.random.default_rng([self.spec.seed, 3, row["anomaly_id"]])
            n_extra = int(row["intensity"])
            w = self._weight[kind][tracts]
            all_hours = arng.integers(row["start_hour"], row["end_hour"], n_extra)
            all_tracts = arng.choice(tracts, n_extra, p=w / w.sum())
            today = (all_hours // 24) == day
            n = int(today.sum())
            c_ev = np.concatenate([c_ev, np.full(n, target)])
            h_ev = np.concatenate([h_ev, all_hours[today] - day * 24])
            tract = np.concatenate([tract, all_tracts[today]])
            planted = np.concatenate([planted, np.full(n, row["anomaly_id"])])
        return c_ev, h_ev, tract, planted

    def _points(self, rng: np.random.Generator, tract: NDArray[np.int64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Uniform points inside each event's tract polygon, by vectorised rejection sampling."""
        lon, lat = np.empty(len(tract)), np.empty(len(tract))
        todo = np.arange(len(tract))
        while len(todo):
            b = self._bounds[tract[todo]]
            x = b[:, 0] + rng.random(len(todo)) * (b[:, 2] - b[:, 0])
            y = b[:, 1] + rng.random(len(todo)) * (b[:, 3] - b[:, 1])
            ok = shapely.contains_xy(self.geo.tract_geoms[tract[todo]], x, y)
            lon[todo[ok]], lat[todo[ok]] = x[ok], y[ok]
            todo = todo[~ok]
        return lon, lat


def _rows_searchsorted(cum: NDArray[np.float64], rows: NDArray[np.int64], u: NDArray[np.float64]) -> NDArray[np.int64]:
    """``searchsorted(cum[row], u)`` for many (row, u) pairs at once, via one flattened search."""
    flat = (cum + np.arange(cum.shape[0])[:, None]).ravel()
    return np.asarray(np.searchsorted(flat, rows + u) - rows * cum.shape[1], dtype=np.int64)


def _requests_catalog() -> _Catalog:
    mix = pl.read_csv(MIX_PATH)
    extra = mix.select(pl.col("complaint_type").alias("category"), "descriptor", attrs=pl.struct(agency="agency").struct.json_encode())
    return _Catalog(mix["complaint_type"].to_numpy(), mix["share"].to_numpy() / mix["share"].sum(), mix["profile"].to_numpy(), extra)


def _incidents_catalog() -> _Catalog:
    off = pl.read_csv(CRIME_PATH)
    extra = off.select(
        pl.col("offence").alias("type"),
        pl.col("severity").cast(pl.Int16),
        attrs=pl.struct(law_category="law_category").struct.json_encode(),
    )
    return _Catalog(off["offence"].to_numpy(), off["share"].to_numpy() / off["share"].sum(), off["profile"].to_numpy(), extra)


def _closures_catalog() -> _Catalog:
    k = len(_CLOSURE_KINDS)
    extra = pl.DataFrame(
        {
            "kind": _CLOSURE_KINDS,
            "description": [f"{c} (simulated)" for c in _CLOSURE_KINDS],
            "attrs": [json.dumps({"simulated": True})] * k,
        }
    )
    return _Catalog(np.asarray(_CLOSURE_KINDS, dtype=object), np.full(k, 1 / k), np.asarray(["day"] * k, dtype=object), extra)


def _plan_anomalies(city: DemoCity) -> pl.DataFrame:
    """Draw >= 20 planted anomalies in the days after the clean baseline: tract and neighborhood
    spikes of one category (small to large, hours to days) and mix shifts with the total unchanged."""
    rng, spec, geo = city._plan_rng, city.spec, city.geo
    first_hour = int(spec.start.timestamp() // 3600) + _BASELINE_DAYS * 24
    last_hour = int(spec.end.timestamp() // 3600)
    parents = geo.tract_parents()
    busy = np.argsort(-city._weight["request"])[:300]
    ntas = parents.group_by("neighborhood_id").len().filter(pl.col("len") >= 6)["neighborhood_id"].sort().to_list()
    req, inc = city._catalog["request"].names, city._catalog["incident"].names
    designs = (
        [("spike", "request", "tract", "small", 3, 12, 11, 15)] * 4
        + [("spike", "request", "tract", "medium", 6, 48, 20, 40)] * 4
        + [("spike", "request", "tract", "large", 12, 72, 60, 150)] * 3
        + [("spike", "incident", "tract", "medium", 6, 24, 15, 30)] * 2
        + [("spike", "request", "neighborhood", "medium", 12, 48, 40, 90)] * 3
        + [("spike", "request", "neighborhood", "large", 24, 96, 150, 300)] * 2
        + [("mix_shift", "request", "tract", "large", 24, 72, 0.6, 0.8)] * 3
        + [("mix_shift", "request", "neighborhood", "medium", 24, 48, 0.3, 0.45)] * 3
    )
    rows = []
    for i, (kind, source_kind, level, size_class, h_lo, h_hi, x_lo, x_hi) in enumerate(designs):
        hours = int(rng.integers(h_lo, h_hi + 1))
        start = int(rng.integers(first_hour, max(first_hour + 1, last_hour - hours)))
        unit = str(geo.tract_ids[rng.choice(busy)]) if level == "tract" else str(rng.choice(ntas))
        names = req if source_kind == "request" else inc
        cat = city._catalog[source_kind]
        if size_class == "small":
            # A dozen extra events is only an anomaly where the cell is normally quiet: a dozen more
            # noise complaints on a block that logs five a day is ordinary variation, invisible among
            # millions of cells at any honest false-discovery rate. So small spikes take a less common
            # category (ranks 10-40) and stay inside one UTC day; and they add at least 11 events,
            # the default publication threshold (k = 11): a smaller tract-day spike could not be shown.
            day0 = start - start % 24
            day0 = day0 + 24 if day0 < first_hour else day0 - 24 if day0 + 24 > last_hour else day0
            start = day0 + int(rng.integers(0, 24 - hours + 1))
            pool = np.arange(10, min(40, len(names)))
            category = str(names[int(rng.choice(pool))])
        else:
            # Common categories, weighted by sqrt(share): varied, yet no 27 murders in one neighborhood-day.
            top = np.sqrt(cat.shares[:25])
            category = str(names[int(rng.choice(len(top), p=top / top.sum()))])
        intensity = float(rng.uniform(x_lo, x_hi)) if kind == "mix_shift" else float(rng.integers(int(x_lo), int(x_hi) + 1))
        rows.append(
            {
                "anomaly_id": i + 1,
                "kind": kind,
                "source_kind": source_kind,
                "level": level,
                "unit_id": unit,
                "category": category,
                "size_class": size_class,
                "intensity": intensity,
                "start_hour": start,
                "end_hour": start + hours,
                "start_day": start // 24,
                "end_day": (start + hours - 1) // 24,
            }
        )
    plan = pl.DataFrame(rows)
    return plan.with_columns(
        start=(pl.col("start_hour") * 3_600_000_000).cast(pl.Datetime("us", "UTC")),
        end=(pl.col("end_hour") * 3_600_000_000).cast(pl.Datetime("us", "UTC")),
    )
