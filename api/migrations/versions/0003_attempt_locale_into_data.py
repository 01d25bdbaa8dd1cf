"""The attempt's language moves into its data: the engine's table names no product concept.

`attempt.locale` was the one column of the engine's tables that only one
flow gave a meaning to. Each attempt keeps its language, as
`data["locale"]`, and the column goes; downgrading puts it back from there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel  # noqa: F401  (autogenerate may name sqlmodel types)
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# On SQLite the column is dropped and added in place (SQLite 3.35+), never by Alembic's
# batch mode: that copies the table and drops the old one, and with foreign keys on,
# dropping `attempt` deletes every row of the event log that cascades from it.


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("UPDATE attempt SET data = json_set(data, '$.locale', locale)")
        op.execute("ALTER TABLE attempt DROP COLUMN locale")
        return
    op.execute(
        "UPDATE attempt SET data = (data::jsonb || jsonb_build_object('locale', locale))::json"
    )
    op.drop_column("attempt", "locale")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE attempt ADD COLUMN locale VARCHAR(16) NOT NULL DEFAULT 'en'")
        op.execute(
            "UPDATE attempt SET locale = coalesce(json_extract(data, '$.locale'), 'en'), "
            "data = json_remove(data, '$.locale')"
        )
        return
    op.add_column(
        "attempt", sa.Column("locale", sa.String(length=16), nullable=False, server_default="en")
    )
    op.alter_column("attempt", "locale", server_default=None)
    op.execute(
        "UPDATE attempt SET locale = coalesce(data->>'locale', 'en'), "
        "data = (data::jsonb - 'locale')::json"
    )
