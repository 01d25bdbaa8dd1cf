"""The audit log: every support query and action, under the name of who did it.

A refused one is recorded too, with the refusal's code; requests refused
before the support service saw them (bad input, a role too low, no such
route, an unknown key) are recorded by the HTTP layer through
`record_refusal`. An unknown key is recorded as `UNKNOWN_KEY`, never the key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy import insert, select, tuple_

from api.errors import InvalidInput, RecoveryError
from api.support.cursors import decode_row_cursor, encode_cursor
from api.support.models import AuditEntry
from engine import Database, EngineError
from engine.clock import Clock, as_utc

T = TypeVar("T")

audit_t = AuditEntry.__table__

# Recorded as the key's name when a request came with a key that is no key of ours (the
# key itself is never recorded). Key names may not start with "(", so no key has it.
UNKNOWN_KEY = "(unknown key)"
MAX_AUDIT_PAGE = 500
DEFAULT_AUDIT_PAGE = 100


class Audit:
    """Writing and reading the audit log."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def record(self, who: str, action: str, target: str | None, detail: Mapping[str, Any]) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                insert(audit_t).values(
                    key_name=who,
                    action=action,
                    target=target[:200] if target else None,
                    at=self.clock.now(),
                    detail=dict(detail),
                )
            )

    def audited(
        self,
        who: str,
        action: str,
        target: str | None,
        detail: Mapping[str, Any],
        work: Callable[[], T],
    ) -> T:
        """Run `work`, then record it; a refusal is recorded with its code and re-raised."""
        try:
            result = work()
        except (RecoveryError, EngineError) as exc:
            self.record(who, action, target, {**detail, "outcome": exc.code})
            # The HTTP layer records refusals the service did not see; not this one.
            exc.audited = True  # type: ignore[union-attr]
            raise
        self.record(who, action, target, {**detail, "outcome": "ok"})
        return result

    def page_sync(
        self,
        limit: int = DEFAULT_AUDIT_PAGE,
        cursor: str | None = None,
        *,
        who: str | None = None,
        action: str | None = None,
        target: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Entries newest first, one keyset page, and the cursor of the next one; only
        those of `who`, of `action` and about `target` (an attempt id, say) when given."""
        if not 1 <= limit <= MAX_AUDIT_PAGE:
            raise InvalidInput("limit", "limit must be between 1 and {most}", most=MAX_AUDIT_PAGE)
        after = decode_row_cursor(cursor) if cursor is not None else None
        query = select(audit_t).order_by(audit_t.c.at.desc(), audit_t.c.id.desc()).limit(limit + 1)
        if after is not None:
            query = query.where(tuple_(audit_t.c.at, audit_t.c.id) < after)
        if who is not None:
            query = query.where(audit_t.c.key_name == who)
        if action is not None:
            query = query.where(audit_t.c.action == action)
        if target is not None:
            query = query.where(audit_t.c.target == target)
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(query).all()
        more = len(rows) > limit
        rows = rows[:limit]
        items = [
            {
                "id": r.id,
                "key_name": r.key_name,
                "action": r.action,
                "target": r.target,
                "at": as_utc(r.at),
                "detail": dict(r.detail or {}),
            }
            for r in rows
        ]
        return items, encode_cursor(rows[-1].at, rows[-1].id) if more else None
