"""The one base of every view: a stateless ``Viewer`` that renders a session :class:`Lens`."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import ParamSpec

import panel as pn
import param

from app.data.cities import level_name
from app.engine.lens import Lens

__all__ = ["KIND_LABELS", "LENS_STATE", "LensView", "edits_models", "level_words"]

#: What the kinds checkboxes call each event kind.
KIND_LABELS = {"request": "Service requests", "incident": "Incidents", "closure": "Road closures"}

#: Lens parameters whose change re-renders a view of released numbers: every parameter but
#: ``name``, derived so a new parameter cannot be forgotten.
LENS_STATE = tuple(name for name in Lens.param if name != "name")

_P = ParamSpec("_P")


def edits_models(update: Callable[_P, None]) -> Callable[_P, None]:
    """Run a callback that changes Bokeh models directly (a source's data, a patch, a range) under
    the session's document lock.

    Panel runs a button click or a Bokeh event (tap, box select) as a task that does not hold the
    lock, and a Bokeh model changed there raises "_pending_writes should be non-None" now and then,
    leaving that view and every watcher after it a step behind. In a served session the update is
    therefore queued for the next tick of the server loop (which takes the lock and keeps the
    changes in order); calls queued while one is pending coalesce, as the update reads the current
    state when it runs. Without a server session (a notebook, the headless tests) it runs at once."""
    pending: set[int] = set()

    @wraps(update)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> None:
        doc = pn.state.curdoc
        if doc is None or doc.session_context is None:
            update(*args, **kwargs)
            return
        key = id(args[0]) if args else 0
        if key in pending:
            return

        def locked() -> None:
            pending.discard(key)
            update(*args, **kwargs)

        pending.add(key)
        pn.state.execute(locked, schedule=True)

    return run


class LensView(pn.viewable.Viewer):
    """A view bound to one lens; subclasses define ``__panel__`` and keep no state of their own.

    >>> pn.panel(HeatView(lens=Lens(snapshot=store.current())))   # doctest: +SKIP
    """

    lens = param.ClassSelector(class_=Lens, doc="The session lens this view renders.")

    @property
    def bound(self) -> Lens:
        """The lens this view renders (it must have one): what its parts and renderings read."""
        assert self.lens is not None, f"{type(self).__name__} needs a lens"
        return self.lens


def level_words(lens: Lens) -> str:
    """The lens level as a reader calls it in this city, for use inside a sentence ("community area")."""
    name = level_name(lens.city, lens.level)
    first = name.split(" ", 1)[0]
    return name if not first[1:].islower() else name[:1].lower() + name[1:]  # "H3 cell" keeps its capital
