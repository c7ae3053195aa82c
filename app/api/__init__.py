"""HTTP API and the single server process (FastAPI with the Panel dashboard mounted)."""
