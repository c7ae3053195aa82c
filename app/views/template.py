"""The page template: Panel's Bootstrap template with landmarks and a visible keyboard focus.

Panel's own template puts the title in a link, the controls in a ``<ul>`` of non-list items and
the views in a plain ``<div>``, so screen-reader users cannot jump to the content and axe-core
reports missing landmarks. This subclass only swaps the markup (``templates/dashboard.html``);
resources and behaviour are Panel's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import panel as pn
from bokeh.document import Document
from panel.io.resources import CDN_DIST
from panel.io.state import state
from panel.template import BootstrapTemplate
from panel.theme import Bootstrap
from panel.theme.base import Inherit
from panel.viewable import Viewable

__all__ = ["FOCUS_CSS", "TEMPLATE_CSS", "AccessibleBootstrap", "DashboardTemplate"]

#: A skip link that appears on focus, the title as the page's h1, and a focus ring on every control
#: that does not draw one of its own (WCAG 2.4.7, 2.4.11).
TEMPLATE_CSS = """
.csh-skip { position: absolute; left: -10000px; top: 0; z-index: 2000; background: #fff; color: #1a1a1a; padding: 8px 12px; }
.csh-skip:focus { left: 8px; top: 8px; outline: 3px solid #1a56db; }
h1.csh-title { font-size: 1.4rem; margin: 0 0 0 0.5rem; color: inherit; font-weight: 600; }
:focus-visible { outline: 3px solid #1a56db !important; outline-offset: 2px; }
"""


#: The focus ring inside every component's shadow root, where the page's own CSS does not reach
#: (Bokeh's buttons and inputs draw none of their own on keyboard focus), and one size for the
#: section headings whichever pane renders them.
FOCUS_CSS = """
:focus-visible { outline: 3px solid #1a56db !important; outline-offset: 1px; }
h2 { font-size: 1.25rem; font-weight: 600; margin: 0.4em 0 0.3em; }
"""


class AccessibleBootstrap(Bootstrap):
    """Panel's Bootstrap design plus :data:`FOCUS_CSS` on every component."""

    modifiers: ClassVar[dict[Any, Any]] = {
        **Bootstrap.modifiers,
        Viewable: {"stylesheets": [Inherit, f"{CDN_DIST}bundled/theme/bootstrap.css", FOCUS_CSS]},
    }

    def params(self, viewable: Viewable, doc: Document | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """A component's design values as the template applies them (not "isolated": the page
        already loads Bootstrap and the theme once, at document level).

        Panel otherwise gives a text pane a longer stylesheet list on its first update than the
        template gave it on render, and the browser then re-parsed all of Bootstrap in every
        updated pane's shadow root: that made the first control change of a page ~0.4 s slower.
        """
        cache: dict[str, Any] = {} if doc is None else state._stylesheets.setdefault(doc, {})
        modifiers, child_modifiers = self._get_modifiers(viewable, theme=self.theme, isolated=False)
        self._patch_modifiers(doc, modifiers, cache)
        return modifiers, child_modifiers


#: Every component made after this module is imported gets the page's design (see ``params``),
#: so the values it renders with and updates with are the same.
pn.config.design = AccessibleBootstrap


class DashboardTemplate(BootstrapTemplate):
    """Bootstrap with ``<header>``/``<aside>``/``<main>``, an ``<h1>`` title and focus rings."""

    _template = Path(__file__).parent / "templates" / "dashboard.html"

    def __init__(self, **params: Any) -> None:
        super().__init__(design=AccessibleBootstrap, **params)
        self.config.raw_css.append(TEMPLATE_CSS)


def template(
    title: str, main: list[Any], sidebar: list[Any], accent: str, sidebar_width: int = 260, skip_label: str = "Skip to the dashboard"
) -> DashboardTemplate:
    """The page (Bootstrap rather than Fast: the Fast design links Google Fonts, which fails offline);
    ``skip_label`` is the text of the skip link to the main content."""
    page = DashboardTemplate(title=title, header_background=accent, sidebar_width=sidebar_width, main=main, sidebar=sidebar)
    page._render_variables["skip_label"] = skip_label
    return page
