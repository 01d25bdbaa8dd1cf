"""What the engine hands out: read-only snapshots of attempts and events, and attempt ids."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.errors import InvalidAttemptId

# The canonical spelling only. `uuid.UUID()` alone also takes braces, "urn:uuid:",
# misplaced hyphens, underscores and non-ASCII digits, so one attempt could be
# named many ways (and "1234_678..." even names a different one).
_ATTEMPT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


def parse_attempt_id(value: str | uuid.UUID) -> uuid.UUID:
    """A UUID from user input in its canonical 8-4-4-4-12 hex form, or `InvalidAttemptId`."""
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str) or not _ATTEMPT_ID.fullmatch(value):
        raise InvalidAttemptId(str(value))
    return uuid.UUID(value)


@dataclass(frozen=True)
class AttemptRecord:
    """A read-only snapshot of an attempt row."""

    id: uuid.UUID
    flow: str
    flow_version: int
    state: str
    version: int
    created_at: datetime
    updated_at: datetime
    deadline_at: datetime | None
    lease_until: datetime | None
    subject: str
    data: Mapping[str, Any]

    @classmethod
    def from_row(cls, row: Any) -> AttemptRecord:
        m = row._mapping
        return cls(**{name: m[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class EventRecord:
    """One entry of an attempt's event log."""

    seq: int
    event: str
    from_state: str | None
    to_state: str | None
    actor: str
    at: datetime
    accepted: bool
    detail: Mapping[str, Any]

    @classmethod
    def from_row(cls, row: Any) -> EventRecord:
        m = row._mapping
        return cls(**{name: m[name] for name in cls.__dataclass_fields__})
