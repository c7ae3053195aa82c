"""The real server (``panel_serve.py``) in a subprocess on a free loopback port: what the browser
tests and the browser benchmark both drive, started and stopped the same way."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx

__all__ = ["ServedURL", "served"]

ROOT = Path(__file__).resolve().parents[1]


class ServedURL(str):
    """The base URL of a served process, with the process id (for memory readings)."""

    pid: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(data_dir: Path, log: IO[bytes] | int = subprocess.DEVNULL, timeout: float = 120) -> Iterator[str]:
    """Serve ``data_dir`` (no demo build, scheduler off) until the block ends; yields the base URL
    once ``/healthz`` answers 200. ``log`` receives the server's output (a file, never a pipe
    nobody reads)."""
    port = _free_port()
    env = {**os.environ, "CSH_DATA_DIR": str(data_dir), "PORT": str(port), "CSH_SCHEDULER_ENABLED": "false"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "panel_serve.py"), "--no-demo"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = ServedURL(f"http://127.0.0.1:{port}")
    url.pid = proc.pid
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early ({proc.returncode})")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not become healthy within {timeout:g} s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
