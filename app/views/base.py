"""The one base of every view: a stateless ``Viewer`` that renders a session :class:`Lens`."""

from __future__ import annotations

import panel as pn
import param

from app.data.cities import level_name
from app.engine.lens import Lens

__all__ = ["KIND_LABELS", "LENS_STATE", "LensView", "level_words"]

#: What the kinds checkboxes call each event kind.
KIND_LABELS = {"request": "Service requests", "incident": "Incidents", "closure": "Road closures"}

#: Lens parameters whose change re-renders a view of released numbers: every parameter but
#: ``name``, derived so a new parameter cannot be forgotten.
LENS_STATE = tuple(name for name in Lens.param if name != "name")


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
