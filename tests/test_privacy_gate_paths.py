"""The grep-level check of the privacy gate: API routes and views get counts only from the lens,
and the lens gets every count it returns from :mod:`app.engine.privacy` (released cells, window
totals of released cells, gated anomalies). A new shortcut around the gate fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"
EDGE = sorted([*(APP / "api").rglob("*.py"), *(APP / "views").rglob("*.py")])
#: Engine modules that compute raw counts or scores; only the lens and privacy.py may hand them out.
RAW = {"app.engine.bins", "app.engine.detect", "app.engine.baselines", "app.engine.explain", "app.data.snapshot"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


@pytest.mark.parametrize("path", EDGE, ids=[str(p.relative_to(APP)) for p in EDGE])
def test_routes_and_views_never_import_raw_count_code(path: Path) -> None:
    raw = _imports(path) & (RAW - {"app.data.snapshot"})
    assert not raw, f"{path.name} imports {raw}: counts must come through the lens and the privacy gate"
    source = path.read_text()
    # (``tree.query`` of a spatial index is geometry, not SQL: only the snapshot's SQL helper is banned.)
    banned = r"\.events\(|\.cube\(|\.detection\(|duckdb|snapshot import[^\n]*\bquery\b|\.sql\("
    assert not re.search(banned, source), f"{path.name} reads raw events or SQL"


def test_the_lens_returns_counts_only_from_the_gate() -> None:
    source = (APP / "engine" / "lens.py").read_text()
    for released in ("release_cube(", "window_totals(", "gate_anomalies(", "self.ledger.release("):
        assert released in source
    # The raw cube is read in exactly three places: released() (through release_cube), detection()
    # and bands() (the baseline model only; the counts bands() returns come from series()).
    assert source.count("self.cube()") == 3
    tree = ast.parse(source)
    public = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name in {"unit_counts", "series", "anomalies"}]
    assert sorted(public) == ["anomalies", "series", "unit_counts"]


def test_there_are_edge_modules_to_check() -> None:
    assert len(EDGE) >= 8
