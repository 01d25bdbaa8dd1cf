"""What support sees of an attempt: the one shape the support API and the CLI show.

Fields are picked one by one rather than passing stored data through, so a
password, a token, a hash or a link can never reach an agent: the address is
masked, and event details lose any key that could only hold a secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from api.accounts.addresses import mask_email
from api.i18n import DEFAULT
from api.support.reference import support_reference
from engine import AttemptRecord, EventRecord
from engine.clock import as_utc

DELIVERY_STATUSES = ("queued", "retrying", "sent", "failed", "none")
# Event-detail keys that could only ever hold a secret; dropped if one slipped in.
SECRET_WORDS = ("token", "password", "hash", "secret", "link")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def item(record: AttemptRecord) -> dict[str, Any]:
    """An attempt in a list: its reference, flow, state, masked address and times."""
    return {
        "id": str(record.id),
        "reference": support_reference(record.id),
        "flow": record.flow,
        "state": record.state,
        "email_masked": mask_email(record.subject) if record.subject else "",
        "created_at": as_utc(record.created_at),
        "updated_at": as_utc(record.updated_at),
        "deadline_at": as_utc(record.deadline_at) if record.deadline_at else None,
    }


def delivery(value: object) -> dict[str, Any]:
    """The delivery facts support reads to answer "I never got the email"."""
    facts = value if isinstance(value, Mapping) else {}
    status = facts.get("status")
    tries = facts.get("tries")
    return {
        "status": status if status in DELIVERY_STATUSES else "none",
        "tries": tries if isinstance(tries, int) else 0,
        "last_error": _text(facts.get("last_error")),
        "sent_at": _text(facts.get("sent_at")),
    }


def safe_detail(detail: Mapping[str, Any]) -> dict[str, Any]:
    """An event's detail without any key that could only ever hold a secret."""
    return {
        key: value
        for key, value in detail.items()
        if not any(word in key.lower() for word in SECRET_WORDS)
    }


def timeline_entry(event: EventRecord) -> dict[str, Any]:
    """One event of the attempt's log, accepted or refused."""
    return {
        "seq": event.seq,
        "event": event.event,
        "from": event.from_state,
        "to": event.to_state,
        "actor": event.actor,
        "at": as_utc(event.at),
        "accepted": event.accepted,
        "detail": safe_detail(event.detail or {}),
    }


def detail(
    record: AttemptRecord, history: Sequence[EventRecord], allowed: Sequence[str]
) -> dict[str, Any]:
    """The attempt with its reference, facts, whole timeline and the events allowed now."""
    return {
        **item(record),
        "flow_version": record.flow_version,
        "locale": _text(record.data.get("locale")) or DEFAULT,
        # How the person opened it (`link`, or a `code` typed instead), when a flow says.
        "route": _text(record.data.get("route")),
        "client_ip": _text(record.data.get("client_ip")),
        "user_agent": _text(record.data.get("user_agent")),
        "delivery": delivery(record.data.get("delivery")),
        "timeline": [timeline_entry(e) for e in history],
        "allowed_events": list(allowed),
    }
