"""The attacker test suite: play an attacker against a live server, using only its HTTP answers,
and count the withheld cells it recovers exactly.

    python -m bench.attack --base-url http://127.0.0.1:PORT --truth-dir DATA_DIR [--json out.json]

prints ``BENCH attack_cells_recovered <n> cells`` (the headline), one line per attack, the withheld
sums determined and the bounds findings, and writes the report.

Steps: :func:`bench.attack_api.crawl` (every level x category at the level's grain -- the whole
release -- plus coarser bins, window totals of aligned, misaligned, DST-spanning and still-filling
windows, bboxes, anomalies; grains, time zone and ``published_until`` read from the lens echo),
:func:`bench.attack_model.publish` (answers -> cells: withheld, released, zeros by absence in
complete bins, unknown in still-filling ones), the concrete attacks (:mod:`bench.attack_concrete`,
:mod:`bench.attack_expected`) and the general attacker (:mod:`bench.attack_system`,
:mod:`bench.attack_linear`): every grain cell is a variable, the identities every world satisfies
(``"*"`` = sum of categories; a parent's cells = its children's, level by level; every other
published number = the sum of the cells it covers) are the equations, and a withheld cell is
recovered when it lies in their span. It does not model ``expected``, ``variance``, z, p or q
(model outputs of released cells: the expected-differencing attack fits them instead) or drivers'
excesses (rounded model outputs).

Figures (each derived value is compared with the truth counted from the snapshot's events into
the same cell, :class:`bench.attack_truth.Truth`):

* ``cells_recovered`` (the headline): withheld *cells of the release* (one bin of the level's
  grain) recovered by a linear derivation (any attack); ``small_cells_recovered``: those with a
  true count in ``1..k-1``.
* ``sums_recovered``: numbers the API shows withheld because a summed cell is (coarser bins, window
  totals) whose value a linear derivation gives (e.g. a neighborhood-week is the sum of its tracts'
  released week cells): not cells of the release, reported apart.
* ``bounds``: cells pinned only with non-negativity (an equation with RHS 0 over counts of one
  sign: ``x + y = 0`` gives ``x = y = 0``), then linear algebra; not linear recoveries.
* ``wrong``: derivations that disagree with the truth (a model error of the attacker, or a chance
  match of a fitted model it should not trust).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from app.data.snapshot import Snapshot
from app.data.store import Store
from bench.attack_api import Client, Crawl, crawl
from bench.attack_concrete import Derivation, concrete_attacks
from bench.attack_expected import expected_differencing
from bench.attack_linear import solve_system
from bench.attack_model import Published, layers, publish
from bench.attack_system import build_system, zero_sums
from bench.attack_truth import Truth

__all__ = ["attack_crawl", "bench_lines", "crawl_server", "general_attack", "main", "run_attack", "score"]

BENCH_NAME = "attack_cells_recovered"
SUMS_NAME = "attack_withheld_sums_determined"
BOUNDS_NAME = "attack_bounds_findings"


def general_attack(
    pub: Published, max_fill: int = 3_000_000, bounds_rounds: int = 4
) -> tuple[list[Derivation], list[Derivation], dict[str, Any]]:
    """The general attacker: withheld cells the published numbers determine *linearly* (span of
    the equations of :mod:`bench.attack_system`), and, separately, those they determine once
    non-negativity is used too (bounds: an equation with RHS 0 over counts of one sign pins them
    all to 0, :func:`bench.attack_system.zero_sums`). Returns (linear, bounds-only, summary)."""
    model = layers(pub)
    system = build_system(model.layers, model.sums)
    targets: list[tuple[dict[int, int], int]] = []
    cells: list[int] = []
    for cid, (li, flat) in model.grain_cells.items():
        targets.append(({int(system.var_of[li][flat]): 1}, 0))
        cells.append(cid)
    for i, vec, const in system.sum_targets:
        targets.append((vec, const))
        cells.append(model.sum_cells[i])
    sol = solve_system(system.rows, system.rhs, targets, max_fill=max_fill)
    linear = [Derivation(cells[t], v, "general_linear", "in the span of the published equations") for t, v in sol.values.items()]
    # Bounds: pin what non-negativity pins, solve, substitute what that solved, repeat.
    nonneg = np.ones(system.rows.shape[1], np.bool_)  # cells, unnamed categories, unlocated rests: all counts
    zeros: dict[int, int] = {}
    bsol = None
    for _ in range(bounds_rounds):
        new = zero_sums(system.rows, system.rhs, nonneg, {**(bsol or sol).var_values, **zeros})
        if not new:
            break
        zeros |= new
        zv = np.fromiter(zeros, np.int64, len(zeros))
        pin = sparse.csr_matrix((np.ones(zv.size, np.int64), (np.arange(zv.size), zv)), shape=(zv.size, system.rows.shape[1]))
        rows = sparse.vstack([system.rows, pin]).tocsr()
        rhs = np.concatenate([system.rhs, np.zeros(zv.size, np.int64)])
        bsol = solve_system(rows, rhs, targets, max_fill=max_fill)
    bounded = [
        Derivation(cells[t], v, "bounds_zero_sum", "pinned by equations whose counts sum to 0 (non-negativity)")
        for t, v in (bsol.values.items() if bsol else ())
        if t not in sol.values
    ]
    n_rows = dict.fromkeys(("star", "chain", "sum"), 0)
    for kind in system.kinds:
        n_rows[kind] += 1
    summary = {
        "variables": int(system.rows.shape[1]),
        "rows": n_rows,
        "targets": len(targets),
        "grain_targets": len(model.grain_cells),
        "sum_targets": len(system.sum_targets),
        "peeled": sol.peeled,
        "eliminated_rows": sol.eliminated,
        "core": [sol.core_rows, sol.core_vars],
        "blocks": sol.blocks,
        "largest_block": list(sol.largest_block),
        "abandoned_blocks": sol.abandoned,
        "undecided_targets": sol.undecided,
        "decided_exactly": sol.checked,
        "inconsistent_rows": dict(system.inconsistent) | ({"solver": sol.inconsistent} if sol.inconsistent else {}),
        "sums_outside_model": system.outside,
        "bounds_zeros": len(zeros),
        "bounds_inconsistent_rows": bsol.inconsistent if bsol else 0,
    }
    return linear, bounded, summary


def score(pub: Published, derivations: list[Derivation], truth: Truth, k: int, examples: int = 5) -> dict[str, Any]:
    """Compare every derivation of a withheld number with the truth; per-attack counts and examples.

    A withheld number is either a *cell* of the release (one bin of its level's grain: what the
    privacy rule withholds; ``cells_recovered`` counts these) or a *sum* shown withheld because a
    summed cell is (a coarser bin, a window total: ``sums_recovered``)."""
    targets = sorted(pub.withheld)
    true = dict(zip(targets, truth.counts([pub.keys[c] for c in targets]).tolist(), strict=True))
    steps: dict[tuple[str, str], dict[int, int]] = {}

    def grain_cell(c: int) -> bool:
        """Whether the cell is one bin of its level's grain (a cell of the release)."""
        key = pub.keys[c]
        nxt = steps.get((key.city, key.level))
        if nxt is None:
            info = pub.info[key.city]
            lo, hi = pub.universe[key.city]
            bins = info.clock.bins(datetime.fromtimestamp(lo * 3600, UTC), datetime.fromtimestamp(hi * 3600, UTC), info.grains[key.level])
            nxt = steps[(key.city, key.level)] = dict(bins)
        return nxt.get(key.h0) == key.h1

    is_cell = {c: grain_cell(c) for c in targets}
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"recovered": set(), "wrong": 0, "examples": [], "wrong_examples": []})
    recovered: set[int] = set()
    for d in derivations:
        if d.cell not in true:
            continue
        p = per[d.attack]
        key = pub.keys[d.cell]
        row = {
            "cell": [key.level, key.unit, key.category, key.h0 * 3600, key.h1 * 3600],
            "kind": "cell" if is_cell[d.cell] else "sum",
            "derived": d.value,
            "true": true[d.cell],
            "how": d.evidence,
        }
        if d.value == true[d.cell]:
            if d.cell not in p["recovered"] and len(p["examples"]) < examples:
                p["examples"].append(row)
            p["recovered"].add(d.cell)
            recovered.add(d.cell)
        else:
            p["wrong"] += 1
            if len(p["wrong_examples"]) < examples:
                p["wrong_examples"].append(row)

    def by_value(cells: set[int]) -> dict[str, int]:
        out = {"0": 0, f"1..{k - 1}": 0, f">={k}": 0}
        for c in cells:
            out["0" if true[c] == 0 else f"1..{k - 1}" if true[c] < k else f">={k}"] += 1
        return out

    def cells_of(found: set[int]) -> set[int]:
        return {c for c in found if is_cell[c]}

    attacks = {
        name: {
            "cells_recovered": len(cells_of(p["recovered"])),
            "small_cells_recovered": sum(1 for c in cells_of(p["recovered"]) if 1 <= true[c] < k),
            "sums_recovered": len(p["recovered"]) - len(cells_of(p["recovered"])),
            "wrong": p["wrong"],
            "examples": p["examples"],
            "wrong_examples": p["wrong_examples"],
        }
        for name, p in sorted(per.items())
    }

    def listed(c: int) -> list[Any]:
        key = pub.keys[c]
        return [key.city, key.level, key.unit, key.category, key.h0 * 3600, key.h1 * 3600, true[c]]

    cells = cells_of(recovered)
    return {
        "recovered": sorted(listed(c) for c in recovered),
        "withheld_cells": sum(is_cell.values()),
        "withheld_small_cells": sum(1 for c in targets if is_cell[c] and 1 <= true[c] < k),
        "withheld_sums": len(targets) - sum(is_cell.values()),
        "cells_recovered": len(cells),
        "small_cells_recovered": sum(1 for c in cells if 1 <= true[c] < k),
        "cells_by_value": by_value(cells),
        "sums_recovered": len(recovered) - len(cells),
        "sums_by_value": by_value(recovered - cells),
        "wrong": sum(a["wrong"] for a in attacks.values()),
        "attacks": attacks,
        "by_attack": {name: sorted(listed(c) for c in p["recovered"]) for name, p in sorted(per.items())},
    }


