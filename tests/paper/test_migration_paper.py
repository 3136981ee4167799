"""Migration 0002_paper on a real SQLite file: a database at 0001 with a run keeps it, gains
``runs.provenance`` and the nullable columns; the migrated schema matches ``schema.py``."""

from __future__ import annotations

import sqlite3

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from alembic import command
from context_lookups.precompute.store.db import _alembic_config, open_writer
from context_lookups.precompute.store.schema import Base, include_name


def test_upgrade_from_0001_keeps_rows_and_matches_the_schema(tmp_path):
    db = tmp_path / "old.db"
    url = f"sqlite:///{db}"
    engine = create_engine(url)
    with engine.begin() as conn:
        cfg = _alembic_config(url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    engine.dispose()
    c = sqlite3.connect(db)
    c.execute("INSERT INTO runs (slug, model_name, dataset, settings, settings_hash, package_version, "
              "n_layers, n_heads, d_mlp, d_model, n_ctx, layers, status, started_at) "
              "VALUES ('old', 'm', 'd', '{}', 'h', '0', 2, 4, 8, 16, 32, '[1]', 'complete', "
              "'2026-01-01 00:00:00')")
    c.commit()
    c.close()
    engine = open_writer(url)  # upgrades to head
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"include_name": include_name}),
                                Base.metadata) == []
    engine.dispose()
    c = sqlite3.connect(db)
    assert c.execute("SELECT slug, provenance FROM runs").fetchall() == [("old", None)]
    cols = {r[1]: r[3] for r in c.execute("PRAGMA table_info(prompts)")}  # name -> notnull
    assert cols["act"] == 0 and cols["doc_idx"] == 0 and cols["text"] == 1
    assert c.execute("PRAGMA foreign_key_list(prompts)").fetchall()  # the batch copy kept the FK
