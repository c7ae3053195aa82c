"""Error shapes of the API: every bad input is a 422 that names the parameter and the rule, in
FastAPI's own validation-error format, so clients handle one shape whoever raised it; a ``dp``
release the privacy budget cannot pay for is a 403 saying so."""

from __future__ import annotations

import math
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


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        item = {k: err[k] for k in ("type", "loc", "msg") if k in err}
        if "input" in err:  # echoed when JSON can carry it (NaN and infinities cannot)
            value = err["input"]
            plain = isinstance(value, str | int | bool | None) or (isinstance(value, float) and math.isfinite(value))
            item["input"] = value if plain else str(value)
        errors.append(item)
    summary = "; ".join(f"{err['loc'][-1]}: {err['msg']}" for err in errors)
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