def attack_crawl(crawled: Crawl, truth: Snapshot | Truth, k: int = 11, general: bool = True) -> dict[str, Any]:
    """All attacks on an existing crawl, scored against ``truth`` (a snapshot or a :class:`Truth`)."""
    t0 = time.perf_counter()
    pub = publish(crawled)
    tp = time.perf_counter()
    derivations = concrete_attacks(pub) + expected_differencing(pub)
    t1 = time.perf_counter()
    summary: dict[str, Any] = {}
    bounded: list[Derivation] = []
    if general:
        found, bounded, summary = general_attack(pub)
        derivations += found
    t2 = time.perf_counter()
    truth = truth if isinstance(truth, Truth) else Truth.from_snapshot(truth)
    t3 = time.perf_counter()
    report = score(pub, derivations, truth, k)
    bounds = score(pub, bounded, truth, k)  # cells the general linear attacker did not determine
    report |= {
        "bounds": {
            key: bounds[key]
            for key in ("cells_recovered", "small_cells_recovered", "cells_by_value", "sums_recovered", "sums_by_value", "wrong", "attacks")
        },
        "requests": crawled.requests,
        "refused_lenses": crawled.refused,
        "budget_exhausted": crawled.exhausted,
        "cities_endpoint": crawled.cities_endpoint,
        "notes": crawled.notes,
        "cities": [
            {
                "city": c.city,
                "timezone": c.clock.name,
                "levels": c.levels,
                "grains": c.grains,
                "announced_grains": c.announced,
                "published_until": {lv: t.isoformat() if t else None for lv, t in c.published_until.items()},
                "categories": len(c.categories),
                "categories_complete": c.categories_complete,
                "categories_source": c.categories_source,
            }
            for c in crawled.cities
        ],
        "published_cells": len(pub.keys),
        "incomplete_rows": pub.incomplete,
        "cells_outside_model": pub.dropped,
        "conflicting_releases": len(pub.conflicts),
        "model_mismatches": len(pub.mismatches),
        "mismatch_examples": pub.mismatches[:10],
        "general": summary,
        "seconds": {
            "model": round(tp - t0, 2),
            "concrete": round(t1 - tp, 2),
            "general": round(t2 - t1, 2),
            "truth": round(t3 - t2, 2),
            "score": round(time.perf_counter() - t3, 2),
        },
    }
    return report


