"""A throwaway PostgreSQL server for tests: ``CSH_TEST_POSTGRES_URL`` when set, else a cluster of
its own (``initdb`` + ``pg_ctl`` from PATH or Debian's ``/usr/lib/postgresql/*/bin``) in a temporary
directory on a free port, trusted local login, stopped at the end. As root the server runs as the
``postgres`` user (PostgreSQL refuses root). Skips with the reason when neither is possible."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["postgres_server"]


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    debian = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(debian[-1]) if debian else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a SQLAlchemy URL of a running, empty PostgreSQL server (its files in a directory of
    its own under the system temp dir, removed at the end: pytest's temp dirs are private to root)."""
    given = os.environ.get("CSH_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    initdb, pg_ctl = _tool("initdb"), _tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL tests need initdb and pg_ctl (Debian: apt-get install postgresql; `make test` does it as root)")
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("PostgreSQL refuses to run as root and there is no 'postgres' user to run it as")
        run_as = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="csh-pg-"))
    if run_as:
        os.chown(root, user.pw_uid, user.pw_gid)
    data, port = root / "pgdata", _free_port()
    subprocess.run([*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    log = root / "postgres.log"
    subprocess.run([*run_as, pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
