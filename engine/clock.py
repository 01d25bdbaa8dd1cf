"""The one seam through which time enters the engine.

Everything that needs "now" asks a `Clock`. The system clock calls
`datetime.now(UTC)`, which freezegun moves; queries receive `now` as a
parameter and never use SQL `now()`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Something that tells the current time as an aware UTC datetime."""

    def now(self) -> datetime: ...


class SystemClock:
    """The real clock (and the one freezegun freezes)."""

    def now(self) -> datetime:
        return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A datetime read back without its zone (SQLite, aggregate columns) is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
