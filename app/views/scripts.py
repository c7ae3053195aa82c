"""The page's browser scripts: each lives in a ``.js`` file of ``app/views/js`` (edited and read as
JavaScript, not as Python strings) and is read once here, as the code of a Bokeh ``CustomJS``."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

__all__ = ["script"]


@cache
def script(name: str) -> str:
    """The text of ``app/views/js/<name>`` (a ``CustomJS`` body: it may ``return`` early)."""
    return files("app.views").joinpath("js", name).read_text(encoding="utf-8")
