"""The attacker test suite: play an attacker against a live server, using only its HTTP answers,
and count the withheld cells it recovers exactly.

    python -m bench.attack --base-url http://127.0.0.1:PORT --truth-dir DATA_DIR [--json out.json]

prints ``BENCH attack_cells_recovered <n> cells`` (and one line per attack) and writes the report.

Steps: :func:`bench.attack_api.crawl` (bounded crawl: cities, levels and their grains, categories,
time bins, windows aligned and misaligned, overlapping windows, bboxes, anomalies),
:func:`bench.attack_model.publish` (answers -> cells), the concrete attacks
(:mod:`bench.attack_concrete`, :mod:`bench.attack_expected`) and the general linear attacker
(:mod:`bench.attack_atoms`, :mod:`bench.attack_linear`): every released number is a linear equation
over the atoms (leaf x category x hour) it sums, and a withheld cell is recovered when its vector
lies in the span of those equations. What the general attacker models: released counts of
``/heat`` (bins and window totals, zeros by absence included), roll-up totals and the ``observed``
of ``/anomalies``. It does not model ``expected``, ``variance``, z, p or q (model outputs, not linear
in the counts in general: the expected-differencing attack fits them instead), drivers' excesses
(rounded model outputs) or bounds from non-negativity.

Scoring: each derived value is compared with the truth counted from the snapshot's events into the
same cell (:class:`bench.attack_truth.Truth`). ``cells_recovered`` counts withheld cells whose
derived value equals the truth (any attack); ``small_cells_recovered`` those whose true count is in
``1..k-1``; ``wrong`` lists derivations that disagree with the truth (a model error of the
attacker, or a chance match it should not trust).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from app.data.snapshot import Snapshot
from app.data.store import Store
from bench.attack_api import Client, Crawl, crawl
from bench.attack_atoms import AtomLimitError, classes
from bench.attack_concrete import Derivation, concrete_attacks
from bench.attack_expected import expected_differencing
from bench.attack_linear import solve
from bench.attack_model import Published, publish
from bench.attack_truth import Truth

__all__ = ["general_attack", "main", "run_attack", "score"]

BENCH_NAME = "attack_cells_recovered"


def general_attack(pub: Published, max_fill: int = 3_000_000) -> tuple[list[Derivation], dict[str, Any]]:
    """The general linear attacker: derivations and a summary of the system it solved."""
    try:
        system = classes(pub)
    except AtomLimitError as exc:
        return [], {"skipped": str(exc)}
    sol = solve(system.rows, system.rhs, system.targets, max_fill=max_fill)
    out = [Derivation(int(system.target_cells[t]), v, "general_linear", "in the span of the released rows") for t, v in sol.values.items()]
    summary = {
        "atoms": system.n_atoms,
        "classes": system.n_classes,
        "rows": int(system.rows.shape[0]),
        "targets": int(system.targets.shape[0]) + int(system.split.size),
        "targets_split_classes": int(system.split.size),
        "peeled_classes": sol.peeled,
        "blocks": sol.blocks,
        "largest_block": list(sol.largest_block),
        "abandoned_blocks": sol.abandoned,
        "undecided_targets": sol.undecided,
        "inconsistent_rows": int(system.inconsistent.size),
    }
    return out, summary


def score(pub: Published, derivations: list[Derivation], truth: Truth, k: int, examples: int = 5) -> dict[str, Any]:
    """Compare every derivation of a withheld cell with the truth; per-attack counts and examples."""
    targets = sorted(pub.withheld)
    true = dict(zip(targets, truth.counts([pub.keys[c] for c in targets]).tolist(), strict=True))
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"recovered": set(), "wrong": 0, "examples": [], "wrong_examples": []})
    recovered: set[int] = set()
    for d in derivations:
        if d.cell not in true:
            continue
        p = per[d.attack]
        key = pub.keys[d.cell]
        row = {
            "cell": [key.level, key.unit, key.category, key.h0 * 3600, key.h1 * 3600],
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
    attacks = {
        name: {
            "cells_recovered": len(p["recovered"]),
            "small_cells_recovered": sum(1 for c in p["recovered"] if 1 <= true[c] < k),
            "wrong": p["wrong"],
            "examples": p["examples"],
            "wrong_examples": p["wrong_examples"],
        }
        for name, p in sorted(per.items())
    }

    def listed(c: int) -> list[Any]:
        key = pub.keys[c]
        return [key.city, key.level, key.unit, key.category, key.h0 * 3600, key.h1 * 3600, true[c]]

    return {
        "recovered": sorted(listed(c) for c in recovered),
        "withheld_cells": len(targets),
        "withheld_small_cells": sum(1 for c in targets if 1 <= true[c] < k),
        "cells_recovered": len(recovered),
        "small_cells_recovered": sum(1 for c in recovered if 1 <= true[c] < k),
        "wrong": sum(a["wrong"] for a in attacks.values()),
        "attacks": attacks,
        "by_attack": {name: sorted(listed(c) for c in p["recovered"]) for name, p in sorted(per.items())},
    }


def attack_crawl(crawled: Crawl, truth: Snapshot | Truth, k: int = 11, general: bool = True) -> dict[str, Any]:
    """All attacks on an existing crawl, scored against ``truth`` (a snapshot or a :class:`Truth`)."""
    t0 = time.perf_counter()
    pub = publish(crawled)
    derivations = concrete_attacks(pub) + expected_differencing(pub)
    t1 = time.perf_counter()
    summary: dict[str, Any] = {}
    if general:
        found, summary = general_attack(pub)
        derivations += found
    t2 = time.perf_counter()
    report = score(pub, derivations, truth if isinstance(truth, Truth) else Truth.from_snapshot(truth), k)
    report |= {
        "requests": crawled.requests,
        "refused_lenses": crawled.refused,
        "budget_exhausted": crawled.exhausted,
        "cities_endpoint": crawled.cities_endpoint,
        "cities": [
            {"city": c.city, "timezone": c.clock.name, "levels": c.levels, "announced_grains": c.announced, "categories": len(c.categories)}
            for c in crawled.cities
        ],
        "published_cells": len(pub.keys),
        "cells_outside_model": pub.dropped,
        "conflicting_releases": len(pub.conflicts),
        "window_total_grain": {f"{c}/{lv}": g for (c, lv), g in pub.total_grain.items()},
        "general": summary,
        "seconds": {"concrete": round(t1 - t0, 2), "general": round(t2 - t1, 2)},
    }
    return report


def run_attack(base_url: str, truth_snapshot: Snapshot, budget: int = 4000, k: int | None = None, general: bool = True) -> dict[str, Any]:
    """Crawl ``base_url``, run every attack and score it against ``truth_snapshot``; prints the
    ``BENCH`` line and returns the report (``cells_recovered`` is the headline)."""
    t0 = time.perf_counter()
    client = Client(base_url, budget=budget)
    try:
        crawled = crawl(client)
    finally:
        client.close()
    crawl_s = time.perf_counter() - t0
    if k is None:
        k = _k_of(crawled)
    report = attack_crawl(crawled, truth_snapshot, k=k, general=general)
    report["k"] = k
    report["seconds"]["crawl"] = round(crawl_s, 2)
    report["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    print(f"BENCH {BENCH_NAME} {report['cells_recovered']} cells")
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
    args = parser.parse_args(argv)
    snap = Store(args.truth_dir).current()
    if snap is None:
        parser.error(f"no snapshot in {args.truth_dir}")
    report = run_attack(args.base_url, snap, budget=args.budget, general=not args.no_general)
    for name, a in report["attacks"].items():
        print(f"BENCH attack_{name}_recovered {a['cells_recovered']} cells")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    brief = {k: v for k, v in report.items() if k not in ("attacks", "recovered", "by_attack")}
    print(json.dumps(brief, indent=2, default=str), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
