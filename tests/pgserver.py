"""A real PostgreSQL server for the tests: a new cluster in a temporary directory on a free
loopback port, started once per session with Debian's binaries and removed afterwards.

``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run as the ``postgres`` user
(``runuser``), which the Debian package creates. A cluster the package may have started on port
5432 is never used. ``LOOKUPS_TEST_PG_BIN`` overrides the binaries' directory.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest


def _bin_dir() -> Path:
    if os.environ.get("LOOKUPS_TEST_PG_BIN"):
        return Path(os.environ["LOOKUPS_TEST_PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        pytest.fail("PostgreSQL's server binaries were not found (/usr/lib/postgresql/*/bin): "
                    "apt-get install postgresql, as the README's test command does.")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in ``root``, trust authentication for user ``postgres`` on
    127.0.0.1 only; durability off (fsync), since it lives for one test session."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="lookups-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-locale")
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
                  str(self.root / "log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def pg_server():
    """The session's PostgreSQL server (started on first use)."""
    server = PostgresServer()
    try:
        server.start()
    except subprocess.CalledProcessError as e:
        log = server.root / "log"
        text = log.read_text() if log.exists() else ""
        shutil.rmtree(server.root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {e.stderr or e.stdout}{text}")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty database of each backend: a SQLite file in tmp_path, or a new database on the
    session's real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lookups.db'}"
    return request.getfixturevalue("pg_server").new_database()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def stored_url(request, tmp_path_factory, precomputed_db, tiny_model_dir, tiny_model,
               small_corpus_dir) -> str:
    """The small run on each backend: a copy of the session's SQLite run, and the same settings
    run by the real precompute job into a new PostgreSQL database (once per session: the
    storage and search tests share it)."""
    if request.param == "sqlite":
        db = tmp_path_factory.mktemp("stored") / "copy.db"
        shutil.copy(precomputed_db, db)
        return f"sqlite:///{db}"
    from context_lookups.precompute.job.pipeline import run_precompute
    from tests.conftest import small_settings

    url = request.getfixturevalue("pg_server").new_database()
    run_precompute(small_settings(precomputed_db, tiny_model_dir, small_corpus_dir, db_url=url),
                   model=tiny_model)
    return url
