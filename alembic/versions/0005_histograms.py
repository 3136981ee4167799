"""activation histograms (docs/method.md §2): a fixed-bin histogram of every analysed neuron's
activations per split (``activation_histograms``), and each neuron's most negative congruent
tokens (``neurons.bottom_tokens``; empty for runs written before)

``neurons`` gains a nullable column by a plain ``ADD COLUMN`` (no table rebuild on SQLite, so
the search triggers of 0004 on ``prompts``/``explanations`` are untouched).

Revision ID: 0005_histograms
Revises: 0004_search
"""
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005_histograms"
down_revision: str | Sequence[str] | None = "0004_search"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "activation_histograms",
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("split", sa.String(length=10), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("neuron", sa.Integer(), nullable=False),
        sa.Column("scheme", sa.String(length=40), nullable=False),
        sa.Column("first_bin", sa.Integer(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "split", "layer", "neuron"),
    )
    op.add_column("neurons", sa.Column("bottom_tokens", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("neurons") as batch:
        batch.drop_column("bottom_tokens")
    op.drop_table("activation_histograms")
