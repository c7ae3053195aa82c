"""The attacker test suite (:mod:`bench.attack`): against the real server over a small demo city no
withheld cell may be recovered by a linear derivation; the attacker's model of what the API shows
must be the release itself (cell by cell); the attacker itself must find the leaks of a fake API
that leaks on purpose (exactly those cells), and nothing when the fake follows the contract; its
solver must agree with plain rank arithmetic, and its equations must be every linear identity
the published cells satisfy."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import sparse

from app.config import Settings
from app.data.demo import DemoSpec
from app.data.store import Store
from app.engine.grains import bin_range, floor_bin, next_bin
from app.pipeline import build_demo
from bench.attack import attack_crawl, bench_lines, crawl_server
from bench.attack_api import Client, crawl
from bench.attack_fake import CATEGORY, FakeCity
from bench.attack_linear import P, solve_system
from bench.attack_model import layers, publish
from bench.attack_system import KNOWN, UNKNOWN, Layer, build_system
from bench.attack_time import Clock, hour_index
from bench.attack_truth import release_layers
from bench.serve import served

#: Small enough for the live test to stay quick, with more than 28 days so baselines exist (and
#: ending on the night of the 2026-11-01 daylight-saving change, so the last local day has 25 hours).
ATTACK_SPEC = DemoSpec(seed=11, end=datetime(2026, 11, 1, tzinfo=UTC), days=35, size=20_000)
#: The product's grains (published levels: tract by week, neighborhood by day, borough and city by hour).
ATTACK_GRAINS = "tract=week,neighborhood=day,borough=hour,city=hour"

# Daily counts of the fake (from Monday 2026-08-31, New York time): ten weeks of 20 a day; small
# days (withheld, k = 11) in some weeks.
DAYS = [20] * 70
DAYS[3] = 3  # week 0: one small day -> week minus its six released days
DAYS[15] = 4  # week 2: one small day
DAYS[29], DAYS[31] = 2, 5  # week 4: two small days -> only their sum is known, neither day
DAYS[62] = 6  # week 8: Sunday 2026-11-01, the 25-hour day of the daylight-saving change
LEAKED_DAYS = (3, 15, 62)
# Weekly counts of the fake: weeks 2 and 9 are small.
WEEKS = [30, 31, 3, 33, 34, 35, 36, 37, 38, 5, 40, 41]


def _attack_fake(fake: FakeCity) -> dict[str, Any]:
    client = Client("http://fake", budget=2000, transport=fake.transport())
    try:
        crawled = crawl(client)
    finally:
        client.close()
    assert not crawled.exhausted
    report = attack_crawl(crawled, fake.truth(), k=fake.k)
    assert report["model_mismatches"] == 0, report["mismatch_examples"]
    assert report["general"]["inconsistent_rows"] == {}
    return report


def _cells(report: dict[str, Any], attack: str | None = None) -> set[tuple[str, int, int, int]]:
    """(category, bin start, bin length in hours, true count) of the recovered numbers."""
    rows = report["recovered"] if attack is None else report["by_attack"].get(attack, [])
    return {(r[3], r[4], (r[5] - r[4]) // 3600, r[6]) for r in rows}


def _day(i: int) -> tuple[int, int]:
    start = FakeCity([0] * (i + 1)).starts[i]
    return int(start.timestamp()), (hour_index(next_bin(start, "day", "America/New_York")) - hour_index(start))


def _week(i: int) -> int:
    return int(FakeCity([0] * (i + 1), grain="week").starts[i].timestamp())


def test_attacker_recovers_exactly_the_days_a_week_leaks() -> None:
    report = _attack_fake(FakeCity(DAYS, grain="day", leaky=True, open_bins=2))
    expected = {(cat, *_day(i), DAYS[i]) for i in LEAKED_DAYS for cat in ("*", CATEGORY)}
    assert _day(62)[1] == 25  # the leaked day of week 8 is the 25-hour day: local bins are right
    days = {c for c in _cells(report) if c[2] in (23, 24, 25)}
    assert days == expected  # not the two small days of week 4
    week_minus_days = _cells(report, "cross_grain") | _cells(report, "window_minus_parts")  # a week that is also a window total
    assert {c for c in week_minus_days if c[2] <= 25} == expected
    assert {c for c in _cells(report, "general_linear") if c[2] <= 25} == expected  # the span test finds the same
    assert report["cells_recovered"] == report["small_cells_recovered"] == len(expected)
    # The only other recoveries: withheld window totals holding a leaked day (sums, not cells).
    assert all(c[2] > 25 for c in _cells(report) - days)
    assert report["sums_recovered"] == len(_cells(report) - days)
    assert report["wrong"] == 0


def test_attacker_recovers_exactly_the_weeks_expected_values_leak() -> None:
    report = _attack_fake(FakeCity(WEEKS, grain="week", leaky=True))
    # x(s) = x(s + 4) - 5 (E(s + 5) - E(s + 4)): needs weeks s + 4 and s + 5 released.
    small = [s for s, n in enumerate(WEEKS) if n < 11]
    leaked = [s for s in small if s + 5 < len(WEEKS) and WEEKS[s + 4] >= 11 and WEEKS[s + 5] >= 11]
    assert leaked == [2]  # week 9 has no week 14
    expected = {(cat, _week(s), 168, WEEKS[s]) for s in leaked for cat in ("*", CATEGORY)}
    assert _cells(report, "expected_differencing") == expected
    assert _cells(report) == expected
    assert report["wrong"] == 0


@pytest.mark.parametrize(("counts", "grain"), [(DAYS, "day"), (WEEKS, "week")], ids=["days", "weeks"])
def test_attacker_recovers_nothing_when_the_fake_keeps_the_contract(counts: list[int], grain: str) -> None:
    report = _attack_fake(FakeCity(counts, grain=grain, leaky=False, open_bins=2))
    assert report["withheld_cells"] > 0
    assert report["incomplete_rows"] > 0  # still-filling bins were shown, and taken as unknowns
    assert report["cells_recovered"] == report["sums_recovered"] == 0, report["by_attack"]
    assert report["general"]["targets"] > 0  # the general attacker did look at every withheld cell


def test_attacker_clock_is_the_engine_clock_across_daylight_saving() -> None:
    clock, tz = Clock("America/New_York"), "America/New_York"
    lo, hi = datetime(2026, 10, 20, tzinfo=UTC), datetime(2026, 11, 12, tzinfo=UTC)
    for grain in ("hour", "day", "week"):
        engine = [hour_index(b) for b in bin_range(lo, hi, grain, tz)]
        assert [b[0] for b in clock.bins(lo, hi, grain)] == engine
        assert clock.floor(datetime(2026, 11, 1, 7, 30, tzinfo=UTC), grain) == floor_bin(
            datetime(2026, 11, 1, 7, 30, tzinfo=UTC), grain, tz
        )
    assert (
        dict(clock.bins(lo, hi, "day"))[hour_index(datetime(2026, 11, 1, 4, tzinfo=UTC))] - hour_index(datetime(2026, 11, 1, 4, tzinfo=UTC))
        == 25
    )


def _rank(a: np.ndarray) -> int:
    """Rank modulo P by plain dense elimination (the reference the sparse solver must match)."""
    a = a.astype(np.int64) % P
    r = 0
    for c in range(a.shape[1]):
        piv = next((i for i in range(r, a.shape[0]) if a[i, c]), None)
        if piv is None:
            continue
        a[[r, piv]] = a[[piv, r]]
        a[r] = a[r] * pow(int(a[r, c]), P - 2, P) % P
        for i in range(a.shape[0]):
            if i != r and a[i, c]:
                a[i] = (a[i] - a[i, c] * a[r]) % P
        r += 1
    return r


@pytest.mark.parametrize("max_fill", [3_000_000, 3], ids=["exact", "abandoning"])
def test_solver_agrees_with_rank_arithmetic(max_fill: int) -> None:
    rng = np.random.default_rng(7)
    for _ in range(150):
        n_r, n_v = int(rng.integers(2, 20)), int(rng.integers(2, 24))
        a = (rng.random((n_r, n_v)) < rng.uniform(0.05, 0.4)) * rng.choice([-1, 1], (n_r, n_v))
        x = rng.integers(0, 20, n_v)
        sums = [rng.choice(n_v, size=min(n_v, 3), replace=False) for _ in range(3)]
        targets = [({j: 1}, 0) for j in range(n_v)] + [({int(j): 1 for j in s}, 2) for s in sums]
        sol = solve_system(sparse.csr_matrix(a.astype(np.int64)), (a @ x).astype(np.int64), targets, max_fill=max_fill)
        base = _rank(a)
        for t, (vec, const) in enumerate(targets):
            e = np.zeros(n_v, np.int64)
            for j, c in vec.items():
                e[j] = c
            determined = _rank(np.vstack([a, e])) == base
            if t in sol.values:
                assert determined
                assert sol.values[t] == const + int(e @ x)
            elif max_fill > 100:
                assert not determined


def test_equations_are_every_linear_identity_of_the_published_cells() -> None:
    """On a toy world (tract-weeks, neighborhood-days, borough-hours, city-hours of one tract x
    category x hour tensor, unlocated events at the city, uneven days as on a DST change), the
    attacker's equations hold for every tensor and span every identity of the cells."""
    edges = {"week": [0, 12], "day": [0, 2, 5, 8, 12], "hour": list(range(13))}
    tracts, nbhd_of = 5, [0, 0, 1, 2, 2]  # neighborhood 1 has a single tract
    boro_of = [0, 0, 1]
    cats = ["*", "a", "b"]
    grains = [
        ("tract", "week", tracts, nbhd_of),
        ("neighborhood", "day", 3, boro_of),
        ("borough", "hour", 2, [0, 0]),
        ("city", "hour", 1, []),
    ]
    lays = []
    for i, (level, grain, n, parent) in enumerate(grains):
        e = np.array(edges[grain], np.int64)
        shape = (n, len(cats), e.size - 1)
        lays.append(
            Layer(
                "toy",
                level,
                grain,
                [f"{level}{j}" for j in range(n)],
                cats,
                e,
                np.zeros(shape, np.int64),
                np.full(shape, UNKNOWN, np.int8),
                np.array(parent or [-1] * n, np.int64),
                rest=i == 3,
            )
        )
    system = build_system(lays)
    n_cells = sum(lay.state.size for lay in lays)
    # Cells as sums of atoms (tract or "unlocated") x category x hour.
    leaves = [*range(tracts), "unlocated"]
    atoms = [(t, c, h) for t in leaves for c in (1, 2) for h in range(12)]
    m = np.zeros((n_cells, len(atoms)))
    for j, (t, c, h) in enumerate(atoms):
        for li, lay in enumerate(lays):
            unit = t
            if t == "unlocated":
                if lay.level != "city":
                    continue
                unit = 0
            else:
                for step in range(li):
                    unit = grains[step][3][unit] if step < 3 else 0
            b = int(np.searchsorted(lay.edges, h, side="right") - 1)
            base = sum(x.state.size for x in lays[:li])
            for cat in (0, c):
                m[base + (unit * len(cats) + cat) * (lay.edges.size - 1) + b, j] = 1
    rows = system.rows.toarray()
    cell_cols = [v for v, (_, f) in enumerate(system.var_cell) if f >= 0]
    rest_cols = [v for v, (_, f) in enumerate(system.var_cell) if f < 0]
    assert cell_cols == list(range(n_cells))
    assert all(np.count_nonzero(rows[:, v]) == 1 for v in rest_cols)  # one rest unknown per borough-city equation
    pure = rows[np.abs(rows[:, rest_cols]).sum(axis=1) == 0][:, cell_cols]
    assert pure.shape[0] > 0
    assert np.allclose(pure @ m, 0)  # every equation holds for every tensor ...
    assert np.linalg.matrix_rank(pure) == n_cells - np.linalg.matrix_rank(m)  # ... and they are all the identities


