"""A code beside the link (issue 12): the one-time code lives on the link's row.

- `recovery_token.code_hash`: the keyed digest of the code the email carries (flow
  version 2; NULL for links emailed by version 1);
- `recovery_token.code_failures`: wrong codes judged against it;
- `recovery_token.code_token_hash`: the digest of the token a right code was
  exchanged for (unique: tokens are looked up by it);
- `recovery_code_failures`: wrong codes judged per normalised address across its
  attempts, until a successful recovery clears them.

Nothing points at `recovery_token`, so Alembic's batch mode may copy it on SQLite
(it only does for the downgrade); `attempt` is not touched.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel  # noqa: F401  (autogenerate may name sqlmodel types)
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows start at 0 wrong codes; the default is dropped again so the schema
    # matches the model (which always writes the value itself).
    with op.batch_alter_table("recovery_token", schema=None) as batch_op:
        batch_op.add_column(sa.Column("code_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("code_failures", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("code_token_hash", sa.String(length=64), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_recovery_token_code_token_hash"), ["code_token_hash"], unique=True
        )
    with op.batch_alter_table("recovery_token", schema=None) as batch_op:
        batch_op.alter_column("code_failures", server_default=None)

    op.create_table(
        "recovery_code_failures",
        sa.Column("key", sa.String(length=320), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("recovery_code_failures")
    with op.batch_alter_table("recovery_token", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recovery_token_code_token_hash"))
        batch_op.drop_column("code_token_hash")
        batch_op.drop_column("code_failures")
        batch_op.drop_column("code_hash")
