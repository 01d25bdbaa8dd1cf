"""What support agents may do, for every registered flow: find attempts, read one, draw it,
cancel it, resend it, count them, read the audit log, and manage the keys.

Every query and action is recorded in the audit log under the agent's key
name (`api.support.audit`), refusals too, and every action is fired on the
attempt as the actor `support:<key name>`. Nothing here names a flow: lists
and counts come from the engine's read API, what an attempt's flow allows
from its spec, a resend from the flow's `resend` hook, the fields a flow adds
to an attempt's detail from its `support_detail` hook. Support sees
attempts through `api.support.views` only: masked, never a secret.

All database work is sync code; the async methods run it on the database's
threads through `Database.run`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from api.accounts.addresses import InvalidEmail, mask_email, normalise_email
from api.errors import InvalidInput
from api.support import views
from api.support.audit import DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE, UNKNOWN_KEY, Audit
from api.support.cursors import decode_cursor, decode_row_cursor, encode_cursor
from api.support.keys import KeyNameTaken, KeyNotFound, Keys
from api.support.reference import reference_bounds
from api.support.resend import (
    NEWER_EMAIL,
    Blocked,
    ResendLock,
    ResendRefused,
    blocked_at,
    latest_email,
)
from engine import AttemptRecord, Engine
from engine.clock import as_utc
from engine.diagrams import path_of

T = TypeVar("T")

# The formats api.web.flows.ATTEMPT_FORMATS serves.
DIAGRAM_FORMATS = ("svg", "dot", "mermaid")
MAX_PAGE = 200
DEFAULT_PAGE = 50
DEFAULT_STATS_WINDOW = timedelta(days=7)

__all__ = [
    "DEFAULT_AUDIT_PAGE",
    "DEFAULT_PAGE",
    "MAX_AUDIT_PAGE",
    "MAX_PAGE",
    "UNKNOWN_KEY",
    "KeyNameTaken",
    "KeyNotFound",
    "Page",
    "SupportService",
    "actor_of",
]


@dataclass(frozen=True)
class Page:
    """One page of a list, and the cursor of the next one (None on the last)."""

    items: list[dict[str, Any]]
    next_cursor: str | None


def actor_of(key_name: str) -> str:
    """The actor recorded on events a support key fires."""
    return f"support:{key_name}"


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value is not None else None


class SupportService:
    """Support keys, attempt queries and actions, stats, and the audit log."""

    def __init__(self, engine: Engine, context: Any = None) -> None:
        self.engine = engine
        self.db = engine.db
        self.clock = engine.clock
        # What the flows' hooks receive (the application's services).
        self.context = context
        self.keys = Keys(self.db, self.clock)
        self.audit_log = Audit(self.db, self.clock)
        self.resend_lock = ResendLock(self.db)

    # -- keys ------------------------------------------------------------------

    def create_key_sync(self, name: str, role: str) -> str:
        return self.keys.create_sync(name, role)

    def list_keys_sync(self) -> list[dict[str, Any]]:
        return self.keys.list_sync()

    def revoke_key_sync(self, name: str) -> None:
        self.keys.revoke_sync(name)

    def authenticate_sync(self, key: object) -> tuple[str, str] | None:
        return self.keys.authenticate_sync(key)

    async def authenticate(self, key: object) -> tuple[str, str] | None:
        """`authenticate_sync` on a database reader thread."""
        return await self.db.run(self.keys.authenticate_sync, key, write=False)

    # -- auditing ----------------------------------------------------------------

    def _audited(
        self,
        key_name: str,
        action: str,
        target: str | None,
        detail: dict[str, Any],
        work: Callable[[], T],
    ) -> T:
        return self.audit_log.audited(key_name, action, target, detail, work)

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
        await self._run(self.audit_log.record, key_name, "refused", path, detail)

    async def _run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        # Support work writes (its audit entry, and lazily applied deadlines).
        return await self.db.run(fn, *args, **kw)

    # -- listing -------------------------------------------------------------------

    def list_attempts_sync(
        self,
        key_name: str,
        *,
        flow: str | None = None,
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
            "flow": flow,
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
            lambda: self._list(flow, state, email, reference, since, until, limit, cursor),
        )

    def _list(
        self,
        flow: str | None,
        state: str | None,
        email: str | None,
        reference: str | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        cursor: str | None,
    ) -> Page:
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput("limit", "limit must be between 1 and {most}", most=MAX_PAGE)
        names = self.engine.flows.names()
        if flow is not None and flow not in names:
            raise InvalidInput("flow", "flow must be one of: {choices}", choices=", ".join(names))
        if state is not None:
            known = {s for spec in self.engine.flows.all_versions() for s in spec.states}
            if state not in known:
                raise InvalidInput(
                    "state", "state must be one of: {choices}", choices=", ".join(sorted(known))
                )
        subject = None
        if email is not None:
            try:
                subject = normalise_email(email)
            except InvalidEmail as exc:
                raise InvalidInput("email", str(exc)) from None
        bounds = None
        if reference is not None:
            bounds = reference_bounds(reference)
            if bounds is None:
                raise InvalidInput("reference", "a reference looks like ABCD-EFGH")
        after = decode_cursor(cursor) if cursor is not None else None
        # Deadlines are applied lazily: bring overdue attempts up to date before
        # reading, so a state filter never shows a link that is already dead.
        self.engine.sweep_sync()
        page = self.engine.queries.page_sync(
            flows=[flow] if flow else None,
            states=[state] if state else None,
            subject=subject,
            created_since=since,
            created_until=until,
            id_between=bounds,
            after=after,
            limit=limit,
        )
        next_cursor = encode_cursor(*page.next_key) if page.next_key else None
        return Page([views.item(r) for r in page.items], next_cursor)

    async def list_attempts(self, key_name: str, **filters: Any) -> Page:
        return await self._run(self.list_attempts_sync, key_name, **filters)

    # -- one attempt -----------------------------------------------------------------

    def attempt_sync(self, key_name: str, attempt_id: str | uuid.UUID) -> dict[str, Any]:
        """The attempt (deadline applied), its whole timeline, and what may happen next."""
        return self._audited(
            key_name, "view_attempt", str(attempt_id)[:64], {}, lambda: self.view_sync(attempt_id)
        )

    def view_sync(self, attempt_id: str | uuid.UUID) -> dict[str, Any]:
        """Support's view of one attempt, unaudited (the command line's `attempts show`)."""
        record = self.engine.get_sync(attempt_id)
        history = self.engine.history_sync(record.id)
        view = views.detail(record, history, self.engine.allowed_events(record))
        return {
            **view,
            "support_events": self.support_events(record),
            "flow_detail": self.flow_detail(record),
        }

    def flow_detail(self, record: AttemptRecord) -> dict[str, Any]:
        """What the attempt's flow adds to its detail (its `support_detail` hook, called
        with the application and the attempt), or nothing."""
        hook = self.engine.spec_of(record).hooks.get("support_detail")
        return dict(hook(self.context, record)) if hook is not None else {}

    async def attempt(self, key_name: str, attempt_id: str) -> dict[str, Any]:
        return await self._run(self.attempt_sync, key_name, attempt_id)

    def diagram_sync(
        self, key_name: str, attempt_id: str | uuid.UUID, fmt: str
    ) -> tuple[AttemptRecord, list[tuple[str | None, str, str]]]:
        """The attempt and its path of accepted transitions, for its flow's diagram."""

        def work() -> tuple[AttemptRecord, list[tuple[str | None, str, str]]]:
            if fmt not in DIAGRAM_FORMATS:
                raise InvalidInput(
                    "format", "format must be one of: {choices}", choices=", ".join(DIAGRAM_FORMATS)
                )
            record = self.engine.get_sync(attempt_id)
            return record, path_of(self.engine.history_sync(record.id))

        return self._audited(key_name, "view_diagram", str(attempt_id)[:64], {"format": fmt}, work)

    async def diagram(
        self, key_name: str, attempt_id: str, fmt: str
    ) -> tuple[AttemptRecord, list[tuple[str | None, str, str]]]:
        return await self._run(self.diagram_sync, key_name, attempt_id, fmt)

    # -- actions -----------------------------------------------------------------------

    def support_events(self, record: AttemptRecord) -> list[str]:
        """The events support may fire at this attempt now: those its flow lets support
        fire (its `support_events` hook), among those its state allows."""
        spec = self.engine.spec_of(record)
        allowed = set(self.engine.allowed_events(record))
        return [event for event in spec.hooks.get("support_events", ()) if event in allowed]

    def fire_event_sync(
        self, key_name: str, attempt_id: str | uuid.UUID, event: str, reason: str
    ) -> AttemptRecord:
        """Fire one of the events the attempt's flow lets support fire, with a reason, as
        `support:<key name>`; the flow's effects do the rest. `InvalidInput` for an event
        support may not fire, `EventRefused` (409) when its state does not allow it now."""
        reason = reason.strip()

        def work() -> AttemptRecord:
            if not reason:
                raise InvalidInput("reason", "a reason is required")
            record = self.engine.read_sync(attempt_id)
            spec = self.engine.spec_of(record)
            permitted = spec.hooks.get("support_events", ())
            if event not in permitted:
                names = ", ".join(permitted) or "none"
                raise InvalidInput(
                    "event",
                    "support may fire these events of {flow}: {choices}",
                    flow=spec.name,
                    choices=names,
                )
            fired = self.engine.fire_sync(
                record.id,
                event,
                actor=actor_of(key_name),
                params={"reason": reason, "context": self.context},
                detail={"reason": reason, "via": "support"},
            )
            return fired.attempt

        # The audit names the event when it is one of ours; anything else a caller typed
        # is recorded as what it is, a request to fire some event, shortened.
        known = {e for spec in self.engine.flows.all_versions() for e in spec.events}
        if event in known:
            action, detail = event, {"reason": reason}
        else:
            action, detail = "fire_event", {"reason": reason, "event": event[:64]}
        return self._audited(key_name, action, str(attempt_id)[:64], detail, work)

    async def fire_event(
        self, key_name: str, attempt_id: str, event: str, reason: str
    ) -> AttemptRecord:
        return await self._run(self.fire_event_sync, key_name, attempt_id, event, reason)

    def cancel_sync(self, key_name: str, attempt_id: str | uuid.UUID, reason: str) -> str:
        """Cancel the attempt (its flow's cancel effect kills what it gave out);
        `EventRefused` (409) when not allowed now."""
        return self.fire_event_sync(key_name, attempt_id, "cancel", reason).state

    async def cancel(self, key_name: str, attempt_id: str, reason: str) -> str:
        return await self._run(self.cancel_sync, key_name, attempt_id, reason)

    def resend_sync(
        self,
        key_name: str,
        attempt_id: str | uuid.UUID,
        *,
        override_reason: str | None = None,
        expected_latest: str | None = None,
    ) -> AttemptRecord:
        """A new attempt like this one, through its flow's `resend` hook, under the resend
        rules (`api.support.resend`): `ResendRefused` inside the cooldown or past the
        hourly limit, unless `override_reason` is given (the audit keeps it and the rule
        overridden); with `expected_latest` (the newest email's attempt id the agent saw,
        "" for none) a resend, overridden or not, is refused if another email was queued
        since (a double click, whatever the cooldown)."""
        override = (override_reason or "").strip() or None
        detail: dict[str, Any] = {"override_reason": override} if override else {}

        def work() -> AttemptRecord:
            original = self.engine.read_sync(attempt_id)
            spec = self.engine.spec_of(original)
            hook = spec.hooks.get("resend")
            if hook is None:
                raise InvalidInput("id", "attempts of {flow} cannot be resent", flow=original.flow)
            with self.resend_lock.held(f"{original.flow}\x1f{original.subject}"):
                limits_of = spec.hooks.get("resend_limits")
                if limits_of is not None:
                    limits = limits_of(self.context, original)
                    now = self.clock.now()
                    blocked = blocked_at(limits, now)
                    if override is None and blocked is not None:
                        raise ResendRefused(blocked, now)
                    latest = latest_email(limits)
                    seen = str(latest) if latest else ""
                    if expected_latest is not None and expected_latest != seen:
                        raise ResendRefused(Blocked(NEWER_EMAIL, now, latest), now)
                    if override is not None:
                        detail["overridden"] = blocked.rule if blocked else None
                return hook(self.context, original, actor_of(key_name))  # type: ignore[no-any-return]

        return self._audited(key_name, "resend", str(attempt_id)[:64], detail, work)

    def resend_check_sync(self, attempt_id: str | uuid.UUID) -> tuple[Blocked | None, str | None]:
        """Whether a resend of the attempt would be refused now (and why), and the newest
        email's attempt id ("" for none; None when its flow has no resend limits)."""
        original = self.engine.read_sync(attempt_id)
        limits_of = self.engine.spec_of(original).hooks.get("resend_limits")
        if limits_of is None:
            return None, None
        limits = limits_of(self.context, original)
        latest = latest_email(limits)
        return blocked_at(limits, self.clock.now()), str(latest) if latest else ""

    async def resend(
        self,
        key_name: str,
        attempt_id: str,
        *,
        override_reason: str | None = None,
        expected_latest: str | None = None,
    ) -> AttemptRecord:
        return await self._run(
            self.resend_sync,
            key_name,
            attempt_id,
            override_reason=override_reason,
            expected_latest=expected_latest,
        )

    # -- stats -------------------------------------------------------------------------

    def stats_sync(
        self,
        key_name: str,
        since: datetime | None = None,
        until: datetime | None = None,
        flow: str | None = None,
    ) -> dict[str, Any]:
        """Counts per state and the funnel of a flow's attempts created in [since, until)
        (the first registered flow unless another is named)."""
        until = as_utc(until) if until is not None else self.clock.now()
        since = as_utc(since) if since is not None else until - DEFAULT_STATS_WINDOW
        name = flow or self.engine.flows.names()[0]
        return self._audited(
            key_name,
            "stats",
            None,
            {"flow": name, "since": since.isoformat(), "until": until.isoformat()},
            lambda: self._stats(name, since, until),
        )

    def _stats(self, flow: str, since: datetime, until: datetime) -> dict[str, Any]:
        names = self.engine.flows.names()
        if flow not in names:
            raise InvalidInput("flow", "flow must be one of: {choices}", choices=", ".join(names))
        if since >= until:
            raise InvalidInput("since", "since must be before until")
        self.engine.sweep_sync()
        counts = self.engine.queries.counts_sync(since=since, until=until)
        states = {state: n for (name, state), n in counts.items() if name == flow}
        spec = self.engine.flows.get(flow)
        funnel = self.engine.queries.funnel_sync(flow, spec.funnel, since, until)
        return {
            "flow": flow,
            "since": since,
            "until": until,
            "total": sum(states.values()),
            "states": dict(sorted(states.items())),
            "funnel": [
                {
                    "step": s.step,
                    "count": s.count,
                    "conversion": s.conversion,
                    "median_seconds": s.median_seconds,
                }
                for s in funnel
            ],
        }

    async def stats(
        self,
        key_name: str,
        since: datetime | None = None,
        until: datetime | None = None,
        flow: str | None = None,
    ) -> dict[str, Any]:
        return await self._run(self.stats_sync, key_name, since, until, flow)

    # -- the audit log -------------------------------------------------------------------

    def audit_sync(
        self, key_name: str, limit: int = DEFAULT_AUDIT_PAGE, cursor: str | None = None
    ) -> Page:
        """Support queries and actions, newest first (this query included), a keyset page."""
        if not 1 <= limit <= MAX_AUDIT_PAGE:
            raise InvalidInput("limit", "limit must be between 1 and {most}", most=MAX_AUDIT_PAGE)
        if cursor is not None:
            decode_row_cursor(cursor)  # a bad cursor is refused before anything is recorded
        paged = {"limit": limit, "paged": True} if cursor else {"limit": limit}
        self.audit_log.record(key_name, "audit", None, {**paged, "outcome": "ok"})
        items, next_cursor = self.audit_log.page_sync(limit, cursor)
        return Page(items, next_cursor)

    async def audit(
        self, key_name: str, limit: int = DEFAULT_AUDIT_PAGE, cursor: str | None = None
    ) -> Page:
        return await self._run(self.audit_sync, key_name, limit, cursor)
