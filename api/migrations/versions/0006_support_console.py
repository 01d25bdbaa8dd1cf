"""The support console (issue 14): agents, their sessions, and the audit log's filters.

- `support_agent`: people who sign in to `/support` (Argon2 password, role, TOTP seed).
- `support_agent_session`: their sessions, the cookie's token kept as a SHA-256 digest.
- `support_audit`: indexes for the console's filters by agent and by attempt.

New tables and indexes only: nothing here touches `attempt` (SQLite's batch mode never
runs on it).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel  # noqa: F401  (autogenerate may name sqlmodel types)
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "support_agent",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("email_normalized", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("totp_secret", sa.String(length=64), nullable=True),
        sa.Column("totp_last_step", sa.Integer(), nullable=True),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_support_agent_email_normalized"),
        "support_agent",
        ["email_normalized"],
        unique=True,
    )
    op.create_table(
        "support_agent_session",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("agent_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verified", sa.Boolean(), nullable=False),
        sa.Column("code_failures", sa.Integer(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index(
        op.f("ix_support_agent_session_agent_id"),
        "support_agent_session",
        ["agent_id"],
        unique=False,
    )
    op.create_index(
        "ix_support_audit_key_name_at", "support_audit", ["key_name", "at"], unique=False
    )
    op.create_index("ix_support_audit_target_at", "support_audit", ["target", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_support_audit_target_at", table_name="support_audit")
    op.drop_index("ix_support_audit_key_name_at", table_name="support_audit")
    op.drop_index(op.f("ix_support_agent_session_agent_id"), table_name="support_agent_session")
    op.drop_table("support_agent_session")
    op.drop_index(op.f("ix_support_agent_email_normalized"), table_name="support_agent")
    op.drop_table("support_agent")
