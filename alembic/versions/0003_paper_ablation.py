"""imported ablations and dates (lookups import-paper): ablations.n_records, ablation
activations nullable (the authors' file records probabilities only), runs.imported_at

Revision ID: 0003_paper_ablation
Revises: 0002_paper
"""
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003_paper_ablation"
down_revision: str | Sequence[str] | None = "0002_paper"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("imported_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("ablations") as batch:
        batch.add_column(sa.Column("n_records", sa.Integer(), nullable=False, server_default="1"))
        batch.alter_column("act_clean", existing_type=sa.Float(), nullable=True)
        batch.alter_column("act_ablated", existing_type=sa.Float(), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("ablations") as batch:
        batch.alter_column("act_ablated", existing_type=sa.Float(), nullable=False)
        batch.alter_column("act_clean", existing_type=sa.Float(), nullable=False)
        batch.drop_column("n_records")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("imported_at")
