"""imported runs (lookups import-paper): run provenance; fields the authors' files do not
record become nullable

Revision ID: 0002_paper
Revises: 0001
"""
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002_paper"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NULLABLE = {
    "neurons": [("token_id", sa.Integer())],
    "prompts": [("doc_idx", sa.Integer()), ("start", sa.Integer()), ("end", sa.Integer()),
                ("act", sa.Float()), ("doc_act", sa.Float()), ("pre", sa.Float())],
    "pairs": [("mean_attr_raw", sa.Float()), ("mean_attr_ln", sa.Float())],
}


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("provenance", sa.JSON(), nullable=True))
    for table, cols in _NULLABLE.items():
        with op.batch_alter_table(table) as batch:
            for name, type_ in cols:
                batch.alter_column(name, existing_type=type_, nullable=True)


def downgrade() -> None:
    for table, cols in _NULLABLE.items():
        with op.batch_alter_table(table) as batch:
            for name, type_ in cols:
                batch.alter_column(name, existing_type=type_, nullable=False)
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("provenance")
