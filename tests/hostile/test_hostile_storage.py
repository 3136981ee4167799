"""Hostile input, round 3 (issue 25, items 11-14): disk full during the first migration,
CSV streams and deep pages read by keyset, run names that are not slugs and names that are not
latin-1 in a header, and NUL bytes that PostgreSQL refuses. Databases are real SQLite files in
tmp_path (and the PostgreSQL of ``tests/pgserver.py``)."""

from __future__ import annotations

import csv
import io
import re
import sqlite3

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from context_lookups.precompute.core.errors import BadDatabase

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


# --- 12. CSV streams and deep pages by key -----------------------------------------------------

@pytest.fixture
def statements(web_db):
    """The SQL statements the server runs (a list filled while the test runs)."""
    seen: list[str] = []

    def record(conn, cursor, statement, params, context, executemany):
        seen.append(" ".join(statement.split()))

    event.listen(Engine, "before_cursor_execute", record)
    yield seen
    event.remove(Engine, "before_cursor_execute", record)


def _client(db):
    from context_lookups.app.main import create_app

    return TestClient(create_app(db_url=f"sqlite:///{db}", torch_threads=None, preload=False))


@pytest.mark.parametrize("path,field", [
    ("/{run}/neurons.{fmt}?kind=all&sort=congruence&order=desc", "neurons"),
    ("/{run}/neurons.{fmt}?kind=all", "neurons"),
    ("/{run}/pairs.{fmt}?kept=false&sort=n", "pairs"),
    ("/{run}/pairs.{fmt}?kept=false", "pairs"),
])
def test_csv_streams_by_key_the_same_rows_in_the_same_order(web_db, statements, monkeypatch, path, field):
    from context_lookups.app.pages import export
    from context_lookups.app.routes import pages
    from tests.web_fixtures import TOPK_RUN

    monkeypatch.setattr(export, "CHUNK", 7)  # many chunks of the test database's few hundred rows
    monkeypatch.setattr(pages, "CSV_CHUNK", 7, raising=False)  # (the name the OFFSET pages used)
    with _client(web_db) as client:
        url = path.format(run=TOPK_RUN, fmt="json")
        rows, page = [], 1
        while True:  # every JSON page, in order
            d = client.get(url + f"&per_page=100&page={page}").json()
            rows += d[field]
            if page >= d["pages"]:
                break
            page += 1
        assert len(rows) > 40  # several CSV chunks
        statements.clear()
        r = client.get(path.format(run=TOPK_RUN, fmt="csv"))
        assert r.status_code == 200
    got = list(csv.DictReader(io.StringIO(r.text)))
    assert len(got) == len(rows)
    for a, b in zip(got, rows, strict=True):
        assert (a["layer"], a["neuron"]) == (str(b["layer"]), str(b["neuron"]))
        if field == "pairs":
            assert (a["head_layer"], a["head"], a["explainer"]) == (str(b["head_layer"]), str(b["head"]),
                                                                    b["explainer"] or "")
    skipped = [s for s in statements if re.search(r"OFFSET (?!0\b)", s)]
    assert skipped == []  # no chunk re-sorts and skips the rows before it


def test_deep_page_sorts_keys_not_rows(web_db, statements):
    from tests.web_fixtures import TOPK_RUN

    with _client(web_db) as client:
        statements.clear()
        d = client.get(f"/{TOPK_RUN}/neurons.json?kind=all&per_page=50&page=4").json()
        assert d["page"] == 4 and len(d["neurons"]) == 50
    deep = [s for s in statements if "OFFSET" in s]
    assert deep and all(s.startswith("SELECT neurons.id FROM neurons") for s in deep), deep


# --- 13. run names and the names headers carry -------------------------------------------------

@pytest.mark.parametrize("name", ["static", "a/b", "../x", "ＡＢＣ", "Upper", ".hidden", "x" * 101, ""])
def test_run_name_that_is_not_a_slug_is_one_line_exit_2(tmp_path, capsys, name):
    from context_lookups.precompute.cli import main

    rc = main(["precompute", "--run-name", name, "--db", f"sqlite:///{tmp_path / 'x.db'}"])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1 and "--run-name" in lines[0], err
    assert not (tmp_path / "x.db").exists()  # refused before anything is created


def test_run_names_derived_from_model_folders_follow_the_same_rule(tmp_path):
    from context_lookups.precompute.core.settings import slug_problem
    from context_lookups.precompute.model.loading import model_slug

    for folder in ("static", "ＡＢＣ-model", ".hidden", "My Model (v2)", "x" * 200):
        d = tmp_path / folder
        d.mkdir()
        assert slug_problem(model_slug(str(d))) is None, folder
    assert model_slug(str(tmp_path / "static")) == "static-model"


def test_csv_of_a_run_with_a_non_ascii_name_encodes_it_per_rfc_6266(web_db, tmp_path):
    """A database written before run names were checked may hold any name."""
    import shutil
    from urllib.parse import quote, unquote

    from tests.web_fixtures import TOPK_RUN

    db = tmp_path / "old.db"
    shutil.copy(web_db, db)
    db.chmod(0o644)
    name = "ＡＢＣ é"
    with sqlite3.connect(db) as c:
        c.execute("UPDATE runs SET slug = ? WHERE slug = ?", (name, TOPK_RUN))
    with _client(db) as client:
        for path in (f"/{quote(name)}/neurons.csv", f"/{quote(name)}/pairs.csv",
                     f"/{quote(name)}/heads/0/0.csv"):
            r = client.get(path)
            assert r.status_code == 200, (path, r.text[:300])
            disp = r.headers["content-disposition"]
            assert disp.isascii() and 'filename="' in disp
            star = re.search(r"filename\*=UTF-8''([^;\s]+)", disp).group(1)
            assert unquote(star).startswith(name + "-")


# --- 14. NUL bytes: the same answer on SQLite and PostgreSQL -----------------------------------

@pytest.mark.parametrize("path,status", [
    ("/search.json?q=neuron&run=%00", 404),
    ("/search.json?q=%00", 200),
    ("/fire.json?run=%00", 404),
    ("/%00/neurons.json", 404),
    ("/{run}%00/neurons.json", 404),
    ("/{run}/pairs.json?explainer=%00", 200),
    ("/{run}/pairs.json?explainer=base%00line", 200),
    ("/{run}/neurons.json?kind=all&q=%00", 200),
    ("/compare.json?runs={run},%00", 404),
])
def test_nul_in_a_parameter_or_path_answers_the_same_on_both_databases(stored_url, path, status):
    from context_lookups.app.main import create_app

    with TestClient(create_app(db_url=stored_url, torch_threads=None, preload=False)) as client:
        run = client.get("/.json").json()["runs"][0]["slug"]
        r = client.get(path.format(run=run))
    assert r.status_code == status, r.text[:500]
    assert "Internal error" not in r.text and "DataError" not in r.text
    if "explainer" in path:  # pairs are listed, with no explanation of that (impossible) explainer
        assert r.json()["pairs"] and all(p["explainer"] is None for p in r.json()["pairs"])
