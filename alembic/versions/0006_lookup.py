"""the context look-up: table ``lookups``, the per-source decomposition of a head's attribution on
a stored prompt (docs/method.md §3). A new table: ``prompts`` is not rebuilt, so the search
triggers of 0004 stay as they are. SQLite stores it WITHOUT ROWID (the key is the primary key).

Revision ID: 0006_lookup
Revises: 0005_histograms
"""
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006_lookup"
down_revision: str | Sequence[str] | None = "0005_histograms"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "lookups",
        sa.Column("prompt_id", sa.Integer(), sa.ForeignKey("prompts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("head_layer", sa.Integer(), nullable=False),
        sa.Column("head", sa.Integer(), nullable=False),
        sa.Column("contrib", sa.LargeBinary(), nullable=False),
        sa.Column("attention", sa.LargeBinary(), nullable=False),
        sa.Column("bias", sa.Float(), nullable=False),
        sa.Column("ln_scale", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("prompt_id", "head_layer", "head"),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("lookups")
