"""A reset that sticks (issue 18): the account's credential version.

- `account.credential_version`: bumped by every password change; a sign-in opens its
  session or writes its rehash only while it is unchanged.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel  # noqa: F401  (autogenerate may name sqlmodel types)
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows start at 0; the default is dropped again so the schema matches the
    # model (which always writes the value itself).
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("credential_version", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.alter_column("credential_version", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.drop_column("credential_version")
