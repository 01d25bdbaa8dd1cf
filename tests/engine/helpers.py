"""Helpers shared by the engine's tests: row counts, and attempts brought to a given state."""

from __future__ import annotations

from sqlalchemy import func, select

from engine import Database, Engine
from engine.core import AttemptRecord
from engine.models import Attempt, AttemptEvent, Outbox

FLOW = "password_recovery"
# Guard facts that take each event down its main arrow.
SEND = {"throttled": False, "account_exists": True, "mail_accepted": True}
OPEN = {"token_valid": True}


def row_counts(db: Database) -> dict[str, int]:
    """How many rows each engine table holds: to prove an operation wrote nothing."""
    with db.transaction(write=False) as conn:
        return {
            table.__tablename__: conn.execute(
                select(func.count()).select_from(table.__table__)
            ).scalar_one()
            for table in (Attempt, AttemptEvent, Outbox)
        }


def emailed(engine: Engine, subject: str = "someone") -> AttemptRecord:
    """A new attempt moved to `emailed` now."""
    attempt = engine.start_sync(FLOW, subject=subject)
    return engine.fire_sync(attempt.id, "dispatch", params=SEND).attempt


def link_opened(engine: Engine, subject: str = "someone") -> AttemptRecord:
    """A new attempt moved to `link_opened` now."""
    attempt = emailed(engine, subject)
    return engine.fire_sync(attempt.id, "open_link", params=OPEN).attempt
