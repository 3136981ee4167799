"""repeated prompts merged (docs/method.md §2, "Repeats"): ``prompts.multiplicity``, how many of
the neuron's documents of that split trimmed to the prompt's token ids, and ``prompts.doc_idxs``,
the document indices of every occurrence (rank order; the first is ``doc_idx``).

Two columns on ``prompts`` rather than a child table: an occurrence is never read on its own,
only with its prompt, so every read of a prompt (pages, explanations, ablations, look-ups,
which all key on ``prompts.id``) stays one row without a join. Added with ``ALTER TABLE ADD
COLUMN`` (no rebuild of ``prompts``), so the search triggers of 0004 stay as they are. Rows
stored before this revision read back as multiplicity 1 and no occurrence list (runs computed
before repeats were merged, and imported runs: the authors' prompts are distinct).

Revision ID: 0007_prompt_repeats
Revises: 0006_lookup
"""
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007_prompt_repeats"
down_revision: str | Sequence[str] | None = "0006_lookup"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("prompts", sa.Column("multiplicity", sa.Integer(), nullable=False, server_default="1"))
    op.add_column("prompts", sa.Column("doc_idxs", sa.JSON(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE DROP COLUMN (SQLite 3.35+): no rebuild, the search triggers stay
    op.drop_column("prompts", "doc_idxs")
    op.drop_column("prompts", "multiplicity")
