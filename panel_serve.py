"""Serve City Service Heat: one uvicorn process with the API and the Panel dashboard.

    python panel_serve.py            # builds the demo snapshot first if there is none
    python panel_serve.py --no-demo  # serve whatever snapshot exists

Reads ``PORT`` (default 5006) and ``CSH_DATA_DIR`` (default ./data); Ctrl-C stops it cleanly.
Before it listens it builds the default dashboard once (see :func:`warm`), so the first visitor
does not pay for the first anomaly detection, layouts and compilation.
"""

from __future__ import annotations

import argparse
import time

import structlog
import uvicorn
from fastapi import FastAPI

from app.config import get_settings

log = structlog.get_logger(__name__)


def warm(app: FastAPI) -> None:
    """Build the default page of the app's own store once, without a browser: the snapshot memoises
    the frames it computes (cube, detection, anomalies, bands, outlines), the tilegram layouts of
    every level are cached, and numba compiles datashader's aggregation. Memos live on the app's
    store's snapshot, which is why this takes the app rather than opening a store of its own.
    The page opens on the store's default city (NYC when it holds it, else its first city), so a
    store of Chicago, a UK H3 region or an Open311 city alone warms that (in 'dp' mode too: every
    number is read from the snapshot's release, which was charged once when it was published)."""
    from bokeh.document import Document

    from app.data.cities import default_city
    from app.data.geography import LEVELS
    from app.engine.lens import Lens
    from app.views.page import build_dashboard
    from app.views.tilegram import Tilegram

    settings, store = app.state.settings, app.state.store
    snapshot = store.current()
    city = default_city(snapshot, Lens.param["city"].default) if snapshot is not None else None
    if snapshot is None or city is None:
        return
    started = time.perf_counter()
    build_dashboard(store, settings).server_doc(Document())
    lens = Lens(snapshot=snapshot, privacy_mode=settings.privacy_mode, privacy_k=settings.privacy_k)
    lens.city = city  # the page's default city (the store may hold no NYC at all)
    tiles = Tilegram(lens=lens)
    for level in LEVELS:
        tiles.layout(level)
    log.info("server.warmed", snapshot=snapshot.id, seconds=round(time.perf_counter() - started, 2))


def main() -> None:
    """Build the demo if needed, warm the default page, print the URLs and run uvicorn until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-demo", action="store_true", help="do not build the demo snapshot when none exists")
    args = parser.parse_args()
    settings = get_settings()
    if not args.no_demo:
        from app.pipeline import main as pipeline_main

        pipeline_main(["demo"], settings)
    from app.api.main import create_app

    app = create_app(settings)
    warm(app)
    base = f"http://{settings.host}:{settings.port}"
    print(f"City Service Heat dashboard: {base}/dashboard", flush=True)
    print(f"City Service Heat API:       {base}/docs  ({base}/openapi.json)", flush=True)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info")  # configures logging
    from app.alerts.log_redact import install

    install()  # no signed link token in the access log
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