def crawl_server(base_url: str, truth_snapshot: Snapshot | None = None, budget: int = 4000, name_categories: bool = True) -> Crawl:
    """Crawl a live server. ``name_categories``: give the attacker every category name of
    ``truth_snapshot`` (the dashboard's category selector lists them all, while the API's own
    listings may stop after a few), so it can ask for each one."""
    hint = None
    if name_categories and truth_snapshot is not None:
        hint = {c: sorted(truth_snapshot.events(c)["category"].unique().drop_nulls().to_list()) for c in truth_snapshot.cities()}
    client = Client(base_url, budget=budget)
    try:
        return crawl(client, categories=hint)
    finally:
        client.close()


def bench_lines(report: dict[str, Any]) -> list[str]:
    """The ``BENCH`` lines of a report: the headline (withheld cells of the release recovered by
    linear derivations), one line per attack, withheld sums determined, bounds findings."""
    lines = [f"BENCH {BENCH_NAME} {report['cells_recovered']} cells"]
    lines += [f"BENCH attack_{name}_recovered {a['cells_recovered']} cells" for name, a in report["attacks"].items()]
    lines.append(f"BENCH {SUMS_NAME} {report['sums_recovered']} cells")
    lines.append(f"BENCH {BOUNDS_NAME} {report['bounds']['cells_recovered']} cells")
    return lines


