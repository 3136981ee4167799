"""attention knockout: table ``knockouts``, the causal check of each stored look-up (docs/method.md
§3, "Attention knockout"; issue 28). A new table: ``prompts`` is not rebuilt, so the search
triggers of 0004 stay as they are. SQLite stores it WITHOUT ROWID (the key is the primary key).

Revision ID: 0008_knockout
Revises: 0007_prompt_repeats
"""
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008_knockout"
down_revision: str | Sequence[str] | None = "0007_prompt_repeats"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "knockouts",
        sa.Column("prompt_id", sa.Integer(), sa.ForeignKey("prompts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("head_layer", sa.Integer(), nullable=False),
        sa.Column("head", sa.Integer(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("contrib", sa.Float(), nullable=False),
        sa.Column("direct_pre", sa.Float(), nullable=True),
        sa.Column("direct_act", sa.Float(), nullable=True),
        sa.Column("total_pre", sa.Float(), nullable=True),
        sa.Column("total_act", sa.Float(), nullable=True),
        sa.Column("total_prob", sa.Float(), nullable=True),
        sa.Column("prob_clean", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("prompt_id", "head_layer", "head", "idx"),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("knockouts")
