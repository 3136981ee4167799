"""full-text search over explanation and prompt texts (docs/method.md §8)

SQLite: two FTS5 external-content indexes, ``search_prompts`` over ``prompts.text`` and
``search_explanations`` over ``explanations.text`` (Porter stemming over the unicode61
tokenizer), built from the existing rows here and kept current by triggers on insert, update of
the text and delete (including deletes cascaded from a run), so every writer (the precompute
job, ``lookups explain``, ``lookups import-paper``) keeps them current without knowing of them.
PostgreSQL: GIN indexes on ``to_tsvector('english', ...)`` of the same columns, which PostgreSQL
keeps current itself.

A later migration that rebuilds ``prompts`` or ``explanations`` on SQLite (``batch_alter_table``
copies the table) drops these triggers and must create them again (``create_sqlite_triggers``).

Revision ID: 0004_search
Revises: 0003_paper_ablation
"""
from collections.abc import Sequence

from alembic import op

revision: str = "0004_search"
down_revision: str | Sequence[str] | None = "0003_paper_ablation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = {"search_prompts": "prompts", "search_explanations": "explanations"}
PG_INDEXES = {"ix_prompts_text_search": "prompts", "ix_explanations_text_search": "explanations"}


def create_sqlite_triggers(fts: str, table: str) -> None:
    """The triggers that keep the FTS5 index ``fts`` equal to ``table.text`` (the FTS5
    documentation's external-content recipe; NULL text indexes as empty)."""
    new, old = "coalesce(new.text, '')", "coalesce(old.text, '')"
    op.execute(f"CREATE TRIGGER {fts}_ai AFTER INSERT ON {table} BEGIN "
               f"INSERT INTO {fts}(rowid, text) VALUES (new.id, {new}); END")
    op.execute(f"CREATE TRIGGER {fts}_ad AFTER DELETE ON {table} BEGIN "
               f"INSERT INTO {fts}({fts}, rowid, text) VALUES ('delete', old.id, {old}); END")
    op.execute(f"CREATE TRIGGER {fts}_au AFTER UPDATE OF text ON {table} BEGIN "
               f"INSERT INTO {fts}({fts}, rowid, text) VALUES ('delete', old.id, {old}); "
               f"INSERT INTO {fts}(rowid, text) VALUES (new.id, {new}); END")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, table in PG_INDEXES.items():
            op.execute(f"CREATE INDEX {name} ON {table} USING gin "
                       f"(to_tsvector('english'::regconfig, coalesce(text, '')))")
        return
    for fts, table in TABLES.items():
        op.execute(f"CREATE VIRTUAL TABLE {fts} USING fts5(text, content='{table}', content_rowid='id', "
                   f"tokenize='porter unicode61')")
        op.execute(f"INSERT INTO {fts}({fts}) VALUES ('rebuild')")  # index the existing rows
        create_sqlite_triggers(fts, table)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in PG_INDEXES:
            op.execute(f"DROP INDEX IF EXISTS {name}")
        return
    for fts in TABLES:
        for suffix in ("ai", "ad", "au"):
            op.execute(f"DROP TRIGGER IF EXISTS {fts}_{suffix}")
        op.execute(f"DROP TABLE IF EXISTS {fts}")
