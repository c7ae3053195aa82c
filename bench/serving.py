"""Serving figures of the published release: what the release keeps, and what reading it costs.

``released_share_<level>`` (tract, neighborhood, borough): the share of the level's events (all
categories, complete bins, at the level's grain) that sit in released cells;
``released_share_<level>_by_category`` the same over the per-category cells.
``api_p95_ms_c32`` / ``api_p99_ms_c32``: latency of common ``/heat`` and ``/anomalies`` requests
(random levels, categories, bins and windows anywhere in the history) from 32 concurrent clients
against the real server; ``new_window_ms``: server-side time of a window never asked before
(the lens in process, warm snapshot, median); ``rss_mb_after_windows`` and
``rss_mb_after_first_window``: the server's resident memory after 20 distinct windows and after
the first one (goal: within 10 %).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import polars as pl

from app.data.snapshot import Snapshot

__all__ = ["api_figures", "new_window_ms", "released_shares"]

_LEVELS = ("tract", "neighborhood", "borough")


def released_shares(snap: Snapshot, city: str = "nyc") -> dict[str, tuple[float, str]]:
    """Share of events in released cells per level (``"*"`` cells, and per-category cells)."""
    release = snap.release(city).filter(~pl.col("partial"))
    out: dict[str, tuple[float, str]] = {}
    events = snap.events(city)
    cutoff = snap.release_meta(city)["complete_until"]
    for level in _LEVELS:
        mine = release.filter(pl.col("level") == level)
        if mine.height == 0:
            continue
        released = mine.filter(~pl.col("suppressed"))
        first = mine["bin_start"].min()
        total = events.filter(pl.col("tract_id").is_not_null() & pl.col("ts").is_between(first, cutoff[level], closed="left")).height
        star = int(released.filter(pl.col("category") == "*")["count"].sum())
        cats = int(released.filter(pl.col("category") != "*")["count"].sum())
        out[f"released_share_{level}"] = (round(star / max(total, 1), 4), "ratio")
        out[f"released_share_{level}_by_category"] = (round(cats / max(total, 1), 4), "ratio")
    return out


def _windows(snap: Snapshot, city: str, n: int, seed: int) -> list[tuple[datetime, datetime]]:
    """``n`` distinct random windows (1-21 days) anywhere in the city's history."""
    ts = snap.events(city)["ts"]
    lo, hi = ts.min(), ts.max()
    assert isinstance(lo, datetime)
    assert isinstance(hi, datetime)
    rng = random.Random(seed)
    out: set[tuple[datetime, datetime]] = set()
    span = (hi - lo).total_seconds()
    while len(out) < n:
        start = lo + timedelta(seconds=rng.uniform(0, span * 0.9))
        out.add(
            (
                start.replace(minute=0, second=0, microsecond=0),
                (start + timedelta(days=rng.randint(1, 21))).replace(minute=0, second=0, microsecond=0),
            )
        )
    return sorted(out)


def new_window_ms(snap: Snapshot, city: str = "nyc", n: int = 15) -> float:
    """Median server-side time of ``/anomalies``-equivalent lens work for never-asked windows."""
    from app.engine.lens import Lens

    Lens(snapshot=snap, city=city).anomalies()  # warm: the snapshot's tables are loaded once
    times = []
    for i, (since, until) in enumerate(_windows(snap, city, n, seed=7)):
        lens = Lens(snapshot=snap, city=city, level=_LEVELS[i % 3], since=since, until=until)
        t0 = time.perf_counter()
        lens.anomalies()
        lens.unit_counts()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 1)


async def _load(base: str, urls: list[str], clients: int) -> list[float]:
    latencies: list[float] = []
    queue: asyncio.Queue[str] = asyncio.Queue()
    for u in urls:
        queue.put_nowait(u)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            url = queue.get_nowait()
            t0 = time.perf_counter()
            r = await client.get(url)
            latencies.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"{url} answered {r.status_code}: {r.text[:200]}")

    async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=clients)) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    return latencies


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _urls(snap: Snapshot, city: str, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    cats = ["", *(f"&category={quote(c)}" for c in sorted(snap.events(city)["category"].unique().drop_nulls().to_list())[:8])]
    out = []
    for since, until in _windows(snap, city, n, seed):
        level = rng.choice(_LEVELS)
        window = f"city={city}&level={level}&since={since:%Y-%m-%dT%H:%M}&until={until:%Y-%m-%dT%H:%M}{rng.choice(cats)}"
        route = rng.choice(["/heat", "/anomalies", f"/heat?time_bin={rng.choice(['day', 'week'])}&"])
        out.append(f"{route}{'&' if '?' in route else '?'}{window}".replace("?&", "?").replace("&&", "&"))
    return out


def api_figures(data_dir: Path, snap: Snapshot, city: str = "nyc") -> dict[str, tuple[float, str]]:
    """Latency at 32 concurrent clients and resident memory over distinct windows, on the real server."""
    import subprocess

    from bench.serve import served

    with served(data_dir, log=subprocess.DEVNULL) as base:
        pid = getattr(base, "pid", 0)
        first = _urls(snap, city, 1, seed=1)
        asyncio.run(_load(base, first, 1))
        rss_first = _rss_mb(pid) if pid else float("nan")
        asyncio.run(_load(base, _urls(snap, city, 20, seed=2), 4))
        rss_after = _rss_mb(pid) if pid else float("nan")
        lat = asyncio.run(_load(base, _urls(snap, city, 320, seed=3), 32))
    lat.sort()
    return {
        "api_p95_ms_c32": (round(lat[int(0.95 * (len(lat) - 1))], 1), "ms"),
        "api_p99_ms_c32": (round(lat[int(0.99 * (len(lat) - 1))], 1), "ms"),
        "rss_mb_after_first_window": (rss_first, "MB"),
        "rss_mb_after_windows": (rss_after, "MB"),
    }
