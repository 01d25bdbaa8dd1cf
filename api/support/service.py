"""What support agents may do: keys, attempt queries, cancel, resend, stats, and the audit log.

Support keys are random 256-bit strings shown once; only their SHA-256 digest
is stored, with a role (`read` or `write`) and a name, unique among live keys
(a revoked key's name can be reused). Every query and
action writes an `AuditEntry` carrying the key's name (a refused one too,
with the refusal's code), and every action is fired on the attempt as the
actor `support:<key name>`.

Support sees attempts with their email masked and never sees, nor can set,
a password, a token, a hash or a link: the shapes built here pick their
fields one by one rather than passing stored data through.

All database work is sync code; the async methods run it on the database's
threads through `Database.run`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import statistics
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import and_, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError

from api.accounts.addresses import InvalidEmail, mask_email, normalise_email
from api.accounts.models import RecoveryToken
from api.errors import InvalidInput, RecoveryError
from api.support.models import AuditEntry, SupportKey
from api.support.reference import reference_bounds, support_reference
from engine import Engine, EngineError
from engine.clock import as_utc
from engine.core import AttemptRecord, EventRecord, attempt_t, event_t
from engine.diagrams import path_of
from flows.password_recovery import NAME

T = TypeVar("T")

key_t = SupportKey.__table__
audit_t = AuditEntry.__table__
token_t = RecoveryToken.__table__

ROLES = ("read", "write")
# Recorded as the key's name when a request came with a key that is no key of ours (the
# key itself is never recorded). Key names may not start with "(", so no key has it.
UNKNOWN_KEY = "(unknown key)"
DIAGRAM_FORMATS = ("svg", "dot", "mermaid")  # the formats api.flows.ATTEMPT_FORMATS serves
KEY_PREFIX = "rsk_"
MAX_KEY_CHARS = 200
MAX_PAGE = 200
DEFAULT_PAGE = 50
MAX_AUDIT_PAGE = 500
DEFAULT_AUDIT_PAGE = 100
DEFAULT_STATS_WINDOW = timedelta(days=7)
FUNNEL = ("requested", "emailed", "link_opened", "password_set", "logged_in")
DELIVERY_STATUSES = ("queued", "retrying", "sent", "failed", "none")
# Event-detail keys that could only ever hold a secret; dropped if one slipped in.
_SECRET_WORDS = ("token", "password", "hash", "secret", "link")


class KeyNameTaken(RecoveryError):
    """Another support key already has this name."""

    code = "key_name_taken"

    def __init__(self, name: str) -> None:
        super().__init__(f"a live support key named {name!r} already exists")


class KeyNotFound(RecoveryError):
    """No live support key has this name."""

    code = "key_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"no live support key is named {name!r}")


@dataclass(frozen=True)
class Page:
    """One page of attempts, and the cursor of the next one (None on the last)."""

    items: list[dict[str, Any]]
    next_cursor: str | None


def key_digest(key: str) -> str:
    """The SHA-256 hex digest stored in place of a support key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def actor_of(key_name: str) -> str:
    """The actor recorded on events a support key fires."""
    return f"support:{key_name}"


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value is not None else None


# -- cursors ---------------------------------------------------------------


