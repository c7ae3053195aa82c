"""The attacker test suite (:mod:`bench.attack`): against the real server over a small demo city no
withheld cell may be recovered; and the attacker itself must find the leaks of a fake API that
leaks on purpose (exactly those cells), and nothing when the fake follows the contract."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.data.demo import DemoSpec
from app.data.store import Store
from app.pipeline import build_demo
from bench.attack import attack_crawl, run_attack
from bench.attack_api import Client, crawl
from bench.attack_fake import CATEGORY, FakeCity
from bench.attack_time import hour_index
from bench.serve import served

#: Small enough for the general attacker to stay quick, with more than 28 days so baselines exist.
ATTACK_SPEC = DemoSpec(seed=11, end=datetime(2026, 11, 1, tzinfo=UTC), days=35, size=20_000)

# Daily counts of the fake: ten weeks of 20 a day; small days (withheld, k = 11) in some weeks.
DAYS = [20] * 70
DAYS[3] = 3  # week 0: one small day -> week minus its six released days
DAYS[15] = 4  # week 2: one small day
DAYS[29], DAYS[31] = 2, 5  # week 4: two small days -> only their sum is known, neither day
# Weekly counts of the fake: weeks 2 and 9 are small.
WEEKS = [30, 31, 3, 33, 34, 35, 36, 37, 38, 5, 40, 41]


def _attack_fake(fake: FakeCity) -> dict[str, Any]:
    client = Client("http://fake", budget=2000, transport=fake.transport())
    try:
        crawled = crawl(client)
    finally:
        client.close()
    assert not crawled.exhausted
    return attack_crawl(crawled, fake.truth(), k=fake.k)


def _cells(report: dict[str, Any], attack: str | None = None, hours: int | None = None) -> set[tuple[str, int, int]]:
    """(category, bin start, true count) of the recovered cells (of one attack; ``hours`` long)."""
    rows = report["recovered"] if attack is None else report["by_attack"].get(attack, [])
    return {(r[3], r[4], r[6]) for r in rows if hours is None or r[5] - r[4] == hours * 3600}


def _day(i: int) -> int:
    return (hour_index(FakeCity([]).start) + 24 * i) * 3600


def _week(i: int) -> int:
    return (hour_index(FakeCity([]).start) + 168 * i) * 3600


def test_attacker_recovers_exactly_the_days_a_week_leaks() -> None:
    report = _attack_fake(FakeCity(DAYS, grain="day", leaky=True))
    expected = {(cat, _day(i), DAYS[i]) for i in (3, 15) for cat in ("*", CATEGORY)}
    assert _cells(report, hours=24) == expected  # not the two small days of week 4
    assert _cells(report, "cross_grain", hours=24) == expected  # week minus its days
    assert _cells(report, "general_linear", hours=24) == expected  # the span test finds the same
    assert report["small_cells_recovered"] == len(expected)
    # The only other recoveries: withheld window totals, each the sum of its (released) weeks.
    others = [r for r in report["recovered"] if r[5] - r[4] != 24 * 3600]
    assert others
    assert all((r[5] - r[4]) % (168 * 3600) == 0 and r[5] - r[4] > 168 * 3600 for r in others)
    assert report["wrong"] == 0


def test_attacker_recovers_exactly_the_weeks_expected_values_leak() -> None:
    report = _attack_fake(FakeCity(WEEKS, grain="week", leaky=True))
    # x(s) = x(s + 4) - 5 (E(s + 5) - E(s + 4)): needs weeks s + 4 and s + 5 released.
    small = [s for s, n in enumerate(WEEKS) if n < 11]
    leaked = [s for s in small if s + 5 < len(WEEKS) and WEEKS[s + 4] >= 11 and WEEKS[s + 5] >= 11]
    assert leaked == [2]  # week 9 has no week 14
    expected = {(cat, _week(s), WEEKS[s]) for s in leaked for cat in ("*", CATEGORY)}
    assert _cells(report, "expected_differencing") == expected
    assert _cells(report) == expected
    assert report["wrong"] == 0


@pytest.mark.parametrize(("counts", "grain"), [(DAYS, "day"), (WEEKS, "week")], ids=["days", "weeks"])
def test_attacker_recovers_nothing_when_the_fake_keeps_the_contract(counts: list[int], grain: str) -> None:
    report = _attack_fake(FakeCity(counts, grain=grain, leaky=False))
    assert report["withheld_cells"] > 0
    assert report["cells_recovered"] == 0, report["by_attack"]
    assert report["general"]["targets"] > 0  # the general attacker did look at every withheld cell


@pytest.fixture(scope="module")
def attack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("attack")
    build_demo(Store(data_dir), ATTACK_SPEC)
    return data_dir


def test_live_server_releases_no_recoverable_cell(attack_dir: Path, tmp_path: Path) -> None:
    snap = Store(attack_dir).current()
    assert snap is not None
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log, served(attack_dir, log, timeout=120) as url:
        report = run_attack(url, snap)
    assert not report["budget_exhausted"]
    assert report["withheld_cells"] > 0
    assert "skipped" not in report["general"], report["general"]
    assert report["general"]["abandoned_blocks"] == 0
    summary = {name: (a["cells_recovered"], a["examples"][:2]) for name, a in report["attacks"].items() if a["cells_recovered"]}
    assert report["cells_recovered"] == 0, f"{report['cells_recovered']} withheld cells recovered: {summary}"
