"""Shared builders for the release and scoring tests: small synthetic cities built directly as
frames, an independent local-time clock, and an exact linear attacker on a release.

The attacker (:func:`linear_attack`) writes every released number as a linear equation over
*atoms*: tract x category x UTC hour, plus one :data:`UNLOCATED` pseudo-tract per category and hour
for the events that count at the city only. A released cell is the sum of its atoms; a cell of a
complete bin that the release does not list is a released zero, and a released zero pins every one
of its atoms to 0 (counts are non-negative), which removes those atoms. A withheld cell *leaks*
when its functional (the sum of its atoms) lies in the row space of the released equations: some
linear combination of published numbers (differences of windows, grains, parents, categories,
boxes, ...) equals it. With ``truth`` the attack iterates: a leaked cell whose value is 0 pins its
atoms too, until nothing changes.

Exactness: the rank test is Gaussian elimination over the prime field GF(p), p = 2**31 - 1, in
int64 (a product of two residues is below 2**62). A 0/1 target in the rational row space of 0/1
rows is in it mod p as well (take the combination with denominator a nonzero minor, reduce mod p),
so a *safe* verdict mod p is a proof over the rationals. The other way round a false "leak" would
need p to divide a nonzero minor of a 0/1 matrix of at most a few thousand rows; its minors here
are tiny (these systems are sums over nested unit trees and nested time bins), and the negative
controls check that real leaks are found. Before elimination the system is cut with steps that keep
row-space membership exactly: pinned atoms are dropped, the system splits into local weeks (no
published cell straddles two local weeks, since hours nest in local days and days in local weeks),
an atom in no equation makes every target holding it safe, and an atom in one equation and no
target removes that equation.

The clock here (:func:`floor_local`) is written with :mod:`zoneinfo` alone, not with
:mod:`app.engine.grains`, so the equations are an independent model of what the engine counts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

ALL = "*"
UNLOCATED = "<unlocated>"
LEVELS = ("tract", "neighborhood", "borough", "city")
_P = 2_147_483_647  # 2**31 - 1
Key = tuple[str, str, str, datetime]  # level, unit_id, category, bin_start (UTC)
Atom = tuple[str, str, datetime]  # tract (or UNLOCATED), category, UTC hour


# ---- the city clock, independently of app.engine.grains -------------------------------------------------
@lru_cache(maxsize=200_000)
def floor_local(ts: datetime, grain: str, tz: str) -> datetime:
    """UTC start of the local ``grain`` bin holding ``ts``: UTC hour, local midnight, local Monday."""
    ts = ts.astimezone(UTC)
    if grain == "hour":
        return ts.replace(minute=0, second=0, microsecond=0)
    zone = ZoneInfo(tz)
    day = ts.astimezone(zone).date()
    if grain == "week":
        day -= timedelta(days=day.weekday())
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


@lru_cache(maxsize=100_000)
def hours_of(start: datetime, grain: str, tz: str) -> tuple[datetime, ...]:
    """The UTC hours of the local ``grain`` bin starting at ``start``."""
    if grain == "hour":
        return (start,)
    out, h = [], start
    while floor_local(h, grain, tz) == start:
        out.append(h)
        h += timedelta(hours=1)
    return tuple(out)


def bins_between(lo: datetime, hi: datetime, grain: str, tz: str) -> list[datetime]:
    """Starts of the local ``grain`` bins that meet ``[lo, hi)``."""
    out: list[datetime] = []
    h = floor_local(lo, "hour", tz)
    while h < hi:
        b = floor_local(h, grain, tz)
        if not out or out[-1] != b:
            out.append(b)
        h += timedelta(hours=1)
    return out


# ---- synthetic cities ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CitySpec:
    """A synthetic city: ``tracts[b][n]`` tracts in neighborhood ``n`` of borough ``b``, categories
    ``C0..``, ``events`` events over ``weeks`` local weeks from local Monday ``start`` (a date)."""

    tracts: tuple[tuple[int, ...], ...] = ((1, 3, 2), (2, 3))
    categories: int = 4
    weeks: int = 2
    events: int = 8000
    unlocated_share: float = 0.05
    seed: int = 0
    tz: str = "America/Chicago"
    start: tuple[int, int, int] = (2026, 3, 2)  # a Monday; DST starts on 2026-03-08 in the US
    offset_hours: int = 0  # first event this many hours after the local Monday

    @property
    def first_monday(self) -> datetime:
        return datetime(*self.start, tzinfo=ZoneInfo(self.tz)).astimezone(UTC)


def city_units(spec: CitySpec, city: str = "X") -> pl.DataFrame:
    """``city, level, unit_id, name, parent_id`` of tract -> neighborhood -> borough -> city."""
    rows: list[tuple[str, str, str | None]] = [("city", city, None)]
    for b, hoods in enumerate(spec.tracts):
        borough = f"B{b}"
        rows.append(("borough", borough, city))
        for n, n_tracts in enumerate(hoods):
            hood = f"{borough}N{n}"
            rows.append(("neighborhood", hood, borough))
            rows.extend(("tract", f"{hood}T{t}", hood) for t in range(n_tracts))
    frame = pl.DataFrame(rows, schema={"level": pl.String, "unit_id": pl.String, "parent_id": pl.String}, orient="row")
    return frame.with_columns(city=pl.lit(city), name=pl.col("unit_id")).select("city", "level", "unit_id", "name", "parent_id")


def city_events(spec: CitySpec, units: pl.DataFrame) -> pl.DataFrame:
    """Events with realistic sparsity: tracts of very different activity (Pareto weights),
    categories of geometric shares, quiet nights, and some unlocated events (``tract_id`` null)."""
    rng = np.random.default_rng(spec.seed)
    tracts = units.filter(pl.col("level") == "tract")["unit_id"].to_list()
    t_weight = rng.pareto(1.2, len(tracts)) + 0.2
    t_weight /= t_weight.sum()
    c_weight = 0.6 ** np.arange(spec.categories)
    c_weight /= c_weight.sum()
    first = spec.first_monday + timedelta(hours=spec.offset_hours)
    end = datetime(*spec.start, tzinfo=ZoneInfo(spec.tz)) + timedelta(weeks=spec.weeks)
    hours = int((end.astimezone(UTC) - first).total_seconds() // 3600)
    local_hour = np.array([(first + timedelta(hours=i)).astimezone(ZoneInfo(spec.tz)).hour for i in range(hours)])
    h_weight = 1.0 + 0.9 * np.sin((local_hour - 9) * 2 * np.pi / 24)
    h_weight /= h_weight.sum()
    n = spec.events
    hour = rng.choice(hours, n, p=h_weight)
    seconds = rng.integers(0, 3600, n)
    tract = rng.choice(len(tracts), n, p=t_weight)
    located = rng.random(n) >= spec.unlocated_share
    cat = rng.choice(spec.categories, n, p=c_weight)
    return pl.DataFrame(
        {
            "kind": ["request"] * n,
            "category": [f"C{c}" for c in cat],
            "tract_id": [tracts[t] if ok else None for t, ok in zip(tract, located, strict=True)],
            "ts": [first + timedelta(hours=int(h), seconds=int(s)) for h, s in zip(hour, seconds, strict=True)],
            "lon": [None] * n,
            "lat": [None] * n,
        },
        schema={
            "kind": pl.String,
            "category": pl.String,
            "tract_id": pl.String,
            "ts": pl.Datetime("us", "UTC"),
            "lon": pl.Float64,
            "lat": pl.Float64,
        },
    ).sort("ts")


def unit_members(units: pl.DataFrame) -> dict[str, dict[str, list[str]]]:
    """Per level, per unit: the tracts it sums (the city also sums :data:`UNLOCATED`)."""
    parent = dict(zip(units["unit_id"].to_list(), units["parent_id"].to_list(), strict=True))
    level_of = dict(zip(units["unit_id"].to_list(), units["level"].to_list(), strict=True))
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for tract in sorted(u for u, lvl in level_of.items() if lvl == "tract"):
        u: str | None = tract
        while u is not None:
            out[level_of[u]][u].append(tract)
            u = parent[u]
    for city in out["city"]:
        out["city"][city].append(UNLOCATED)
    return {lvl: dict(v) for lvl, v in out.items()}


def atom_counts(events: pl.DataFrame) -> dict[Atom, int]:
    """The true atoms: events per tract (or :data:`UNLOCATED`), category and UTC hour."""
    out: dict[Atom, int] = defaultdict(int)
    for tract, cat, ts in events.select("tract_id", "category", "ts").iter_rows():
        out[(tract or UNLOCATED, cat, ts.replace(minute=0, second=0, microsecond=0))] += 1
    return dict(out)


def cell_atoms(key: Key, members: Mapping[str, Mapping[str, list[str]]], cats: list[str], grains: Mapping[str, str], tz: str) -> list[Atom]:
    """The atoms a cell sums."""
    level, unit, cat, start = key
    cs = cats if cat == ALL else [cat]
    return [(t, c, h) for t in members[level][unit] for c in cs for h in hours_of(start, grains[level], tz)]


def true_count(
    key: Key, atoms: Mapping[Atom, int], members: Mapping[str, Mapping[str, list[str]]], cats: list[str], grains: Mapping[str, str], tz: str
) -> int:
    return sum(atoms.get(a, 0) for a in cell_atoms(key, members, cats, grains, tz))


# ---- the linear attacker ------------------------------------------------------------------------------
@dataclass
class Attack:
    """What the attacker computed: withheld cells it determines, split by how."""

    pinned: list[Key] = field(default_factory=list)  # every atom pinned by released zeros: known to be 0
    solved: list[Key] = field(default_factory=list)  # in the row space of the released equations
    checked: int = 0
    equations: int = 0
    atoms: int = 0

    @property
    def leaks(self) -> list[Key]:
        return self.pinned + self.solved


def released_equations(
    release: pl.DataFrame,
    members: Mapping[str, Mapping[str, list[str]]],
    cats: list[str],
    grains: Mapping[str, str],
    tz: str,
    week: datetime,
    complete_until: Mapping[str, datetime],
) -> tuple[dict[Key, int], list[Key]]:
    """The released numbers of one local week (listed cells with a count, and the zeros of complete
    bins that the release does not list) and the withheld cells of that week (listed, count null)."""
    listed = {(r[0], r[1], r[2], r[3]): r[4] for r in release.select("level", "unit_id", "category", "bin_start", "count").iter_rows()}
    released: dict[Key, int] = {}
    withheld: list[Key] = []
    for level, grain in grains.items():
        if level not in members:
            continue
        for start in bins_between(week, week + timedelta(days=7, hours=1), grain, tz):
            if floor_local(start, "week", tz) != week:
                continue
            for unit in members[level]:
                for cat in [*cats, ALL]:
                    key = (level, unit, cat, start)
                    if key in listed:
                        if listed[key] is None:
                            withheld.append(key)
                        else:
                            released[key] = int(listed[key])
                    elif start < complete_until[level]:
                        released[key] = 0
    return released, withheld


def linear_attack(
    release: pl.DataFrame,
    units: pl.DataFrame,
    categories: Iterable[str],
    tz: str,
    grains: Mapping[str, str],
    complete_until: Mapping[str, datetime],
    span: tuple[datetime, datetime],
    truth: Mapping[Atom, int] | None = None,
) -> Attack:
    """Withheld cells of ``release`` (rows with a null ``count``) that a linear attacker who also
    uses the zeros determines exactly (see the module docstring). ``span``: UTC instants whose
    local weeks are attacked (a release has no cell outside them)."""
    cats = sorted(categories)
    members = unit_members(units)
    rel = release.with_columns(
        _week=pl.col("bin_start").map_elements(lambda b: floor_local(b, "week", tz), return_dtype=pl.Datetime("us", "UTC"))
    )
    out = Attack()
    for week in bins_between(span[0], span[1], "week", tz):
        released, withheld = released_equations(rel.filter(pl.col("_week") == week), members, cats, grains, tz, week, complete_until)
        _attack_week(out, released, withheld, members, cats, grains, tz, truth)
    return out


def _attack_week(
    out: Attack,
    released: Mapping[Key, int],
    withheld: list[Key],
    members: Mapping[str, Mapping[str, list[str]]],
    cats: list[str],
    grains: Mapping[str, str],
    tz: str,
    truth: Mapping[Atom, int] | None,
) -> None:
    atoms_of = {key: cell_atoms(key, members, cats, grains, tz) for key in [*released, *withheld]}
    pinned: set[Atom] = set()
    for key, value in released.items():
        if value == 0:
            pinned.update(atoms_of[key])
    positive = [key for key, value in released.items() if value > 0]
    open_keys = list(withheld)
    out.checked += len(withheld)
    while open_keys:
        col: dict[Atom, int] = {}

        def row(key: Key, col: dict[Atom, int] = col) -> frozenset[int]:
            return frozenset(col.setdefault(a, len(col)) for a in atoms_of[key] if a not in pinned)

        eqs = list({r for key in positive if (r := row(key))})
        rows = {key: row(key) for key in open_keys}
        zero = [key for key, r in rows.items() if not r]
        candidates = [(key, r) for key, r in rows.items() if r]
        eqs, candidates = _peel(eqs, candidates)
        solved = _in_row_space(eqs, candidates) if candidates else []
        out.pinned.extend(zero)
        out.solved.extend(solved)
        out.equations, out.atoms = out.equations + len(eqs), out.atoms + len(col)
        found = set(zero) | set(solved)
        open_keys = [key for key in open_keys if key not in found]
        # A determined cell whose value is 0 pins its atoms: attack again with them.
        new_zeros = [key for key in solved if truth is not None and sum(truth.get(a, 0) for a in atoms_of[key]) == 0]
        if not new_zeros:
            return
        for key in new_zeros:
            pinned.update(atoms_of[key])


def _peel(
    eqs: list[frozenset[int]], targets: list[tuple[Key, frozenset[int]]]
) -> tuple[list[frozenset[int]], list[tuple[Key, frozenset[int]]]]:
    """Exact cuts to a fixpoint: an atom in no equation makes every target holding it safe (dropped);
    an atom in exactly one equation and in no target removes that equation (it cannot be used)."""
    while True:
        in_eq: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(eqs):
            for a in r:
                in_eq[a].append(i)
        keep = [(k, r) for k, r in targets if all(a in in_eq for a in r)]
        in_tgt: set[int] = set().union(*(r for _, r in keep))
        drop = {ids[0] for a, ids in in_eq.items() if len(ids) == 1 and a not in in_tgt}
        if len(keep) == len(targets) and not drop:
            return eqs, keep
        targets = keep
        eqs = [r for i, r in enumerate(eqs) if i not in drop]


def _in_row_space(eqs: list[frozenset[int]], targets: list[tuple[Key, frozenset[int]]]) -> list[Key]:
    """Keys of the targets whose 0/1 row lies in the span of ``eqs`` over GF(p)."""
    if not eqs:
        return []
    atoms = sorted(set().union(*eqs, *(r for _, r in targets)))
    index = {a: i for i, a in enumerate(atoms)}
    a = np.zeros((len(eqs), len(atoms)), np.int64)
    for i, r in enumerate(eqs):
        a[i, [index[x] for x in r]] = 1
    basis, pivots = echelon_mod_p(a)
    out = []
    for key, r in targets:
        f = np.zeros(len(atoms), np.int64)
        f[[index[x] for x in r]] = 1
        if reduces_to_zero(basis, pivots, f):
            out.append(key)
    return out


def echelon_mod_p(a: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Reduced row echelon form of the integer matrix ``a`` over GF(p) and its pivot columns."""
    a = a % _P
    n_rows, n_cols = a.shape
    pivots: list[int] = []
    r = 0
    for c in range(n_cols):
        if r == n_rows:
            break
        nz = np.flatnonzero(a[r:, c])
        if nz.size == 0:
            continue
        p = r + int(nz[0])
        if p != r:
            a[[r, p]] = a[[p, r]]
        a[r] = (a[r] * pow(int(a[r, c]), _P - 2, _P)) % _P
        others = np.flatnonzero(a[:, c])
        others = others[others != r]
        if others.size:
            a[others] = (a[others] - (a[others, c : c + 1] * a[r]) % _P) % _P
        pivots.append(c)
        r += 1
    return a[:r], pivots


def reduces_to_zero(basis: np.ndarray, pivots: list[int], f: np.ndarray) -> bool:
    """True when ``f`` lies in the row space of the reduced echelon ``basis``."""
    f = f % _P
    for i, c in enumerate(pivots):
        if f[c]:
            f = (f - (f[c] * basis[i]) % _P) % _P
    return not f.any()
