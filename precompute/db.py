"""Opening the database: migrations for the writer, read-only for the server.

Two backends: SQLite (a file, the default) and PostgreSQL (``postgresql+psycopg://user:pass@
host:port/db``, the ``[postgres]`` extra) for a database shared by a team. On PostgreSQL the
server's connections are read-only sessions (``SET SESSION CHARACTERISTICS AS TRANSACTION READ
ONLY`` when each connection opens), so any write through the server's engine fails.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import orjson
from sqlalchemy import create_engine, event, exc, inspect, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from .errors import DatabaseUnavailable, SchemaTooNew
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


def parse_url(url: str) -> URL:
    """The SQLAlchemy URL of ``url``; ``postgresql://`` and ``postgres://`` mean psycopg 3, the
    driver the ``[postgres]`` extra installs.

    Raises:
        DatabaseUnavailable: not a URL, or a backend other than SQLite and PostgreSQL.
    """
    try:
        u = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
    except exc.ArgumentError:
        raise DatabaseUnavailable(f"--db {url!r} is not a database URL: use sqlite:///PATH or "
                                  f"postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB.") from None
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    if u.get_backend_name() not in ("sqlite", "postgresql"):
        raise DatabaseUnavailable(f"--db {safe_url(u)}: only SQLite (sqlite:///PATH) and PostgreSQL "
                                  f"(postgresql+psycopg://...) are supported.")
    return u


def safe_url(url: str | URL) -> str:
    """``url`` with its password masked, for messages and logs."""
    u = url if isinstance(url, URL) else make_url(url)
    return u.render_as_string(hide_password=True)


def _engine(u: URL, **kw) -> Engine:
    """``create_engine`` with a clear error for a missing driver; PostgreSQL connections time out
    after 10 s unless the URL says otherwise."""
    if u.get_backend_name() == "postgresql" and "connect_timeout" not in u.query:
        kw.setdefault("connect_args", {})["connect_timeout"] = 10
    try:
        return create_engine(u, **kw)
    except ImportError as e:
        raise DatabaseUnavailable(f"--db {safe_url(u)} needs the {e.name or 'database'} driver: "
                                  f"pip install 'context-lookups[postgres]'.") from None


def _json_dumps(value) -> str:
    """JSON columns as the writer stores them on both backends: shortest round-trip floats, and
    NaN/inf as null (PostgreSQL's JSON type rejects them, so both backends store the same)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode()


def _probe(engine: Engine) -> None:
    """Open one connection, turning a refused/unauthorised one into DatabaseUnavailable."""
    try:
        with engine.connect():
            pass
    except exc.OperationalError as e:
        reason = str(e.orig).strip().splitlines()[-1] if e.orig else str(e)
        raise DatabaseUnavailable(
            f"Cannot open the database {safe_url(engine.url)} ({reason}). Check the URL (host, port, "
            f"user, password, database name) and that the server is running; nothing was "
            f"written.") from None


def connect(url: str) -> Engine:
    """A plain engine on ``url`` whose first connection succeeded (no migration, no check).

    Raises:
        DatabaseUnavailable: as :func:`open_writer`.
    """
    engine = _engine(parse_url(url))
    _probe(engine)
    return engine


def _read_only_sessions(engine: Engine) -> None:
    """Every PostgreSQL connection of ``engine`` starts read-only transactions only (a write
    raises ``ReadOnlySqlTransaction``). The setting is committed at once: a rolled-back SET
    would be undone."""
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        with dbapi_conn.cursor() as cur:
            cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        dbapi_conn.commit()


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
        DatabaseUnavailable: the URL is malformed, its driver is missing, or the database cannot
            be opened (server down, bad credentials).
    """
    from alembic import command

    u = parse_url(url)
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
    engine = _engine(u, json_serializer=_json_dumps)
    if u.get_backend_name() == "sqlite":
        _sqlite_pragmas(engine)
    _probe(engine)
    check_schema(engine)
    with engine.begin() as conn:
        cfg = _alembic_config(u.render_as_string(hide_password=False))
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
    """Read-only engine for the server: SQLite opened with ``mode=ro``; PostgreSQL with every
    session read-only (``_read_only_sessions``).

    Raises:
        FileNotFoundError: the SQLite file does not exist.
        SchemaTooNew: the database comes from a newer version.
        DatabaseUnavailable: the PostgreSQL server cannot be reached or refuses the login.
    """
    u = parse_url(url)
    if u.get_backend_name() == "postgresql":
        engine = _engine(u, pool_size=8, max_overflow=16, pool_pre_ping=True, json_deserializer=_loads)
        _read_only_sessions(engine)
        _probe(engine)
    elif u.get_backend_name() == "sqlite":
        path = Path(u.database or "")
        if not path.is_file():
            raise FileNotFoundError(f"Database {path} not found: run `lookups precompute` first "
                                    f"or pass --db.")
        uri = f"file:{path.resolve()}?mode=ro"
        # A thread-safe pool of read-only connections: the server reads from many threads.
        engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=8, max_overflow=32,
                               pool_timeout=30, json_deserializer=_loads,
                               creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False))
    check_schema(engine)
    return engine


def sessions(engine: Engine) -> sessionmaker[Session]:
    """Session factory bound to ``engine`` (objects stay usable after commit)."""
    return sessionmaker(engine, expire_on_commit=False)
