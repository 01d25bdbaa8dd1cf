"""The engine's tables: attempts, their event log, and the outbox.

An attempt is one run of a flow. Its `state` and `deadline_at` are columns so
live attempts can be found and swept by index; `version` is the optimistic
lock every transition checks and bumps. Each fired event, accepted or
refused, appends one `attempt_event` row. `lease_until` lets a worker claim an
attempt for a while: a worker that dies leaves it claimable again. `outbox`
holds side effects to run after the transition that asked for them commits.
`flow_tally` keeps running totals (attempts per state, events fired) that every
write transaction updates before it commits, so they can be read in O(states).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, ForeignKey, Index, UniqueConstraint
from sqlalchemy.orm import declared_attr
from sqlmodel import Field, SQLModel


class Attempt(SQLModel, table=True):
    """One run of a flow, persisted."""

    __tablename__ = "attempt"
    __table_args__ = (
        Index("ix_attempt_live", "flow", "state", "deadline_at"),
        Index("ix_attempt_subject_created", "subject", "created_at"),
        Index("ix_attempt_created_id", "created_at", "id"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    flow: str = Field(max_length=64)
    flow_version: int = Field(default=1)
    state: str = Field(max_length=64)
    version: int = Field(default=1)
    created_at: datetime
    updated_at: datetime
    deadline_at: datetime | None = Field(default=None)
    lease_until: datetime | None = Field(default=None)
    subject: str = Field(default="", max_length=320)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:
        return {"version_id_col": cls.__table__.c.version}


class AttemptEvent(SQLModel, table=True):
    """One fired event of an attempt: accepted (a transition) or refused."""

    __tablename__ = "attempt_event"
    __table_args__ = (UniqueConstraint("attempt_id", "seq", name="uq_attempt_event_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    attempt_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("attempt.id", ondelete="CASCADE"), nullable=False)
    )
    seq: int
    event: str = Field(max_length=64)
    from_state: str | None = Field(default=None, max_length=64)
    to_state: str | None = Field(default=None, max_length=64)
    actor: str = Field(max_length=128)
    at: datetime
    accepted: bool
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Outbox(SQLModel, table=True):
    """A side effect queued inside a transition's transaction, run after it commits."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "kind", "done_at", "available_at"),)

    id: int | None = Field(default=None, primary_key=True)
    attempt_id: uuid.UUID | None = Field(default=None, index=True)
    kind: str = Field(max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime
    available_at: datetime
    done_at: datetime | None = Field(default=None)
    tries: int = Field(default=0)
    last_error: str | None = Field(default=None, max_length=500)


class FlowTally(SQLModel, table=True):
    """A running total of one flow: attempts now in a state, or events fired at them.

    `kind` is `attempts` (`name` is a state), `accepted` or `refused` (`name` is an
    event; `start` counts creations). Each write transaction of the engine adds its
    deltas last, in key order, so two transactions never wait on each other's totals
    in opposite orders. The totals always equal what counting the attempt table and
    the event log would give, at the cost of reading a handful of rows.
    """

    __tablename__ = "flow_tally"

    flow: str = Field(primary_key=True, max_length=64)
    kind: str = Field(primary_key=True, max_length=16)
    name: str = Field(primary_key=True, max_length=64)
    # A total is the sum of its shards' values: on PostgreSQL each database thread adds
    # to a shard of its own, so concurrent transactions do not queue on one row's lock.
    shard: int = Field(default=0, primary_key=True)
    value: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
