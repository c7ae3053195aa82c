"""Dashboard views: stateless Panel ``Viewer`` classes that render one :class:`~app.engine.lens.Lens`.

Every view receives the session's lens and only draws what the lens releases, so the page, the
API and the tests all see the same privacy-gated numbers.
"""
