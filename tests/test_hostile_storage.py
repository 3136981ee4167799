"""Hostile input, round 3 (issue 25, items 11-14): disk full during the first migration,
CSV streams and deep pages read by keyset, run names that are not slugs and names that are not
latin-1 in a header, and NUL bytes that PostgreSQL refuses. Databases are real SQLite files in
tmp_path (and the PostgreSQL of ``tests/pgserver.py``)."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from context_lookups.precompute.errors import BadDatabase

# --- 11. disk full during the first migration --------------------------------------------------


def _tables(db) -> set[str]:
    with sqlite3.connect(db) as c:
        return {n for (n,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


@pytest.mark.parametrize("pages", [3, 10, 30])
def test_first_migration_is_atomic_when_the_disk_fills(tmp_path, pages):
    """SQLite's max_page_count makes the file "full" after ``pages`` pages (the whole schema
    takes 44): the same SQLITE_FULL a full disk gives, at several points of the migration."""
    from context_lookups.precompute.store.db import current_revision, head_revision, open_writer

    db = tmp_path / "new.db"

    def full(dbapi_conn, _record):
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    event.listen(Engine, "connect", full)
    try:
        with pytest.raises(BadDatabase, match="full"):
            open_writer(f"sqlite:///{db}")
    finally:
        event.remove(Engine, "connect", full)
    assert _tables(db) == set()  # nothing half-made is left behind
    engine = open_writer(f"sqlite:///{db}")  # space freed: the same command works
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_half_made_schema_of_an_older_version_is_rebuilt(tmp_path):
    from sqlalchemy import create_engine

    from context_lookups.precompute.store.db import current_revision, head_revision, open_writer
    from context_lookups.precompute.store.schema import Base

    db = tmp_path / "half.db"
    e = create_engine(f"sqlite:///{db}")
    Base.metadata.create_all(e, tables=list(Base.metadata.sorted_tables)[:6])  # no alembic_version
    e.dispose()
    engine = open_writer(f"sqlite:///{db}")
    assert current_revision(engine) == head_revision()
    engine.dispose()
    # ... but tables that hold rows are never dropped
    db2 = tmp_path / "rows.db"
    e = create_engine(f"sqlite:///{db2}")
    Base.metadata.create_all(e, tables=[Base.metadata.tables["llm_calls"]])
    e.dispose()
    with sqlite3.connect(db2) as c:
        c.execute("INSERT INTO llm_calls (request_hash, request, status, created_at) "
                  "VALUES ('h', '{}', 'ok', '2024-01-01')")
    with pytest.raises(BadDatabase, match="llm_calls with rows.*nothing was changed"):
        open_writer(f"sqlite:///{db2}")
    assert _tables(db2) == {"llm_calls"}