def run_attack(
    base_url: str,
    truth_snapshot: Snapshot,
    budget: int = 4000,
    k: int | None = None,
    general: bool = True,
    name_categories: bool = True,
) -> dict[str, Any]:
    """Crawl ``base_url``, run every attack and score it against ``truth_snapshot``; prints the
    ``BENCH`` lines (:func:`bench_lines`) and returns the report (``cells_recovered`` is the
    headline)."""
    t0 = time.perf_counter()
    crawled = crawl_server(base_url, truth_snapshot, budget, name_categories)
    crawl_s = time.perf_counter() - t0
    report = attack_crawl(crawled, truth_snapshot, k=k if k is not None else _k_of(crawled), general=general)
    report["k"] = k if k is not None else _k_of(crawled)
    report["seconds"]["crawl"] = round(crawl_s, 2)
    report["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    for line in bench_lines(report):
        print(line)
    return report


def _k_of(crawled: Crawl) -> int:
    for r in crawled.heat:
        privacy = r.body.get("privacy") or {}
        if privacy.get("k"):
            return int(privacy["k"])
    return 11


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True, help="the live server, e.g. http://127.0.0.1:5006")
    parser.add_argument("--truth-dir", required=True, type=Path, help="data dir of the snapshot the server serves (for scoring only)")
    parser.add_argument("--budget", type=int, default=4000, help="most requests the crawl may make")
    parser.add_argument("--json", type=Path, help="write the full report here")
    parser.add_argument("--no-general", action="store_true", help="skip the general linear attacker")
    parser.add_argument("--api-categories", action="store_true", help="only ask for the categories the API itself names")
    args = parser.parse_args(argv)
    snap = Store(args.truth_dir).current()
    if snap is None:
        parser.error(f"no snapshot in {args.truth_dir}")
    report = run_attack(args.base_url, snap, budget=args.budget, general=not args.no_general, name_categories=not args.api_categories)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    brief = {k: v for k, v in report.items() if k not in ("attacks", "recovered", "by_attack", "bounds")}
    brief["bounds"] = {k: v for k, v in report["bounds"].items() if k != "attacks"}
    print(json.dumps(brief, indent=2, default=str), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