def encode_cursor(at: datetime, key: uuid.UUID | int) -> str:
    """An opaque keyset cursor: the last item's time and id (an attempt's UUID or a row number)."""
    ident = key.hex if isinstance(key, uuid.UUID) else str(int(key))
    raw = json.dumps([as_utc(at).isoformat(), ident], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _cursor_parts(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        at, ident = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        return as_utc(datetime.fromisoformat(at)), str(ident)
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        raise InvalidInput("cursor", "the cursor is not one this service gave out") from None


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, attempt id) inside a cursor of the attempt list, or `InvalidInput`."""
    at, ident = _cursor_parts(cursor)
    try:
        return at, uuid.UUID(hex=ident)
    except ValueError:
        raise InvalidInput("cursor", "the cursor is not one this service gave out") from None


def decode_row_cursor(cursor: str) -> tuple[datetime, int]:
    """The (time, row number) inside a cursor of a list of numbered rows, or `InvalidInput`."""
    at, ident = _cursor_parts(cursor)
    if not ident.isdecimal():
        raise InvalidInput("cursor", "the cursor is not one this service gave out")
    return at, int(ident)


class SupportService:
    """Support keys, attempt queries and actions, stats, and the audit log."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.db = engine.db
        self.clock = engine.clock

    # -- keys --------------------------------------------------------------

    def create_key_sync(self, name: str, role: str) -> str:
        """Create a key and return it; it is shown this once, only its digest is kept."""
        name = name.strip() if isinstance(name, str) else ""
        if not name or len(name) > 100 or any(not c.isprintable() for c in name):
            raise InvalidInput("name", "name must be 1 to 100 printable characters")
        if name.startswith("("):
            raise InvalidInput("name", "name must not start with '('")
        if role not in ROLES:
            raise InvalidInput("role", "role must be read or write")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    insert(key_t).values(
                        id=uuid.uuid4(),
                        name=name,
                        role=role,
                        key_hash=key_digest(key),
                        created_at=self.clock.now(),
                    )
                )
        except IntegrityError:
            raise KeyNameTaken(name) from None
        return key

    def list_keys_sync(self) -> list[dict[str, Any]]:
        """Every key's name, role, creation and revocation (never the key or its digest),
        live ones first, then by name and age."""
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(
                select(key_t.c.name, key_t.c.role, key_t.c.created_at, key_t.c.revoked_at)
            ).all()
        keys = [
            {
                "name": r.name,
                "role": r.role,
                "created_at": as_utc(r.created_at),
                "revoked_at": as_utc(r.revoked_at) if r.revoked_at else None,
            }
            for r in rows
        ]
        return sorted(keys, key=lambda k: (k["revoked_at"] is not None, k["name"], k["created_at"]))

    def revoke_key_sync(self, name: str) -> None:
        """Revoke the live key called `name` (it stops working at once); `KeyNotFound` if
        there is none. The name may then be given to a new key."""
        with self.db.transaction() as conn:
            done = conn.execute(
                update(key_t)
                .where(key_t.c.name == name.strip(), key_t.c.revoked_at.is_(None))
                .values(revoked_at=self.clock.now())
            )
            if done.rowcount != 1:
                raise KeyNotFound(name)

    def authenticate_sync(self, key: object) -> tuple[str, str] | None:
        """The (name, role) of a live key, or None."""
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
            return None
        with self.db.transaction(write=False) as conn:
            row = conn.execute(
                select(key_t.c.name, key_t.c.role).where(
                    key_t.c.key_hash == key_digest(key), key_t.c.revoked_at.is_(None)
                )
            ).first()
        return (row.name, row.role) if row else None

    async def authenticate(self, key: object) -> tuple[str, str] | None:
        """`authenticate_sync` on a database reader thread."""
        return await self.db.run(self.authenticate_sync, key, write=False)

    # -- auditing ------------------------------------------------------------

    def _audit(
        self,
        key_name: str,
        action: str,
        target: str | None,
        detail: Mapping[str, Any],
    ) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                insert(audit_t).values(
                    key_name=key_name,
                    action=action,
                    target=target[:200] if target else None,
                    at=self.clock.now(),
                    detail=dict(detail),
                )
            )

    def _audited(
        self,
        key_name: str,
        action: str,
        target: str | None,
        detail: Mapping[str, Any],
        work: Callable[[], T],
    ) -> T:
        """Run `work`, then record it; a refusal is recorded with its code and re-raised."""
        try:
            result = work()
        except (RecoveryError, EngineError) as exc:
            self._audit(key_name, action, target, {**detail, "outcome": exc.code})
            # The HTTP layer records refusals the service did not see; not this one.
            exc.audited = True  # type: ignore[union-attr]
            raise
        self._audit(key_name, action, target, {**detail, "outcome": "ok"})
        return result

    async def record_refusal(
        self,
        key_name: str,
        method: str,
        path: str,
        outcome: str,
        client_ip: str | None = None,
    ) -> None:
        """Record a request refused outside the service (bad input, wrong role, no such
        route, an unknown key: then `UNKNOWN_KEY` and the client's address)."""
        detail = {"method": method, "outcome": outcome}
        if client_ip is not None:
            detail["client_ip"] = client_ip
        await self._run(self._audit, key_name, "refused", path, detail)

    async def _run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        # Support work writes (its audit entry, and lazily applied deadlines).
        return await self.db.run(fn, *args, **kw)

    # -- listing ---------------------------------------------------------------

    def list_attempts_sync(
        self,
        key_name: str,
        *,
        state: str | None = None,
        email: str | None = None,
        reference: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> Page:
        """Attempts, newest first, filtered; masked; one keyset page at a time."""
        detail: dict[str, Any] = {
            "state": state,
            "email": mask_email(email.strip().casefold()) if email else None,
            "reference": reference,
            "since": _iso(since),
            "until": _iso(until),
            "limit": limit,
            "paged": cursor is not None,
        }
        detail = {k: v for k, v in detail.items() if v not in (None, False)}
        return self._audited(
            key_name,
            "list_attempts",
            None,
            detail,
            lambda: self._list(state, email, reference, since, until, limit, cursor),
        )

    def _list(
        self,
        state: str | None,
        email: str | None,
        reference: str | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        cursor: str | None,
    ) -> Page:
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput("limit", f"limit must be between 1 and {MAX_PAGE}")
        conditions: list[Any] = []
        if state is not None:
            known = {s for spec in self.engine.flows for s in spec.states}
            if state not in known:
                raise InvalidInput("state", f"state must be one of: {', '.join(sorted(known))}")
            conditions.append(attempt_t.c.state == state)
        if email is not None:
            try:
                conditions.append(attempt_t.c.subject == normalise_email(email))
            except InvalidEmail as exc:
                raise InvalidInput("email", str(exc)) from None
        if reference is not None:
            bounds = reference_bounds(reference)
            if bounds is None:
                raise InvalidInput("reference", "a reference looks like ABCD-EFGH")
            conditions.append(attempt_t.c.id.between(*bounds))
        if since is not None:
            conditions.append(attempt_t.c.created_at >= as_utc(since))
        if until is not None:
            conditions.append(attempt_t.c.created_at < as_utc(until))
        if cursor is not None:
            created, last_id = decode_cursor(cursor)
            # A row-value comparison: both databases start an index range from it
            # (an OR of the two halves scans from the newest row instead).
            conditions.append(tuple_(attempt_t.c.created_at, attempt_t.c.id) < (created, last_id))
        # Deadlines are applied lazily: bring overdue attempts up to date before
        # reading, so a state filter never shows a link that is already dead.
        self.engine.sweep_sync()
        query = (
            select(attempt_t)
            .where(*conditions)
            .order_by(attempt_t.c.created_at.desc(), attempt_t.c.id.desc())
            .limit(limit + 1)
        )
        with self.db.transaction(write=False) as conn:
            rows = [AttemptRecord.from_row(r) for r in conn.execute(query)]
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
        return Page([_item(r) for r in rows], next_cursor)

    async def list_attempts(self, key_name: str, **filters: Any) -> Page:
        return await self._run(self.list_attempts_sync, key_name, **filters)

    # -- one attempt -------------------------------------------------------------

    def attempt_sync(self, key_name: str, attempt_id: str | uuid.UUID) -> dict[str, Any]:
        """The attempt (deadline applied), its whole timeline, and what may happen next."""
        return self._audited(
            key_name,
            "view_attempt",
            str(attempt_id)[:64],
            {},
            lambda: self._detail(attempt_id),
        )

    def _detail(self, attempt_id: str | uuid.UUID) -> dict[str, Any]:
        record = self.engine.get_sync(attempt_id)
        history = self.engine.history_sync(record.id)
        item = _item(record)
        del item["reference"]  # the detail has the fixed shape of SPEC §5
        return {
            **item,
            "locale": record.locale,
            "client_ip": _text(record.data.get("client_ip")),
            "user_agent": _text(record.data.get("user_agent")),
            "delivery": _delivery(record.data.get("delivery")),
            "timeline": [_timeline_entry(e) for e in history],
            "allowed_events": self.engine.allowed_events(record),
        }

    async def attempt(self, key_name: str, attempt_id: str) -> dict[str, Any]:
        return await self._run(self.attempt_sync, key_name, attempt_id)

    def diagram_sync(
        self, key_name: str, attempt_id: str | uuid.UUID, fmt: str
    ) -> tuple[str, str, list[tuple[str | None, str, str]]]:
        """The attempt's flow, current state and path of accepted transitions."""

        def work() -> tuple[str, str, list[tuple[str | None, str, str]]]:
            if fmt not in DIAGRAM_FORMATS:
                raise InvalidInput("format", f"format must be one of: {', '.join(DIAGRAM_FORMATS)}")
            record = self.engine.get_sync(attempt_id)
            return record.flow, record.state, path_of(self.engine.history_sync(record.id))

        return self._audited(key_name, "view_diagram", str(attempt_id)[:64], {"format": fmt}, work)

    async def diagram(
        self, key_name: str, attempt_id: str, fmt: str
    ) -> tuple[str, str, list[tuple[str | None, str, str]]]:
        return await self._run(self.diagram_sync, key_name, attempt_id, fmt)

    # -- actions -------------------------------------------------------------------

    def cancel_sync(self, key_name: str, attempt_id: str | uuid.UUID, reason: str) -> str:
        """Cancel the attempt and kill its link; `EventRefused` (409) when not allowed now."""
        reason = reason.strip()

        def revoke(tx: Any) -> None:
            tx.conn.execute(
                update(token_t)
                .where(token_t.c.attempt_id == tx.attempt.id, token_t.c.revoked_at.is_(None))
                .values(revoked_at=tx.now)
            )

        def work() -> str:
            if not reason:
                raise InvalidInput("reason", "a reason is required")
            fired = self.engine.fire_sync(
                attempt_id,
                "cancel",
                actor=actor_of(key_name),
                detail={"reason": reason, "via": "support"},
                in_tx=revoke,
            )
            return fired.attempt.state

        return self._audited(key_name, "cancel", str(attempt_id)[:64], {"reason": reason}, work)

    async def cancel(self, key_name: str, attempt_id: str, reason: str) -> str:
        return await self._run(self.cancel_sync, key_name, attempt_id, reason)

    def resend_sync(self, key_name: str, attempt_id: str | uuid.UUID) -> AttemptRecord:
        """A new `requested` attempt for the same address and language.

        The mail worker emails it without the throttles (an agent's resend is
        deliberate and audited); once emailed it supersedes the account's older
        live attempt.
        """

        def work() -> AttemptRecord:
            original = self.engine.read_sync(attempt_id)
            if original.flow != NAME:
                raise InvalidInput("id", f"only {NAME} attempts can be resent")
            delivery = {"status": "queued", "tries": 0, "last_error": None, "sent_at": None}
            return self.engine.start_sync(
                NAME,
                subject=original.subject,
                locale=original.locale,
                actor=actor_of(key_name),
                data={
                    "email_submitted": original.data.get("email_submitted", original.subject),
                    "client_ip": None,
                    "user_agent": "",
                    "delivery": delivery,
                    "resend_of": str(original.id),
                    "requested_by": actor_of(key_name),
                },
                detail={"resend_of": str(original.id)},
            )

        return self._audited(key_name, "resend", str(attempt_id)[:64], {}, work)

    async def resend(self, key_name: str, attempt_id: str) -> AttemptRecord:
        return await self._run(self.resend_sync, key_name, attempt_id)

    # -- stats -----------------------------------------------------------------------

    def stats_sync(
        self, key_name: str, since: datetime | None = None, until: datetime | None = None
    ) -> dict[str, Any]:
        """Counts per state and the funnel of attempts created in [since, until)."""
        until = as_utc(until) if until is not None else self.clock.now()
        since = as_utc(since) if since is not None else until - DEFAULT_STATS_WINDOW
        return self._audited(
            key_name,
            "stats",
            None,
            {"since": since.isoformat(), "until": until.isoformat()},
            lambda: self._stats(since, until),
        )

    def _stats(self, since: datetime, until: datetime) -> dict[str, Any]:
        if since >= until:
            raise InvalidInput("since", "since must be before until")
        self.engine.sweep_sync()
        window = and_(
            attempt_t.c.flow == NAME,
            attempt_t.c.created_at >= since,
            attempt_t.c.created_at < until,
        )
        with self.db.transaction(write=False) as conn:
            states = dict(
                conn.execute(
                    select(attempt_t.c.state, func.count())
                    .where(window)
                    .group_by(attempt_t.c.state)
                ).all()
            )
            reached_rows = conn.execute(
                select(event_t.c.to_state, func.count(func.distinct(event_t.c.attempt_id)))
                .select_from(event_t.join(attempt_t, attempt_t.c.id == event_t.c.attempt_id))
                .where(window, event_t.c.accepted.is_(True), event_t.c.to_state.in_(FUNNEL))
                .group_by(event_t.c.to_state)
            ).all()
            firsts = conn.execute(
                select(event_t.c.attempt_id, event_t.c.to_state, func.min(event_t.c.at))
                .select_from(event_t.join(attempt_t, attempt_t.c.id == event_t.c.attempt_id))
                .where(window, event_t.c.accepted.is_(True), event_t.c.to_state.in_(FUNNEL))
                .group_by(event_t.c.attempt_id, event_t.c.to_state)
            ).all()
        reached = {state: int(n) for state, n in reached_rows}
        first_at: dict[Any, dict[str, datetime]] = {}
        for attempt_id, state, at in firsts:
            first_at.setdefault(attempt_id, {})[state] = as_utc(at)
        funnel = []
        for i, step in enumerate(FUNNEL):
            count = reached.get(step, 0)
            conversion = median = None
            if i > 0:
                before = reached.get(FUNNEL[i - 1], 0)
                conversion = round(count / before, 4) if before else None
                gaps = [
                    (times[step] - times[FUNNEL[i - 1]]).total_seconds()
                    for times in first_at.values()
                    if step in times and FUNNEL[i - 1] in times
                ]
                median = float(statistics.median(gaps)) if gaps else None
            funnel.append(
                {"step": step, "count": count, "conversion": conversion, "median_seconds": median}
            )
        return {
            "since": since,
            "until": until,
            "total": sum(int(n) for n in states.values()),
            "states": {state: int(n) for state, n in sorted(states.items())},
            "funnel": funnel,
        }

    async def stats(
        self, key_name: str, since: datetime | None = None, until: datetime | None = None
    ) -> dict[str, Any]:
        return await self._run(self.stats_sync, key_name, since, until)

    # -- the audit log ---------------------------------------------------------------

    def audit_sync(
        self, key_name: str, limit: int = DEFAULT_AUDIT_PAGE, cursor: str | None = None
    ) -> Page:
        """Support queries and actions, newest first (this query included), a keyset page."""
        if not 1 <= limit <= MAX_AUDIT_PAGE:
            raise InvalidInput("limit", f"limit must be between 1 and {MAX_AUDIT_PAGE}")
        after = decode_row_cursor(cursor) if cursor is not None else None
        detail = {"limit": limit, "paged": True} if after else {"limit": limit}
        self._audit(key_name, "audit", None, {**detail, "outcome": "ok"})
        query = select(audit_t).order_by(audit_t.c.at.desc(), audit_t.c.id.desc()).limit(limit + 1)
        if after is not None:
            query = query.where(tuple_(audit_t.c.at, audit_t.c.id) < after)
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
        next_cursor = encode_cursor(rows[-1].at, rows[-1].id) if more else None
        return Page(items, next_cursor)

    async def audit(
        self, key_name: str, limit: int = DEFAULT_AUDIT_PAGE, cursor: str | None = None
    ) -> Page:
        return await self._run(self.audit_sync, key_name, limit, cursor)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _item(record: AttemptRecord) -> dict[str, Any]:
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


def _delivery(value: object) -> dict[str, Any]:
    facts = value if isinstance(value, Mapping) else {}
    status = facts.get("status")
    tries = facts.get("tries")
    return {
        "status": status if status in DELIVERY_STATUSES else "none",
        "tries": tries if isinstance(tries, int) else 0,
        "last_error": _text(facts.get("last_error")),
        "sent_at": _text(facts.get("sent_at")),
    }


def _safe_detail(detail: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in detail.items()
        if not any(word in key.lower() for word in _SECRET_WORDS)
    }


def _timeline_entry(event: EventRecord) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "event": event.event,
        "from": event.from_state,
        "to": event.to_state,
        "actor": event.actor,
        "at": as_utc(event.at),
        "accepted": event.accepted,
        "detail": _safe_detail(event.detail or {}),
    }
