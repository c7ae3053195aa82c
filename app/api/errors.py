"""Error shapes of the API: every bad input is a 422 that names the parameter and the rule, in
FastAPI's own validation-error format, so clients handle one shape whoever raised it; a ``dp``
release the privacy budget cannot pay for is a 403 saying so."""

from __future__ import annotations

import math
import reprlib
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

__all__ = ["NoSnapshotError", "install_error_handlers", "unprocessable"]


class NoSnapshotError(RuntimeError):
    """No snapshot has been published yet (the demo or first ingest is still building)."""


def unprocessable(param: str, rule: str, value: Any = None, where: str = "query") -> RequestValidationError:
    """A 422 for ``param`` breaking ``rule`` (raise it from a dependency or route)."""
    return RequestValidationError([{"type": "value_error", "loc": (where, param), "msg": rule, "input": value}])


#: Characters of an echoed input string; a longer one is cut and ends in "…".
MAX_ECHO = 200
# A bounded repr for echoed containers: a huge body (a polygon of a million vertices) is never
# turned into one huge string only to be cut.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 4, 20, 20, 20
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = MAX_ECHO


def _encodable(text: str) -> str:
    """``text`` with what UTF-8 cannot carry (a lone surrogate such as ``"\\ud800"``) replaced."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _echo(value: Any) -> Any:
    """An input as the 422 shows it: plain JSON values as they are, strings cut to
    :data:`MAX_ECHO` characters, anything else (containers, NaN) as a short text."""
    if isinstance(value, bool | int | None) or (isinstance(value, float) and math.isfinite(value)):
        return value
    text = value if isinstance(value, str) else _REPR.repr(value)
    if len(text) > MAX_ECHO:
        text = text[:MAX_ECHO] + "…"
    return _encodable(text)


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        item: dict[str, Any] = {
            "type": _encodable(str(err.get("type", "value_error"))),
            "loc": [_echo(part) for part in err.get("loc", ())],  # an unknown field's name is the client's text
            "msg": _encodable(str(err.get("msg", ""))),
        }
        if "input" in err:  # echoed when JSON can carry it (NaN and infinities cannot)
            item["input"] = _echo(err["input"])
        errors.append(item)
    summary = "; ".join(f"{err['loc'][-1] if err['loc'] else 'body'}: {err['msg']}" for err in errors)
    return JSONResponse(status_code=422, content={"detail": errors, "message": summary})


async def _no_snapshot_handler(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        status_code=503,
        content={"detail": "no snapshot published yet; the demo or first ingest is still building"},
        headers={"Retry-After": "30"},
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the 422, 403 (privacy budget) and 503 handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(NoSnapshotError, _no_snapshot_handler)
