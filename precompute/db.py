"""Opening the database: migrations for the writer, read-only for the server."""

from __future__ import annotations

import logging
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from .errors import BadDatabase, SchemaTooNew
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


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database file
_EXAMPLE = "sqlite:///lookups.db (in the working directory) or sqlite:////abs/path/lookups.db"


def parse_url(url: str) -> URL:
    """``url`` parsed by SQLAlchemy (percent-escapes decoded: ``%23`` is ``#``, ``%3F`` ``?``).

    Raises:
        BadDatabase: ``url`` is not a database URL.
    """
    try:
        return make_url(url)
    except ArgumentError:
        raise BadDatabase(f"--db {url!r} is not a database URL: give a SQLAlchemy URL such as "
                          f"{_EXAMPLE}.") from None


def database_error(url: str | None, exc: BaseException, *, writing: bool = True) -> BadDatabase:
    """The one-line :class:`BadDatabase` for a driver or filesystem error ``exc`` met while
    opening or creating ``url`` (the password of a URL is never shown)."""
    try:
        where = make_url(url).render_as_string(hide_password=True) if url else "the database"
    except ArgumentError:
        where = repr(url)
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, OSError) and orig.strerror:
        reason = f"{orig.strerror}: {orig.filename}" if orig.filename else orig.strerror
    else:
        reason = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    if "not a database" in reason:
        return BadDatabase(f"{where} is not a SQLite database ({reason}): pass --db the database "
                           f"written by `lookups precompute`, or a new file name for a new one.")
    if isinstance(exc, ArgumentError):
        return BadDatabase(f"--db {where}: {reason}. Give a SQLAlchemy URL such as {_EXAMPLE}.")
    if writing and (isinstance(orig, OSError) or any(
            w in reason for w in ("unable to open", "readonly", "read-only", "disk I/O"))):
        return BadDatabase(f"Cannot create or write the database {where} ({reason}): pass --db a "
                           f"file in a directory you can write, e.g. {_EXAMPLE}.")
    return BadDatabase(f"Cannot use the database {where}: {reason}.")


@contextmanager
def _database_errors(url: str, *, writing: bool) -> Iterator[None]:
    """Driver and filesystem errors inside the block become one-line BadDatabase errors."""
    try:
        yield
    except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
        raise database_error(url, exc, writing=writing) from exc


def check_writable(url: str) -> None:
    """Cheap checks of a database the precompute job will write, before a model is loaded:
    ``url`` parses, and a SQLite path is an existing SQLite file (by its header; an empty file
    is an empty database) or a new file whose nearest existing parent is a writable directory.
    Nothing is left behind.

    Raises:
        BadDatabase: any of these fails; the message says what to pass instead.
    """
    u = parse_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return
    path = Path(u.database)
    where = u.render_as_string(hide_password=True)
    if path.is_dir():
        raise BadDatabase(f"--db {where} is a directory: name a file in it, e.g. "
                          f"sqlite:///{path / 'lookups.db'}.")
    if path.exists():
        with _database_errors(url, writing=True), path.open("rb") as fh:
            head = fh.read(len(SQLITE_HEADER))
        if head and head != SQLITE_HEADER:
            raise database_error(url, sqlite3.DatabaseError("file is not a database"))
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    problem = None if parent.is_dir() else "is not a directory"
    if problem is None:
        try:  # a real probe (a permission check says yes to root even on /proc or a read-only
            # mount); an anonymous temporary file (O_TMPFILE on Linux) leaves nothing behind
            with tempfile.TemporaryFile(dir=parent):
                pass
        except OSError as exc:
            problem = f"is not writable ({exc.strerror})"
    if problem:
        raise BadDatabase(f"Cannot create the database {where}: {parent} {problem}. Pass --db a "
                          f"file in a directory you can write, e.g. {_EXAMPLE}.")


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
        BadDatabase: ``url`` is not a database URL, the file is not SQLite, or the database
            cannot be created or written (one line saying what to pass instead).
    """
    from alembic import command

    u = parse_url(url)
    with _database_errors(url, writing=True):
        if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)
        _sqlite_pragmas(engine)
        check_schema(engine)
        before = current_revision(engine)
        with engine.begin() as conn:
            cfg = _alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        if before != (after := current_revision(engine)):
            logger.info("database %s: schema migrated from %s to %s",
                        u.render_as_string(hide_password=True), before or "empty", after)
    # The default rollback journal (not WAL): a WAL database cannot be opened read-only where
    # SQLite cannot create its -shm file, e.g. the web service's read-only volume.
    return engine


def open_reader(url: str) -> Engine:
    """Read-only engine for the server (SQLite opened with ``mode=ro``; the path is
    percent-quoted into the ``file:`` URI, so ``#``, ``?`` and ``%`` in it name the file rather
    than end the path or escape a byte — which made SQLite create another file for writing).

    Raises:
        FileNotFoundError: the SQLite file does not exist.
        SchemaTooNew: the database comes from a newer version.
        BadDatabase: ``url`` is not a database URL or the file is not SQLite.
    """
    u = parse_url(url)
    if u.get_backend_name() == "sqlite":
        path = Path(u.database or "")
        if not path.is_file():
            raise FileNotFoundError(f"Database {path} not found: run `lookups precompute` first "
                                    f"or pass --db.")
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        # A thread-safe pool of read-only connections: the server reads from many threads.
        engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=8, max_overflow=32,
                               pool_timeout=30,
                               creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False))
    else:
        with _database_errors(url, writing=False):
            engine = create_engine(url)
    with _database_errors(url, writing=False):
        check_schema(engine)
    return engine


def sessions(engine: Engine) -> sessionmaker[Session]:
    """Session factory bound to ``engine`` (objects stay usable after commit)."""
    return sessionmaker(engine, expire_on_commit=False)
