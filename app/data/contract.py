"""Payload contracts: a JSON Schema per provider payload, and schema-drift detection.

Drift (a field the schema does not know, a known field absent from a whole page, or a field whose
JSON type changed) never stops ingest: the fields we know keep flowing, and the drift is recorded
in ``ingest_state.drift``, shown by ``/healthz`` and counted as a metric.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

__all__ = ["CONTRACTS_DIR", "detect_drift", "load_contract", "validate_rows"]

CONTRACTS_DIR = Path(__file__).with_name("contracts")
#: A field must be missing from at least this many rows of a page before it counts as vanished
#: (providers such as SODA omit empty fields row by row).
MIN_ROWS_FOR_VANISHED = 20
_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number", dict: "object", list: "array", type(None): "null"}


@lru_cache(maxsize=32)
def load_contract(name: str) -> dict[str, Any]:
    """The JSON Schema of one payload row, ``contracts/<name>.schema.json`` (name = source name)."""
    schema: dict[str, Any] = json.loads((CONTRACTS_DIR / f"{name}.schema.json").read_text())
    return schema


def _types(schema_prop: dict[str, Any]) -> set[str]:
    t = schema_prop.get("type", [])
    types = {t} if isinstance(t, str) else set(t)
    return types | ({"integer"} if "number" in types else set())  # an integer is a number


def detect_drift(schema: dict[str, Any], rows: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """New, vanished and retyped top-level fields of ``rows`` against ``schema`` (empty lists: none)."""
    known: dict[str, Any] = schema.get("properties", {})
    seen: dict[str, set[str]] = {}
    for row in rows:
        for key, value in row.items():
            seen.setdefault(key, set()).add(_JSON_TYPES.get(type(value), "object"))
    new = sorted(k for k in seen if k not in known and not _ignored(schema, k))
    vanished = sorted(k for k in known if k not in seen and len(rows) >= MIN_ROWS_FOR_VANISHED and k in schema.get("expected", known))
    retyped = []
    for key, observed in sorted(seen.items()):
        if key in known and "type" in known[key] and (extra := observed - _types(known[key])):
            retyped.append(f"{key}: {'/'.join(sorted(_types(known[key])))} -> {'/'.join(sorted(extra))}")
    return {"new": new, "vanished": vanished, "retyped": retyped}


def _ignored(schema: dict[str, Any], key: str) -> bool:
    """Fields matched by ``patternProperties`` (e.g. SODA's ``:@computed_region_*``) are expected noise."""
    return any(re.search(p, key) for p in schema.get("patternProperties", {}))


def validate_rows(schema: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[str]:
    """Contract-test helper: every violation of ``schema`` in ``rows`` as readable messages."""
    validator = jsonschema.Draft202012Validator(schema)
    return [f"row {i}: {e.message}" for i, row in enumerate(rows) for e in validator.iter_errors(row)]
