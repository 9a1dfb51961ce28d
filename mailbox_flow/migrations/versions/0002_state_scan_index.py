"""the reconciler's scan index covers its whole sort key: (state, state_changed_at, id)

Replaces ``ix_mailbox_state_changed`` (state, state_changed_at) with ``ix_mailbox_state_scan``
(state, state_changed_at, id). The keyset scan orders by (state_changed_at, id); with ``id`` in the index
the database reads each batch in index order instead of sorting it (SQLite: "USE TEMP B-TREE FOR RIGHT
PART OF ORDER BY" is gone).

On a large PostgreSQL table the new index may be built beforehand without blocking writes:
``CREATE INDEX CONCURRENTLY ix_mailbox_state_scan ON mailbox (state, state_changed_at, id)``; this
migration then finds it and only drops the old one.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_mailbox_state_scan", "mailbox", ["state", "state_changed_at", "id"],
                    unique=False, if_not_exists=True)
    op.drop_index("ix_mailbox_state_changed", table_name="mailbox", if_exists=True)


def downgrade() -> None:
    op.create_index("ix_mailbox_state_changed", "mailbox", ["state", "state_changed_at"], unique=False,
                    if_not_exists=True)
    op.drop_index("ix_mailbox_state_scan", table_name="mailbox", if_exists=True)
