"""Support-handled recovery (issue 13): contact codes and notice tokens.

- `contact_code`: the confirmation code sent to a case's contact address (its digest),
  found by the normalised contact address, with the wrong tries counted.
- `notice_token`: digests of the tokens in the case's emails: "this wasn't me" links in
  the notices to the account's address, and the "more information" form's link.

New tables only: nothing existing is touched (on SQLite neither is ever rebuilt).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel  # noqa: F401  (autogenerate may name sqlmodel types)
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "contact_code",
        sa.Column("attempt_id", sa.Uuid(), nullable=False),
        sa.Column("contact_normalized", sa.String(length=320), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("attempt_id"),
    )
    op.create_index(
        "ix_contact_code_contact_sent",
        "contact_code",
        ["contact_normalized", "sent_at"],
        unique=False,
    )
    op.create_table(
        "notice_token",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("attempt_id", sa.Uuid(), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index(
        op.f("ix_notice_token_attempt_id"), "notice_token", ["attempt_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_notice_token_attempt_id"), table_name="notice_token")
    op.drop_table("notice_token")
    op.drop_index("ix_contact_code_contact_sent", table_name="contact_code")
    op.drop_table("contact_code")
