"""The rule being written on the alerts page: every field of the form as a parameter, and the one
place that turns them into the API's :class:`~app.api.schemas_alerts.RuleIn` (so the page refuses
exactly what ``POST /rules`` refuses, with pydantic's message naming the field)."""

from __future__ import annotations

from typing import Any

import param
from pydantic import ValidationError

from app.alerts.rules import MAX_RADIUS_M
from app.api.schemas_alerts import RuleIn

__all__ = ["AREA_LEVELS", "RULE_KINDS", "RuleDraft", "error_text"]

#: The rule kinds the page offers, in the order of its kind picker.
RULE_KINDS = ("radius", "polygon", "area", "address", "keyword", "plate", "anomaly")
#: Levels an area rule may name (an anomaly rule may also watch the whole city).
AREA_LEVELS = ("tract", "neighborhood", "borough")


def _clock(value: str) -> str | None:
    """A time field as the API takes it: blank means none."""
    return value.strip() or None


class RuleDraft(param.Parameterized):
    """The form's values; :meth:`rule_in` validates them as one rule.

    >>> RuleDraft(rule_name="Near the office", kind="radius", lat=40.75, lon=-73.99).rule_in("nyc").spec.radius_m
    500.0
    """

    rule_name = param.String(default="", doc="The rule's name, as its alerts and the rules list show it.")
    kind = param.Selector[str](default="radius", objects=list(RULE_KINDS), doc="What the rule watches.")
    lat = param.Number(default=None, allow_None=True, doc="Radius rules: the centre's latitude (a map click sets it).")
    lon = param.Number(default=None, allow_None=True, doc="Radius rules: the centre's longitude (a map click sets it).")
    radius_m = param.Number(default=500.0, allow_None=True, doc=f"Radius rules: metres (at most {MAX_RADIUS_M:.0f}).")
    polygon = param.List(default=[], doc="Polygon rules: the ring drawn on the map, as [lon, lat] pairs (not closed).")
    level = param.Selector[str](default="tract", objects=list(AREA_LEVELS), doc="Area rules: the level of the unit.")
    unit_id = param.String(default="", doc="Area rules: the unit's id (a map click inside it, or the unit list).")
    address = param.String(default="", doc="Address rules: the provider's address, as it publishes it.")
    keyword = param.String(default="", doc="Keyword rules: a plain substring of descriptor, description or address.")
    plate = param.String(default="", doc="Plate rules: the licence plate.")
    anomaly_level = param.Selector[str](default="neighborhood", objects=[*AREA_LEVELS, "city"], doc="Anomaly rules: the level watched.")
    anomaly_units = param.List(default=[], doc="Anomaly rules: the units watched (empty: every unit of the level).")
    min_z = param.Number(default=3.0, doc="Anomaly rules: the smallest z-score that fires.")
    max_q = param.Number(default=0.05, doc="Anomaly rules: the largest q-value (false-discovery rate) that fires.")
    categories = param.List(default=[], doc="Only these categories (empty: every category).")
    timezone = param.String(default="", doc="IANA zone of quiet hours, digests and the daily cap (blank: the city's).")
    daily_cap = param.Integer(default=None, allow_None=True, doc="Alerts sent per local day at most (blank: no cap).")
    quiet_start = param.String(default="", doc="Local HH:MM from which alerts are held (with quiet_end).")
    quiet_end = param.String(default="", doc="Local HH:MM at which held alerts go out.")
    digest_at = param.String(default="", doc="Local HH:MM of one daily digest instead of single alerts (blank: none).")
    endpoint_ids = param.List(default=[], doc="The key's endpoints the rule delivers to.")

    def spec(self) -> dict[str, Any]:
        """The kind's fields as the rule spec's JSON (unvalidated: :meth:`rule_in` checks it)."""
        if self.kind == "radius":
            return {"kind": "radius", "lat": self.lat, "lon": self.lon, "radius_m": self.radius_m}
        if self.kind == "polygon":
            ring = [list(p) for p in self.polygon]
            closed = ring + ring[:1] if ring and ring[0] != ring[-1] else ring
            return {"kind": "polygon", "geometry": {"type": "Polygon", "coordinates": [closed]}}
        if self.kind == "area":
            return {"kind": "area", "level": self.level, "unit_id": self.unit_id}
        if self.kind == "anomaly":
            units = [] if self.anomaly_level == "city" else list(self.anomaly_units)
            return {"kind": "anomaly", "level": self.anomaly_level, "unit_ids": units, "min_z": self.min_z, "max_q": self.max_q}
        field = {"address": "address", "keyword": "keyword", "plate": "plate"}[self.kind]
        return {"kind": self.kind, field: getattr(self, field)}

    def rule_in(self, city: str, *, preview: bool = False) -> RuleIn:
        """The draft as the API's rule body; raises pydantic's ``ValidationError`` on bad input.
        A preview needs no name yet (one is made up from the kind)."""
        return RuleIn.model_validate(
            {
                "name": self.rule_name.strip() or (f"Preview of a {self.kind} rule" if preview else ""),
                "city": city,
                "spec": self.spec(),
                "filters": {"categories": list(self.categories)},
                "timezone": self.timezone.strip() or None,
                "daily_cap": self.daily_cap,
                "quiet_start": _clock(self.quiet_start),
                "quiet_end": _clock(self.quiet_end),
                "digest_at": _clock(self.digest_at),
                "endpoint_ids": list(self.endpoint_ids),
            }
        )


#: What a validation error's location is called on the form (the spec's own fields keep their names).
_FIELD_NAMES = {
    "name": "Rule name",
    "lat": "Latitude",
    "lon": "Longitude",
    "radius_m": "Radius (m)",
    "geometry": "Polygon",
    "unit_id": "Unit",
    "address": "Address",
    "keyword": "Keyword",
    "plate": "Plate",
    "unit_ids": "Units",
    "min_z": "Minimum z-score",
    "max_q": "Largest q-value",
    "timezone": "Time zone",
    "daily_cap": "Daily cap",
    "quiet_start": "Quiet from",
    "quiet_end": "Quiet until",
    "digest_at": "Digest at",
    "categories": "Categories",
}


def error_text(err: ValidationError) -> str:
    """Pydantic's messages, one line per broken field, named as the form names it (the spec's
    kind tag, which pydantic puts in the location, is left out)."""
    lines = []
    for e in err.errors():
        loc = [str(part) for part in e["loc"]]
        loc = loc[2:] if loc[:1] == ["spec"] else loc[1:] if loc[:1] == ["filters"] else loc  # "spec.<kind tag>." dropped
        field = next((_FIELD_NAMES[p] for p in reversed(loc) if p in _FIELD_NAMES), ".".join(loc) or "Rule")
        lines.append(f"{field}: {e['msg']}")
    return "\n".join(dict.fromkeys(lines))
