"""Serve City Service Heat: one uvicorn process with the API and the Panel dashboard.

    python panel_serve.py            # builds the demo snapshot first if there is none
    python panel_serve.py --no-demo  # serve whatever snapshot exists

Reads ``PORT`` (default 5006) and ``CSH_DATA_DIR`` (default ./data); Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import argparse

import uvicorn

from app.config import get_settings


def main() -> None:
    """Build the demo if needed, print the URLs and run uvicorn until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-demo", action="store_true", help="do not build the demo snapshot when none exists")
    args = parser.parse_args()
    settings = get_settings()
    if not args.no_demo:
        from app.pipeline import main as pipeline_main

        pipeline_main(["demo"], settings)
    base = f"http://{settings.host}:{settings.port}"
    print(f"City Service Heat dashboard: {base}/dashboard", flush=True)
    print(f"City Service Heat API:       {base}/docs  ({base}/openapi.json)", flush=True)
    uvicorn.run("app.api.main:create_app", factory=True, host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
