"""Opening the database: migrations for the writer, read-only for the server."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import orjson
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from .errors import SchemaTooNew
from .resources import resource_dir

logger = logging.getLogger(__name__)


def _alembic_config(url: str):
    """Alembic configuration built in code: the migrations ship inside the package
    (``precompute/migrations``), so no ``alembic.ini`` is needed at run time."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resource_dir("precompute", "migrations")))
    cfg.attributes["url"] = url
    return cfg


def head_revision() -> str:
    """The newest migration this version of the package knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The database's migration revision (None for an empty database)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def check_schema(engine: Engine) -> None:
    """Raise SchemaTooNew if the database was migrated by a newer context-lookups."""
    from alembic.script import ScriptDirectory

    rev = current_revision(engine)
    if rev is None:
        return
    script = ScriptDirectory.from_config(_alembic_config(str(engine.url)))
    try:
        script.get_revision(rev)
    except Exception:
        raise SchemaTooNew(f"The database {engine.url} has schema revision {rev!r}, newer than "
                           f"this context-lookups knows (head {head_revision()!r}). Upgrade "
                           f"context-lookups, or use another --db.") from None


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.close()


def open_writer(url: str) -> Engine:
    """Engine for the precompute job: the schema is brought to head through Alembic.

    Raises:
        SchemaTooNew: the database comes from a newer version (nothing is changed).
    """
    from alembic import command

    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    _sqlite_pragmas(engine)
    check_schema(engine)
    with engine.begin() as conn:
        cfg = _alembic_config(url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    # The default rollback journal (not WAL): a WAL database cannot be opened read-only where
    # SQLite cannot create its -shm file, e.g. the web service's read-only volume.
    return engine


def _loads(text: str):
    """JSON columns for the server: orjson (pages decode many grids), or the standard parser
    for what orjson refuses (NaN or Infinity, which Python's json module writes)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def open_reader(url: str) -> Engine:
    """Read-only engine for the server (SQLite opened with ``mode=ro``).

    Raises:
        FileNotFoundError: the SQLite file does not exist.
        SchemaTooNew: the database comes from a newer version.
    """
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        path = Path(u.database or "")
        if not path.is_file():
            raise FileNotFoundError(f"Database {path} not found: run `lookups precompute` first "
                                    f"or pass --db.")
        uri = f"file:{path.resolve()}?mode=ro"
        # A thread-safe pool of read-only connections: the server reads from many threads.
        engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=8, max_overflow=32,
                               pool_timeout=30, json_deserializer=_loads,
                               creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False))
    else:
        engine = create_engine(url, json_deserializer=_loads)
    check_schema(engine)
    return engine


def sessions(engine: Engine) -> sessionmaker[Session]:
    """Session factory bound to ``engine`` (objects stay usable after commit)."""
    return sessionmaker(engine, expire_on_commit=False)
