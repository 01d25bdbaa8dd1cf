"""Issue 17: the runs of `recovery reset-all`, and the running totals kept in shards.

- `forced_reset` holds one row per run: which accounts it takes (all, or a
  list's digest), the last account it finished (so a stopped run resumes after
  it), and its counts. Nothing points at it; it points at nothing.
- `flow_tally` gains `shard` in its key: a total is the sum of its shards, so
  concurrent writers on PostgreSQL add to different rows. The table is rebuilt
  (nothing points at it), its rows becoming shard 0; downgrading sums them back.

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-01 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel  # noqa: F401  (autogenerate may name sqlmodel types)
from alembic import op

revision: str = "0009"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tally_table(name: str, *, sharded: bool) -> None:
    columns = [
        sa.Column("flow", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
    ]
    key = ["flow", "kind", "name"]
    if sharded:
        columns.append(sa.Column("shard", sa.Integer(), nullable=False))
        key.append("shard")
    op.create_table(
        name,
        *columns,
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(*key, name=f"pk_{name}"),
    )


def upgrade() -> None:
    _tally_table("flow_tally_sharded", sharded=True)
    op.execute(
        "INSERT INTO flow_tally_sharded (flow, kind, name, shard, value) "
        "SELECT flow, kind, name, 0, value FROM flow_tally"
    )
    op.drop_table("flow_tally")
    op.rename_table("flow_tally_sharded", "flow_tally")

    op.create_table(
        "forced_reset",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("source", sa.String(length=80), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_account_id", sa.Uuid(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("reset", sa.Integer(), nullable=False),
        sa.Column("sessions_ended", sa.Integer(), nullable=False),
        sa.Column("emailed", sa.Integer(), nullable=False),
        sa.Column("not_found", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("forced_reset")

    _tally_table("flow_tally_single", sharded=False)
    op.execute(
        "INSERT INTO flow_tally_single (flow, kind, name, value) "
        "SELECT flow, kind, name, sum(value) FROM flow_tally GROUP BY flow, kind, name"
    )
    op.drop_table("flow_tally")
    op.rename_table("flow_tally_single", "flow_tally")
