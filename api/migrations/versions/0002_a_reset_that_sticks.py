"""A reset that sticks (issue 18): credential versions, device cookies.

- `account.credential_version`: bumped by every password change; a sign-in opens its
  session or writes its rehash only while it is unchanged.
- `login_device` and `login_failure.device`: failures from a browser that signed in
  before are counted for it alone.
- `recovery_token.cancel_hash`: the "this wasn't me" link's own, cancel-only token.
- `support_key.name`: unique among live keys only, so a revoked key's name can be reused.
- `flow_tally`: the engine's running totals (attempts per state, events fired),
  seeded here from the attempt table and the event log, so metrics read a few rows.

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

    op.create_table(
        "login_device",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    with op.batch_alter_table("login_device", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_login_device_account_id"), ["account_id"], unique=False
        )
    with op.batch_alter_table("login_failure", schema=None) as batch_op:
        batch_op.add_column(sa.Column("device", sa.String(length=64), nullable=True))
        batch_op.drop_index("ix_login_failure_key_at")
        batch_op.create_index(
            "ix_login_failure_key_device_at", ["key", "device", "at"], unique=False
        )

    with op.batch_alter_table("recovery_token", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cancel_hash", sa.String(length=64), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_recovery_token_cancel_hash"), ["cancel_hash"], unique=True
        )

    op.create_table(
        "flow_tally",
        sa.Column("flow", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("flow", "kind", "name"),
    )
    # The totals so far, counted once: from here on every transition keeps them.
    op.execute(
        "INSERT INTO flow_tally (flow, kind, name, value) "
        "SELECT flow, 'attempts', state, count(*) FROM attempt GROUP BY flow, state"
    )
    op.execute(
        "INSERT INTO flow_tally (flow, kind, name, value) "
        "SELECT a.flow, CASE WHEN e.accepted THEN 'accepted' ELSE 'refused' END, e.event, "
        "count(*) FROM attempt_event e JOIN attempt a ON a.id = e.attempt_id "
        "GROUP BY a.flow, e.accepted, e.event"
    )

    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        # 0001 made SQLite's UNIQUE(name) unnamed (a downgrade names it): the naming
        # convention names an unnamed one for the batch copy, which then drops it.
        [found] = [
            c["name"]
            for c in sa.inspect(bind).get_unique_constraints("support_key")
            if c["column_names"] == ["name"]
        ]
        with op.batch_alter_table(
            "support_key",
            recreate="always",
            naming_convention={"uq": "uq_%(table_name)s_%(column_0_name)s"},
        ) as batch_op:
            batch_op.drop_constraint(found or "uq_support_key_name", type_="unique")
    else:
        op.drop_constraint("support_key_name_key", "support_key", type_="unique")
    op.create_index(
        "uq_support_key_live_name",
        "support_key",
        ["name"],
        unique=True,
        sqlite_where=sa.text("revoked_at IS NULL"),
        postgresql_where=sa.text("revoked_at IS NULL"),
    )


def downgrade() -> None:
    with op.batch_alter_table("recovery_token", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recovery_token_cancel_hash"))
        batch_op.drop_column("cancel_hash")
    op.drop_index("uq_support_key_live_name", table_name="support_key")
    with op.batch_alter_table("support_key", schema=None) as batch_op:
        batch_op.create_unique_constraint("support_key_name_key", ["name"])
    op.drop_table("flow_tally")
    with op.batch_alter_table("login_failure", schema=None) as batch_op:
        batch_op.drop_index("ix_login_failure_key_device_at")
        batch_op.create_index("ix_login_failure_key_at", ["key", "at"], unique=False)
        batch_op.drop_column("device")
    with op.batch_alter_table("login_device", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_login_device_account_id"))
    op.drop_table("login_device")
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.drop_column("credential_version")
