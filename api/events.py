"""What the service tells the applications that use it: event types, and `emit`.

Anything that changes an account in a way an application must hear of (a flow's
effect inside its transition, or the application's own code in its own
transaction) calls `emit`, which records one webhook delivery for each endpoint
subscribed to that type and queues it in the outbox, in the same transaction: the
event exists exactly when the change committed, and it leaves only after the
commit, from the worker, so no receiver ever slows a person's request. With no
endpoint subscribed, `emit` writes nothing.

Each event carries ids and times, never a secret and never personal data (an
application reads the account through the admin API when it needs to). The
types are below; a flow adds its own by listing them in its `webhook_events`
hook (the assisted-recovery decisions, say).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection

from api.webhooks.endpoints import record_deliveries
from engine import FlowRegistry

PASSWORD_CHANGED = "password.changed"
SESSIONS_REVOKED = "sessions.revoked"
EMAIL_CHANGED = "account.email_changed"
RECOVERY_COMPLETED = "recovery.completed"
ACCOUNT_DISABLED = "account.disabled"
ACCOUNT_ENABLED = "account.enabled"
ACCOUNT_DELETED = "account.deleted"
# The flows' hook that names the event types a flow emits beyond these.
FLOW_HOOK = "webhook_events"

EVENT_TYPES: tuple[str, ...] = (
    PASSWORD_CHANGED,
    SESSIONS_REVOKED,
    EMAIL_CHANGED,
    RECOVERY_COMPLETED,
    ACCOUNT_DISABLED,
    ACCOUNT_ENABLED,
    ACCOUNT_DELETED,
)


class InTransaction(Protocol):
    """A transition's `tx` (or anything with an open connection and the time)."""

    conn: Connection
    now: datetime


def event_types(flows: FlowRegistry) -> tuple[str, ...]:
    """Every type an endpoint may subscribe to: the service's, then each flow's own."""
    found = dict.fromkeys(EVENT_TYPES)
    for _spec, declared in flows.hooked(FLOW_HOOK):
        found.update(dict.fromkeys(str(name) for name in declared))
    return tuple(found)


def at(moment: datetime) -> str:
    """A time as events carry it: ISO 8601 in UTC, to the microsecond."""
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def emit(tx: InTransaction, event_type: str, data: Mapping[str, Any]) -> uuid.UUID | None:
    """Emit from a flow's effect: delivered after the transition commits (see the module)."""
    return emit_in(tx.conn, tx.now, event_type, data)


def emit_in(
    conn: Connection, now: datetime, event_type: str, data: Mapping[str, Any]
) -> uuid.UUID | None:
    """Emit inside the caller's transaction on `conn`; the event's id, or None when no
    endpoint is subscribed to `event_type` (then nothing is written)."""
    event_id = uuid.uuid4()
    body = {"type": event_type, "timestamp": at(now), "data": dict(data)}
    count = record_deliveries(conn, now, event_id, event_type, body)
    return event_id if count else None
