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
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import orjson
from sqlalchemy import create_engine, event, exc, inspect, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from context_lookups.precompute.core.errors import BadDatabase, DatabaseUnavailable, SchemaTooNew
from context_lookups.precompute.core.redact import mask_db_url
from context_lookups.precompute.core.resources import resource_dir

logger = logging.getLogger(__name__)


def _alembic_config(url: str):
    """Alembic configuration built in code: the migrations ship inside the package
    (``precompute/migrations``), so no ``alembic.ini`` is needed at run time."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resource_dir("context_lookups.precompute", "migrations")))
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
        raise SchemaTooNew(f"The database {mask_db_url(engine.url.render_as_string(hide_password=False))} "
                           f"has schema revision {rev!r}, newer than "
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
        raise DatabaseUnavailable(f"--db {mask_db_url(u)}: only SQLite (sqlite:///PATH) and PostgreSQL "
                                  f"(postgresql+psycopg://...) are supported.")
    return u


def _engine(u: URL, **kw) -> Engine:
    """``create_engine`` with a clear error for a missing driver; PostgreSQL connections time out
    after 10 s unless the URL says otherwise."""
    if u.get_backend_name() == "postgresql" and "connect_timeout" not in u.query:
        kw.setdefault("connect_args", {})["connect_timeout"] = 10
    try:
        return create_engine(u, **kw)
    except ImportError as e:
        raise DatabaseUnavailable(f"--db {mask_db_url(u)} needs the {e.name or 'database'} driver: "
                                  f"pip install 'context-lookups[postgres]'.") from None


def _json_dumps(value) -> str:
    """JSON columns as the writer stores them on both backends: shortest round-trip floats, and
    NaN/inf as null (PostgreSQL's JSON type rejects them, so both backends store the same)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode()


def _probe(engine: Engine) -> None:
    """Open one connection, turning a refused/unauthorised one into DatabaseUnavailable (a
    SQLite file that cannot be opened: BadDatabase, saying what to pass instead)."""
    try:
        with engine.connect():
            pass
    except exc.OperationalError as e:
        if engine.url.get_backend_name() == "sqlite":
            raise database_error(engine.url.render_as_string(hide_password=True), e) from None
        reason = str(e.orig).strip().splitlines()[-1] if e.orig else str(e)
        raise DatabaseUnavailable(
            f"Cannot open the database {mask_db_url(engine.url)} ({reason}). Check the URL (host, port, "
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


NUL_STANDIN = "\uffff"  # a Unicode noncharacter: no text the job stores holds it


def _no_nul_parameters(engine: Engine) -> None:
    """PostgreSQL refuses a NUL character in a text parameter (``DataError``), where SQLite
    compares it like any other: a URL's ``run=%00`` was a 500 on one and a 404 on the other.
    PostgreSQL cannot store a NUL, so a value holding one matches no stored value; it is sent
    with :data:`NUL_STANDIN` in its place, which matches no stored value either, and the query
    answers what SQLite answers (no such run: 404; no such explainer: an empty list)."""
    def fix(v):
        return v.replace("\x00", NUL_STANDIN) if isinstance(v, str) and "\x00" in v else v

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _swap(conn, cursor, statement, params, context, executemany):
        if isinstance(params, dict):
            params = {k: fix(v) for k, v in params.items()}
        elif isinstance(params, (list, tuple)) and not executemany:
            params = type(params)(fix(v) for v in params)
        return statement, params


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database file
_EXAMPLE = "sqlite:///lookups.db (in the working directory) or sqlite:////abs/path/lookups.db"


def database_error(url: str | None, error: BaseException, *, writing: bool = True) -> BadDatabase:
    """The one-line :class:`BadDatabase` for a driver or filesystem error ``error`` met while
    opening or creating ``url`` (the password of a URL is never shown)."""
    where = mask_db_url(str(url)) if url else "the database"
    orig = getattr(error, "orig", None) or error
    if isinstance(orig, OSError) and orig.strerror:
        reason = f"{orig.strerror}: {orig.filename}" if orig.filename else orig.strerror
    else:
        reason = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    if "not a database" in reason:
        return BadDatabase(f"{where} is not a SQLite database ({reason}): pass --db the database "
                           f"written by `lookups precompute`, or a new file name for a new one.")
    if isinstance(error, exc.ArgumentError):
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
    except (exc.SQLAlchemyError, sqlite3.Error, OSError) as err:
        raise database_error(url, err, writing=writing) from err


def check_writable(url: str) -> None:
    """Cheap checks of a database the precompute job will write, before a model is loaded:
    ``url`` parses, a PostgreSQL server answers, and a SQLite path is an existing SQLite file
    (by its header; an empty file is an empty database) or a new file whose nearest existing
    parent is a writable directory.
    Nothing is left behind.

    Raises:
        BadDatabase, DatabaseUnavailable: any of these fails; the message says what to pass
            instead.
    """
    u = parse_url(url)
    if u.get_backend_name() != "sqlite":
        connect(url).dispose()  # a server that does not answer fails here, before anything slow
        return
    if u.database in (None, "", ":memory:"):
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
        except OSError as err:
            problem = f"is not writable ({err.strerror})"
    if problem:
        raise BadDatabase(f"Cannot create the database {where}: {parent} {problem}. Pass --db a "
                          f"file in a directory you can write, e.g. {_EXAMPLE}.")


@contextmanager
def _migration_transaction(conn, *, atomic: bool) -> Iterator[None]:
    """The transaction the migrations run in. ``atomic`` (the first migration of a SQLite
    database): every statement, DDL included, in one SQLite transaction. Python's sqlite3 sends
    no BEGIN before DDL, so each CREATE TABLE committed on its own, and a disk full midway left
    a half-made schema without ``alembic_version``; here the driver is put in autocommit mode
    for the duration and BEGIN is sent explicitly, so a failure rolls every table back."""
    if not atomic:
        with conn.begin():
            yield
        return
    dbapi = conn.connection.driver_connection
    old = dbapi.isolation_level
    dbapi.isolation_level = None
    try:
        with conn.begin():
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield
    finally:
        dbapi.isolation_level = old


def _drop_half_made_schema(engine: Engine, u: URL) -> None:
    """A SQLite database without ``alembic_version`` whose tables are this schema's and all
    empty is a first migration interrupted before it was atomic (disk full, killed): its
    tables are dropped, in one transaction, so the migration runs anew.

    Raises:
        BadDatabase: those tables hold rows (nothing is touched).
    """
    from context_lookups.precompute.store.schema import SEARCH_TABLES, Base

    with engine.connect() as conn:
        names = set(inspect(conn).get_table_names())
        ours = names & set(Base.metadata.tables)
        if not ours or names - ours - {n for n in names if n.startswith(tuple(SEARCH_TABLES))}:
            return  # a new database, or one holding other tables: the migration adds ours
        full = [n for n in sorted(ours) if conn.execute(text(f'SELECT 1 FROM "{n}" LIMIT 1')).first()]
    if full:
        raise BadDatabase(f"The database {mask_db_url(u.render_as_string(hide_password=False))} holds "
                          f"context-lookups tables ({', '.join(full)} with rows) but no schema revision "
                          f"(alembic_version): nothing was changed. Pass --db another file.")
    with engine.begin() as conn:
        for fts in SEARCH_TABLES:
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{fts}"')
        for table in reversed(Base.metadata.sorted_tables):
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{table.name}"')
    logger.warning("database %s: %d empty tables of an interrupted first migration dropped; migrating anew",
                   mask_db_url(u.render_as_string(hide_password=False)), len(ours))


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
        BadDatabase: the file is not SQLite, or the database cannot be created or written (one
            line saying what to pass instead).
    """
    from alembic import command

    u = parse_url(url)
    with _database_errors(url, writing=True):
        if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = _engine(u, json_serializer=_json_dumps)
        if u.get_backend_name() == "sqlite":
            _sqlite_pragmas(engine)
        _probe(engine)
        check_schema(engine)
        before = current_revision(engine)
        sqlite = u.get_backend_name() == "sqlite"
        if before is None and sqlite:
            _drop_half_made_schema(engine, u)
        with engine.connect() as conn, _migration_transaction(conn, atomic=before is None and sqlite):
            cfg = _alembic_config(u.render_as_string(hide_password=False))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        if before != (after := current_revision(engine)):
            logger.info("database %s: schema migrated from %s to %s", mask_db_url(u), before or "empty",
                        after)
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


def read_only_engine(url: str) -> Engine:
    """An engine that can only read ``url`` and never creates anything: SQLite opened with
    ``mode=ro`` (a missing file is an error, not a new empty database); PostgreSQL with every
    session read-only (``_read_only_sessions``). No schema check (see :func:`open_reader`).

    Raises:
        FileNotFoundError: the SQLite file does not exist.
        DatabaseUnavailable: the PostgreSQL server cannot be reached or refuses the login.
        BadDatabase: the file is not SQLite.
    """
    u = parse_url(url)
    if u.get_backend_name() == "postgresql":
        engine = _engine(u, pool_size=8, max_overflow=16, pool_pre_ping=True, json_deserializer=_loads)
        _read_only_sessions(engine)
        _no_nul_parameters(engine)
        _probe(engine)
        return engine
    path = Path(u.database or "")
    if not path.is_file():
        raise FileNotFoundError(f"Database {path} not found: run `lookups precompute` first "
                                f"or pass --db.")
    # percent-quoted: '#', '?' and '%' in the path name the file rather than end the path
    # or escape a byte (which made SQLite open another file for writing)
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    # A thread-safe pool of read-only connections: the server reads from many threads.
    return create_engine("sqlite://", poolclass=QueuePool, pool_size=8, max_overflow=32,
                         pool_timeout=30, json_deserializer=_loads,
                         creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False))


def open_reader(url: str) -> Engine:
    """Read-only engine for the server (:func:`read_only_engine`) on a database at this
    version's schema.

    Raises:
        FileNotFoundError: the SQLite file does not exist.
        SchemaTooNew: the database comes from a newer version.
        BadDatabase: the file is not SQLite; or the database has no context-lookups tables (an
            empty file, another program's database) or an older schema: the message says which
            command to run.
        DatabaseUnavailable: the PostgreSQL server cannot be reached or refuses the login.
    """
    engine = read_only_engine(url)
    with _database_errors(url, writing=False):
        check_schema(engine)
        rev, head = current_revision(engine), head_revision()
    if rev != head:
        engine.dispose()
        where = mask_db_url(parse_url(url))
        if rev is None:
            raise BadDatabase(f"{where} is not a context-lookups database (it has no schema "
                              f"revision: empty, or another program's): write one with `lookups "
                              f"precompute --db {where}`, or pass --db the database it wrote.")
        raise BadDatabase(f"{where} has schema revision {rev!r}, older than this context-lookups' "
                          f"{head!r}: migrate it with `lookups db upgrade --db {where}` (nothing "
                          f"stored is lost), then serve it.")
    return engine


# docs/scaling.md: a role the server can use that cannot write, whatever its sessions do.
GRANT_SELECT = ("CREATE ROLE reader LOGIN PASSWORD '...'; GRANT CONNECT ON DATABASE {db} TO reader; "
                "GRANT USAGE ON SCHEMA public TO reader; GRANT SELECT ON ALL TABLES IN SCHEMA "
                "public TO reader;")


def writable_tables(engine: Engine) -> list[str]:
    """The project's tables the PostgreSQL role of ``engine`` may write (INSERT, UPDATE, DELETE
    or TRUNCATE, by ``has_table_privilege``), sorted; empty for SQLite (opened ``mode=ro``) and
    for a role with ``SELECT`` only. The server's sessions are read-only either way, but a
    session could undo that (``SET TRANSACTION READ WRITE``); a role cannot grant itself."""
    if engine.url.get_backend_name() != "postgresql":
        return []
    from context_lookups.precompute.store.schema import Base

    names = sorted(Base.metadata.tables)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = current_schema() AND c.relname = ANY(:names) "
            "AND (has_table_privilege(c.oid, 'INSERT') OR has_table_privilege(c.oid, 'UPDATE') "
            "OR has_table_privilege(c.oid, 'DELETE') OR has_table_privilege(c.oid, 'TRUNCATE')) "
            "ORDER BY c.relname"), {"names": names}).scalars().all()
    return list(rows)


def sessions(engine: Engine) -> sessionmaker[Session]:
    """Session factory bound to ``engine`` (objects stay usable after commit)."""
    return sessionmaker(engine, expire_on_commit=False)
