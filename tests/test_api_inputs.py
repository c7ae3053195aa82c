"""Bad input is a 422 naming the parameter and the rule, never a 500: the window's date range and
length, the lens' threshold bounds as declared in the OpenAPI schema, unknown cities and categories,
and a hypothesis sweep of odd values for every query parameter of ``/heat`` and ``/anomalies``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.api.deps import EARLIEST, LATEST, MAX_WINDOW, MIN_Z_BOUNDS, Q_BOUNDS
from app.api.main import create_app
from app.config import Settings
from app.engine.lens import Lens


@pytest.fixture(scope="module")
def client(tiny_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(tiny_settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def openapi(client: TestClient) -> dict[str, Any]:
    return dict(client.get("/openapi.json").json())


def _param(openapi: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    (found,) = [p for p in openapi["paths"][path]["get"]["parameters"] if p["name"] == name]
    return dict(found)


BAD = [
    # (path, query, parameter named, words of the rule)
    ("/heat", {"since": "0001-01-01"}, "since", "from 1900-01-01 to 2200-01-01"),
    ("/heat", {"since": "9999-12-30"}, "since", "from 1900-01-01 to 2200-01-01"),
    ("/heat", {"until": "0001-01-08"}, "until", "from 1900-01-01 to 2200-01-01"),
    ("/heat", {"until": "9999-12-31"}, "until", "from 1900-01-01 to 2200-01-01"),
    ("/heat", {"since": "0001-01-01T00:00:00+05:00"}, "since", "from 1900-01-01"),  # no UTC instant at all
    ("/heat", {"until": "9999-12-31T23:00:00-05:00"}, "until", "to 2200-01-01"),
    ("/heat", {"since": "1899-12-31T23:59:59Z", "until": "1900-01-02"}, "since", "from 1900-01-01"),
    ("/heat", {"since": "2200-01-01T00:00:01Z", "until": "2200-01-02"}, "since", "to 2200-01-01"),
    ("/heat", {"since": "2025-01-01"}, "since", "366 days"),  # only since given (until: the data's end): it is named
    ("/heat", {"since": "2025-01-01", "until": "2026-10-20"}, "until", "366 days"),
    ("/heat", {"city": "x" * 101}, "city", "at most 100"),
    ("/heat", {"category": "Alien Landing"}, "category", "known: "),
    ("/anomalies", {"since": "0001-01-01"}, "since", "from 1900-01-01 to 2200-01-01"),
    ("/anomalies", {"since": "9999-12-30"}, "since", "from 1900-01-01 to 2200-01-01"),
    ("/anomalies", {"until": "0001-01-08"}, "until", "from 1900-01-01"),
    ("/anomalies", {"q": "1e-300"}, "q", "greater than or equal"),
    ("/anomalies", {"q": "1e-13"}, "q", "greater than or equal"),
    ("/anomalies", {"min_z": "1e400"}, "min_z", "finite"),
    ("/tracts", {"city": "x" * 101}, "city", "at most 100"),
]


@pytest.mark.parametrize(
    ("path", "query", "param", "rule"), BAD, ids=[f"{p}?{'&'.join(f'{k}={v}'[:40] for k, v in q.items())}" for p, q, _, _ in BAD]
)
def test_bad_input_is_a_422_naming_parameter_and_rule(client: TestClient, path: str, query: dict[str, str], param: str, rule: str) -> None:
    r = client.get(path, params=query)
    assert r.status_code == 422, r.text
    body = r.json()
    assert ("query", param) in [tuple(d["loc"]) for d in body["detail"]]
    assert rule.lower() in body["message"].lower()
    assert body["message"].startswith(f"{param}: ")


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/heat", {"since": "1900-01-01", "until": "1900-01-02"}),  # the bounds themselves are fine (and empty)
        ("/heat", {"since": "2199-12-25", "until": "2200-01-01"}),
        ("/anomalies", {"since": "1900-01-01", "until": "1900-01-08"}),
        ("/anomalies", {"q": repr(Q_BOUNDS[0]), "min_z": repr(MIN_Z_BOUNDS[1])}),
        ("/anomalies", {"q": repr(Q_BOUNDS[1]), "min_z": repr(MIN_Z_BOUNDS[0])}),
        ("/heat", {"since": "2025-11-01", "until": "2026-11-01"}),  # 365 days
    ],
)
def test_values_at_the_declared_bounds_are_answered(client: TestClient, path: str, query: dict[str, str]) -> None:
    r = client.get(path, params=query)
    assert r.status_code == 200, r.text


def test_threshold_bounds_are_the_lens_bounds_and_declared(openapi: dict[str, Any]) -> None:
    assert Lens.param["q"].bounds == Q_BOUNDS
    assert Lens.param["min_z"].bounds == MIN_Z_BOUNDS
    q, min_z = _param(openapi, "/anomalies", "q")["schema"], _param(openapi, "/anomalies", "min_z")["schema"]
    assert (q["minimum"], q["maximum"]) == Q_BOUNDS
    assert (min_z["minimum"], min_z["maximum"]) == MIN_Z_BOUNDS


@pytest.mark.parametrize("path", ["/heat", "/anomalies"])
def test_window_rules_and_categories_are_described(openapi: dict[str, Any], path: str) -> None:
    for name in ("since", "until"):
        text = _param(openapi, path, name)["description"]
        assert f"{EARLIEST:%Y-%m-%d}" in text
        assert f"{LATEST:%Y-%m-%d}" in text
        assert f"{MAX_WINDOW.days} days" in text
    assert "known" in _param(openapi, path, "category")["description"]
    assert "/cities" in _param(openapi, path, "city")["description"]


def test_unknown_category_lists_the_known_ones(client: TestClient) -> None:
    message = client.get("/heat", params={"category": "Alien Landing"}).json()["message"]
    assert "known: ARSON, " in message  # sorted, the first 30 of them
    assert message.endswith("more)")


# ---- a sweep of odd values ------------------------------------------------------------------------
_ODD_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["", " ", "nan", "inf", "-inf", "-0", "1e309", "null", "%00", "\x00", "../..", "'; DROP TABLE request;--", "☃", "a" * 300]
    ),
)
_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["1e-300", "5e-324", "1e-9", "0", "1", "1000", "1000.0000001"]),
)
_INSTANTS = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).map(datetime.isoformat),
    st.builds(
        lambda d, minutes: d.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat(),
        st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
        st.integers(min_value=-1439, max_value=1439),
    ),
    st.dates().map(str),
    # near the tiny demo (35 days to 2026-11-01), so some windows hold data
    st.datetimes(min_value=datetime(2026, 9, 1), max_value=datetime(2026, 11, 8), timezones=st.just(UTC)).map(datetime.isoformat),
)
_CHOICES = {
    "city": st.sampled_from(["nyc", "NYC", "chicago"]),
    "level": st.sampled_from(["tract", "neighborhood", "borough", "city"]),
    "time_bin": st.sampled_from(["day", "week"]),  # hour bins over a long window are slow, not wrong
    "category": st.sampled_from(["HEAT/HOT WATER", "Noise - Residential"]),
    "bbox": st.sampled_from(["-74.03,40.68,-73.90,40.88", "-180,-90,180,90", "1,2,3", "-73,40,-74,41"]),
}


def _value(name: str) -> st.SearchStrategy[str]:
    """Odd values for a parameter: junk text and numbers always, plus dates or known choices."""
    extra = _INSTANTS if name in ("since", "until") else _CHOICES.get(name, _NUMBERS)
    return st.one_of(_ODD_TEXT, _NUMBERS, extra, extra)


@pytest.mark.parametrize("path", ["/heat", "/anomalies"])
def test_no_query_is_a_server_error(client: TestClient, openapi: dict[str, Any], path: str) -> None:
    names = [p["name"] for p in openapi["paths"][path]["get"]["parameters"] if p["in"] == "query"]
    assert {"city", "level", "since", "until", "category", "limit", "offset"} <= set(names)
    queries = st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True).flatmap(
        lambda chosen: st.fixed_dictionaries({name: _value(name) for name in chosen})
    )

    @settings(max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(query=queries)
    def check(query: dict[str, str]) -> None:
        r = client.get(path, params=query)
        assert r.status_code in (200, 422), f"{path} {query} -> {r.status_code}: {r.text[:300]}"
        if r.status_code == 422:
            assert r.json()["message"]

    check()
