"""What a rule watches: one validated spec per rule kind (pydantic, shared by the API, the store
and matching), and the filters every rule can carry. Bad input is refused here with the field and
the rule it breaks, before anything is stored."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

import shapely
from pydantic import BaseModel, ConfigDict, Field, field_validator
from shapely.errors import GEOSException
from shapely.geometry import shape

__all__ = [
    "AddressRule",
    "AnomalyRule",
    "AreaRule",
    "Filters",
    "KeywordRule",
    "PlateRule",
    "PolygonRule",
    "RadiusRule",
    "RuleSpec",
    "normalize_address",
    "normalize_plate",
]

EventKind = Literal["request", "incident", "closure"]
#: Vertices a polygon rule may have (a city boundary has a few thousand).
MAX_VERTICES = 20_000
MAX_RADIUS_M = 50_000.0


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Filters(_Spec):
    """Narrow any rule: only these categories, event kinds or sources (empty: all)."""

    categories: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(default_factory=list, max_length=500)
    kinds: list[EventKind] = Field(default_factory=list)
    sources: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list, max_length=50)


class RadiusRule(_Spec):
    """Events within ``radius_m`` metres (great-circle) of a point."""

    kind: Literal["radius"] = "radius"
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    radius_m: float = Field(gt=0, le=MAX_RADIUS_M, description=f"metres, at most {MAX_RADIUS_M:.0f}")


class AddressRule(_Spec):
    """Events whose provider address field (NYC ``incident_address``, Chicago ``block``) equals this
    address after normalising (case, spacing, punctuation); no geocoder is involved."""

    kind: Literal["address"] = "address"
    address: str = Field(min_length=3, max_length=200)

    @field_validator("address")
    @classmethod
    def _has_letters_or_digits(cls, value: str) -> str:
        if not normalize_address(value):
            raise ValueError("an address needs letters or digits")
        return value


class KeywordRule(_Spec):
    """Events whose descriptor, description or address contains this text (case-insensitive, a
    plain substring: no regular expressions)."""

    kind: Literal["keyword"] = "keyword"
    keyword: str = Field(min_length=2, max_length=10_000)

    @field_validator("keyword")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a keyword cannot be only spaces")
        return value


class PlateRule(_Spec):
    """Events whose text mentions this licence plate (letters and digits only, compared without
    spaces or dashes; best effort: providers rarely publish plates)."""

    kind: Literal["plate"] = "plate"
    plate: str = Field(min_length=2, max_length=16)

    @field_validator("plate")
    @classmethod
    def _normalised(cls, value: str) -> str:
        plate = normalize_plate(value)
        if not 2 <= len(plate) <= 10:
            raise ValueError("a plate has 2 to 10 letters or digits")
        return plate


class PolygonRule(_Spec):
    """Events inside a GeoJSON ``Polygon`` or ``MultiPolygon`` (longitude, latitude)."""

    kind: Literal["polygon"] = "polygon"
    geometry: dict[str, Any]

    @field_validator("geometry")
    @classmethod
    def _valid_polygon(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") not in ("Polygon", "MultiPolygon"):
            raise ValueError("geometry must be a GeoJSON Polygon or MultiPolygon")
        extra = sorted(map(str, set(value) - {"type", "coordinates"}))
        if extra:
            raise ValueError(f"geometry holds only type and coordinates, not {', '.join(extra)[:200]}")
        # The raw coordinates are checked (shape, count, finiteness) before shapely builds anything,
        # so a huge or malformed polygon is refused without the cost of building and validating it.
        _check_coordinates(value.get("coordinates"), 3 if value["type"] == "Polygon" else 4)
        try:
            geom = shape(value)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, GEOSException) as err:
            raise ValueError(f"geometry is not valid GeoJSON: {err}") from err
        try:
            valid = not geom.is_empty and geom.is_valid
            reason = "" if valid else shapely.is_valid_reason(geom)
        except GEOSException as err:
            raise ValueError(f"geometry is not a valid polygon ({err})") from err
        if not valid:
            raise ValueError(f"geometry is not a valid polygon ({reason})")
        lon0, lat0, lon1, lat1 = geom.bounds
        if not (-180 <= lon0 <= lon1 <= 180 and -90 <= lat0 <= lat1 <= 90):
            raise ValueError("geometry coordinates must be longitude, latitude in degrees")
        return value


def _check_coordinates(coordinates: Any, depth: int) -> None:
    """Refuse GeoJSON ``coordinates`` that are not nested ``depth`` lists deep down to positions
    of 2 or 3 finite numbers, or that hold more than :data:`MAX_VERTICES` positions (counted as
    they are walked, so a million-vertex polygon stops at the first vertex too many)."""
    count = 0

    def walk(node: Any, level: int) -> None:
        nonlocal count
        if not isinstance(node, list | tuple):
            raise ValueError("geometry coordinates must be nested lists of [longitude, latitude] positions")
        if level == 1:  # a position
            if not 2 <= len(node) <= 3 or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in node):
                raise ValueError("a geometry position must be [longitude, latitude] numbers")
            try:
                finite = all(math.isfinite(x) for x in node)
            except OverflowError:  # an integer too large for a float
                finite = False
            if not finite:
                raise ValueError("geometry coordinates must be finite numbers (no NaN or Infinity)")
            count += 1
            if count > MAX_VERTICES:
                raise ValueError(f"geometry has more than {MAX_VERTICES} vertices")
            return
        for child in node:
            walk(child, level - 1)

    walk(coordinates, depth)


class AreaRule(_Spec):
    """Events in one unit of the city's geography (a tract, neighborhood or borough id)."""

    kind: Literal["area"] = "area"
    level: Literal["tract", "neighborhood", "borough"]
    unit_id: str = Field(min_length=1, max_length=64)


class AnomalyRule(_Spec):
    """Newly released anomalies of a newly published snapshot: of these units (empty: any unit of
    the level, or the whole city at level ``city``), at least ``min_z`` and at most ``max_q``."""

    kind: Literal["anomaly"] = "anomaly"
    level: Literal["tract", "neighborhood", "borough", "city"]
    unit_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list, max_length=500)
    min_z: float = Field(3.0, ge=0, le=50)
    max_q: float = Field(0.05, gt=0, le=1)
    effects: list[Literal["volume", "mix", "volume+mix"]] = Field(
        default_factory=list, description="only anomalies of these effects (a category's rise in volume or in its share); empty: all"
    )


RuleSpec = Annotated[RadiusRule | AddressRule | KeywordRule | PlateRule | PolygonRule | AreaRule | AnomalyRule, Field(discriminator="kind")]


def normalize_address(text: str) -> str:
    """Upper case, punctuation to spaces, single spaces: ``"12 w. Madison  st"`` -> ``"12 W MADISON ST"``."""
    return " ".join(re.sub(r"[^0-9A-Za-z]+", " ", text).upper().split())


def normalize_plate(text: str) -> str:
    """Letters and digits only, upper case: ``"ab-12 34"`` -> ``"AB1234"``."""
    return re.sub(r"[^0-9A-Z]", "", text.upper())