@pytest.fixture(scope="module")
def attack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("attack")
    build_demo(Store(data_dir), ATTACK_SPEC, settings=Settings(data_dir=data_dir, grains=ATTACK_GRAINS))
    return data_dir


def test_live_server_releases_no_recoverable_cell(attack_dir: Path, tmp_path: Path) -> None:
    snap = Store(attack_dir).current()
    assert snap is not None
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log, served(attack_dir, log, timeout=120) as url:
        crawled = crawl_server(url, snap)
    report = attack_crawl(crawled, snap)
    for line in bench_lines(report):
        print(line)
    assert not crawled.exhausted
    assert report["withheld_cells"] > 0
    assert crawled.notes == []  # /cities and the lens echo agree
    assert report["model_mismatches"] == 0, report["mismatch_examples"]
    assert report["conflicting_releases"] == 0
    assert report["general"]["inconsistent_rows"] == {}, report["general"]
    assert report["general"]["abandoned_blocks"] == report["general"]["undecided_targets"] == 0
    # The crawl's model is the release itself: every cell at its level's grain, in local time,
    # with the same value or withheld or still-filling state as the snapshot stores.
    pub = publish(crawled)
    (city,) = pub.info
    for mine, ref in zip(layers(pub).layers, release_layers(snap, city, pub.universe[city]), strict=True):
        assert (mine.level, mine.units, mine.categories) == (ref.level, ref.units, ref.categories)
        assert np.array_equal(mine.edges, ref.edges), mine.level
        assert np.array_equal(mine.state, ref.state), mine.level
        assert np.array_equal(np.where(mine.state == KNOWN, mine.value, 0), np.where(ref.state == KNOWN, ref.value, 0)), mine.level
    summary = {name: (a["cells_recovered"], a["examples"][:2]) for name, a in report["attacks"].items() if a["cells_recovered"]}
    assert report["cells_recovered"] == 0, f"{report['cells_recovered']} withheld cells recovered: {json.dumps(summary, default=str)}"
    assert report["bounds"]["small_cells_recovered"] == 0  # non-negativity pins hidden zeros only
