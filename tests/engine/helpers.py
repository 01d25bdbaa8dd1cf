"""Helpers shared by the engine's tests: row counts, and bookings brought to a given state."""

from __future__ import annotations

from sqlalchemy import func, select

from engine import Database, Engine
from engine.core import AttemptRecord
from engine.models import Attempt, AttemptEvent, Outbox
from tests.engine.ticket import HOLD, NAME, OFFER

FLOW = NAME


def row_counts(db: Database) -> dict[str, int]:
    """How many rows each engine table holds: to prove an operation wrote nothing."""
    with db.transaction(write=False) as conn:
        return {
            table.__tablename__: conn.execute(
                select(func.count()).select_from(table.__table__)
            ).scalar_one()
            for table in (Attempt, AttemptEvent, Outbox)
        }


def offered(engine: Engine, subject: str = "customer-1") -> AttemptRecord:
    """A new booking moved to `offered` now."""
    attempt = engine.start_sync(FLOW, subject=subject)
    return engine.fire_sync(attempt.id, "offer", params=OFFER).attempt


def held(engine: Engine, subject: str = "customer-1") -> AttemptRecord:
    """A new booking moved to `held` now."""
    attempt = offered(engine, subject)
    return engine.fire_sync(attempt.id, "hold", params=HOLD).attempt
