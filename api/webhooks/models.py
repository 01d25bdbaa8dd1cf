"""Tables of webhooks: the endpoints applications register, and each delivery of an event.

An endpoint's signing secret is kept as it was given out: signing (HMAC-SHA256, the
Standard Webhooks scheme) needs the secret itself, so unlike keys and tokens it cannot
be stored as a digest. It is shown once, when the endpoint is registered, and never
again (no answer, log or event carries it).

A delivery is one event for one endpoint: the body it sends (the same on every try,
so a receiver can tell a retry by its `webhook-id`), where it stands (`pending`,
`retrying`, `delivered`, `dead`), how many tries it took, the last answer, and when it
is given up. The outbox item that carries it to the worker holds only its id.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


class WebhookEndpoint(SQLModel, table=True):
    """A URL that receives the events it subscribed to, signed with its secret."""

    __tablename__ = "webhook_endpoint"
    __table_args__ = (Index("ix_webhook_endpoint_created_id", "created_at", "id"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    url: str = Field(max_length=2048)
    events: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    secret: str = Field(max_length=100)
    created_at: datetime
    created_by: str = Field(max_length=100)
    deleted_at: datetime | None = Field(default=None)


class WebhookDelivery(SQLModel, table=True):
    """One event on its way to one endpoint, and how its tries went."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id", name="uq_webhook_delivery_event_endpoint"),
        Index("ix_webhook_delivery_endpoint_created", "endpoint_id", "created_at", "id"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str = Field(max_length=64)
    body: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(max_length=16)
    tries: int = Field(default=0)
    created_at: datetime
    give_up_at: datetime | None = Field(default=None)
    next_try_at: datetime | None = Field(default=None)
    last_tried_at: datetime | None = Field(default=None)
    delivered_at: datetime | None = Field(default=None)
    last_status: int | None = Field(default=None)
    last_answer: str | None = Field(default=None, max_length=500)
