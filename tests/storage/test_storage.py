"""The storage layer on both backends: a SQLite file in tmp_path and a real PostgreSQL server
started in a temporary directory (tests/pgserver.py). Migrations, atomic units of work, refused
settings, a run written to PostgreSQL equal row for row to the same run written to SQLite, the
explorer served from PostgreSQL through a read-only engine, and clear errors for a database that
cannot be reached."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update

from context_lookups.precompute.cli import main as cli_main
from tests.conftest import small_settings
from tests.db_rows import canonical_rows, first_difference

# --- migrations and units of work (empty databases of each backend) ----------------------------

def test_migrations_up_down_up(db_url, capsys):
    from alembic import command
    from context_lookups.precompute.store.db import _alembic_config, connect, current_revision, head_revision

    assert cli_main(["db", "upgrade", "--db", db_url]) == 0
    assert "schema at revision" in capsys.readouterr().out
    engine = connect(db_url)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        from sqlalchemy import inspect

        insp = inspect(conn)
        assert {"runs", "prompts", "pairs", "ablations"} <= set(insp.get_table_names())
        assert "ix_pairs_head" in {i["name"] for i in insp.get_indexes("pairs")}
    for target in ("base", "head"):
        with engine.begin() as conn:
            cfg = _alembic_config(db_url)
            cfg.attributes["connection"] = conn
            (command.downgrade if target == "base" else command.upgrade)(cfg, target)
    assert current_revision(engine) == head_revision()
    assert cli_main(["db", "current", "--db", db_url]) == 0
    assert capsys.readouterr().out.strip() == head_revision()
    engine.dispose()


def test_unit_of_work_is_atomic_and_newer_schema_is_refused(db_url):
    from context_lookups.precompute.core.errors import SchemaTooNew
    from context_lookups.precompute.store.db import open_reader, open_writer, sessions
    from context_lookups.precompute.store.runs import is_done, now, unit_of_work
    from context_lookups.precompute.store.schema import Document, Phase, Run

    engine = open_writer(db_url)
    with sessions(engine)() as s:
        run = Run(slug="r", model_name="m", dataset="d", settings={}, settings_hash="h",
                  package_version="0", n_layers=1, n_heads=1, d_mlp=1, d_model=1, n_ctx=1,
                  layers=[0], status="running", started_at=now())
        s.add(run)
        s.commit()
        with pytest.raises(RuntimeError), unit_of_work(s, run.id, "scan:explain"):
            s.add(Document(run_id=run.id, split="explain", idx=0, text="kept only if done"))
            s.flush()
            raise RuntimeError("killed")
        assert not is_done(s, run.id, "scan:explain")
        assert s.scalars(select(Document)).all() == []
        with unit_of_work(s, run.id, "scan:explain") as st:
            # NUL (a byte-level token) and the escape PostgreSQL storage uses both round-trip
            s.add(Document(run_id=run.id, split="explain", idx=0, text="é中 \x00\uffff0 \x01"))
            st["docs"] = 1
        assert s.get(Phase, (run.id, "scan:explain")).stats == {"docs": 1}
        assert s.scalar(select(Document.text)) == "é中 \x00\uffff0 \x01"
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    for opener in (open_writer, open_reader):
        with pytest.raises(SchemaTooNew, match="newer than this context-lookups knows"):
            opener(db_url)
    engine.dispose()


# --- one run on each backend ------------------------------------------------------------------------

@pytest.mark.slow
def test_postgres_run_equals_sqlite_run_row_for_row(stored_url, precomputed_db):
    rows = canonical_rows(stored_url)
    assert rows["prompts"] and rows["ablations"] and rows["explanations"] and rows["knockouts"]
    assert first_difference(rows, canonical_rows(f"sqlite:///{precomputed_db}")) is None


def test_other_settings_are_refused_and_change_nothing(stored_url, tiny_model_dir, small_corpus_dir,
                                                       tiny_model, precomputed_db):
    from context_lookups.precompute.core.errors import SettingsMismatch
    from context_lookups.precompute.job.pipeline import run_precompute

    before = canonical_rows(stored_url)
    s = small_settings(precomputed_db, tiny_model_dir, small_corpus_dir, db_url=stored_url, top_k=5)
    with pytest.raises(SettingsMismatch, match="top_k: stored 8 vs given 5"):
        run_precompute(s, model=tiny_model)
    assert canonical_rows(stored_url) == before


def test_page_served_read_only(stored_url, precomputed_db):
    """The explorer on each backend serves the same neuron page; the server's engine cannot
    write (SQLite: mode=ro; PostgreSQL: read-only sessions)."""
    from sqlalchemy.exc import DBAPIError

    from context_lookups.app.main import create_app
    from context_lookups.precompute.store.db import open_reader
    from context_lookups.precompute.store.schema import Neuron, Run

    app = create_app(db_url=stored_url, torch_threads=None)
    with TestClient(app) as client, app.state.Session() as s:
        n = s.scalars(select(Neuron).where(Neuron.kind == "next_token")
                      .order_by(Neuron.layer, Neuron.neuron)).first()
        n_id, token = n.id, n.token
        page = f"/{s.scalar(select(Run.slug))}/neurons/{n.layer}/{n.neuron}"
        r = client.get(page)
        assert r.status_code == 200 and token.strip() in r.text  # a leading space shows as ␣
        twin = client.get(f"{page}.json").json()
        with (pytest.raises(DBAPIError, match="read-only transaction|readonly"),
              app.state.engine.begin() as conn):
            conn.execute(update(Neuron).values(token="x"))
        with pytest.raises(DBAPIError, match="read-only transaction|readonly"):
            s.execute(text("CREATE TABLE intruder (x integer)"))
        s.rollback()
    sqlite_app = create_app(db_url=f"sqlite:///{precomputed_db}", torch_threads=None)
    with TestClient(sqlite_app) as client:
        other = client.get(f"{page}.json").json()
    run_a, run_b = twin.pop("run"), other.pop("run")  # the runs differ only in timings
    assert other == twin and run_a["slug"] == run_b["slug"] and run_a["settings"] == run_b["settings"]
    engine = open_reader(stored_url)
    with engine.connect() as conn:
        assert conn.scalar(select(Neuron.token).where(Neuron.id == n_id)) == token
    engine.dispose()


def test_explain_command_on_each_backend(stored_url, capsys):
    assert cli_main(["explain", "--db", stored_url, "--explainer", "baseline"]) == 0
    out = capsys.readouterr().out
    assert "': 0 pairs done now" in out and "next_token" in out


# --- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["db", "upgrade"], ["db", "current"], ["explain"], ["precompute"],
                                  ["serve"]])
def test_unreachable_database_is_one_clear_line(argv, capsys):
    from context_lookups.app.cli import main

    url = "postgresql://lookups:s3cret@127.0.0.1:1/lookups"
    assert main([*argv, "--db", url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: Cannot open the database postgresql+psycopg://lookups:***@127.0.0.1:1/lookups")
    assert "s3cret" not in err and "server is running" in err


def test_not_a_database_url(capsys):
    assert cli_main(["db", "upgrade", "--db", "mysql://x@y/z"]) == 2
    assert "only SQLite" in capsys.readouterr().err
    assert cli_main(["db", "upgrade", "--db", "lookups.db"]) == 2
    assert "is not a database URL" in capsys.readouterr().err
