"""What the support console does for a signed-in agent, each query and action audited.

The console's pages (`api.web.console`) call this, never the tables: attempts
go through `SupportService` (the same rules and audit as the JSON support
API, recorded under the agent's label instead of a key's name), accounts
through `api.accounts.overview`, keys through `api.support.keys`. Every
method takes the agent and records what they asked or did in the audit log,
refusals included.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from api.accounts.addresses import mask_email
from api.accounts.overview import AccountFacts, Overview
from api.errors import InvalidInput
from api.support import views
from api.support.agents import Agent, Agents
from api.support.audit import DEFAULT_AUDIT_PAGE
from api.support.queue import SupportQueue
from api.support.reference import normalise_reference
from api.support.resend import Blocked
from api.support.service import Page, SupportService
from engine import AttemptRecord
from engine.errors import InvalidAttemptId
from engine.records import parse_attempt_id

# Attempts of the same address shown beside an attempt, and on an account's page.
RELATED_LIMIT = 20
FIND_PAGE = 25
# The case queue reads its states page by page, at most this many cases in all.
QUEUE_PAGE = 100
QUEUE_MAX = 1000
SEARCH_HELP = "enter an email address, a reference such as ABCD-EFGH, or an attempt id"


@dataclass(frozen=True)
class Search:
    """What the one search box was understood as."""

    kind: str  # "all", "email", "reference", "attempt"
    value: str | None


def understand(query: str | None) -> Search:
    """An exact address, a reference as people read it out, or an attempt id."""
    text = (query or "").strip()
    if not text:
        return Search("all", None)
    if "@" in text:
        return Search("email", text)
    try:
        return Search("attempt", str(parse_attempt_id(text)))
    except (InvalidAttemptId, ValueError):
        pass
    reference = normalise_reference(text)
    if reference is not None:
        return Search("reference", reference)
    raise InvalidInput("q", SEARCH_HELP)


@dataclass(frozen=True)
class AttemptPage:
    """One attempt as its console page shows it."""

    detail: dict[str, Any]
    path: list[tuple[str | None, str, str]]
    related: list[dict[str, Any]]
    resend_possible: bool
    resend_blocked: Blocked | None
    latest_email: str | None


class Console:
    """The console's queries and actions for one agent at a time."""

    def __init__(self, support: SupportService, agents: Agents, overview: Overview) -> None:
        self.support = support
        self.engine = support.engine
        self.agents = agents
        self.overview = overview
        self.audit_log = support.audit_log

    # -- signing in and out --------------------------------------------------------------

    def record_sign_in(self, agent: Agent, outcome: str) -> None:
        self.audit_log.record(agent.label, "sign_in", None, {"outcome": outcome})

    def record_sign_out(self, agent: Agent) -> None:
        self.audit_log.record(agent.label, "sign_out", None, {"outcome": "ok"})

    # -- finding attempts ------------------------------------------------------------------

    def find_sync(
        self,
        agent: Agent,
        search: Search,
        *,
        flow: str | None = None,
        state: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
    ) -> Page:
        """Attempts matching the search and the filters, newest first (audited as the
        support API's list is)."""
        return self.support.list_attempts_sync(
            agent.label,
            flow=flow,
            state=state,
            email=search.value if search.kind == "email" else None,
            reference=search.value if search.kind == "reference" else None,
            since=since,
            until=until,
            limit=FIND_PAGE,
            cursor=cursor,
        )

    # -- the case queue ------------------------------------------------------------------

    def queues(self) -> dict[str, SupportQueue]:
        """Each flow's queue, as its current version declares it (`support_queue`)."""
        return {
            spec.name: queue
            for spec, queue in self.engine.flows.hooked("support_queue")
            if isinstance(queue, SupportQueue)
        }

    def queue_sync(self, agent: Agent) -> list[dict[str, Any]]:
        """The cases every flow's queue lists, oldest first (audited): each read with its
        deadline applied (a case past its review deadline shows overdue), its row flags
        and its signals."""

        def work() -> list[dict[str, Any]]:
            rows = []
            for name, queue in self.queues().items():
                for listed in self._queued(name, queue):
                    record = self.engine.get_sync(listed.id)
                    if record.state not in queue.states:
                        continue
                    rows.append(
                        {
                            **views.item(record),
                            "overdue": record.state in queue.overdue,
                            "waiting_on_person": record.state in queue.waiting_on_person,
                            "signals": dict(queue.signals(self.support.context, record)),
                        }
                    )
            rows.sort(key=lambda row: (row["created_at"], row["id"]))
            return rows[:QUEUE_MAX]

        return self.audit_log.audited(agent.label, "view_queue", None, {}, work)

    def _queued(self, flow: str, queue: SupportQueue) -> list[AttemptRecord]:
        found: list[AttemptRecord] = []
        after = None
        while len(found) < QUEUE_MAX:
            page = self.engine.queries.page_sync(
                flows=[flow], states=queue.states, after=after, limit=QUEUE_PAGE
            )
            found.extend(page.items)
            if page.next_key is None:
                break
            after = page.next_key
        return found

    # -- one attempt -------------------------------------------------------------------------

    def attempt_sync(self, agent: Agent, attempt_id: str) -> AttemptPage:
        """The attempt's view, its path for the diagram, the same address's other journeys,
        and whether a resend would be refused now."""
        detail = self.support.attempt_sync(agent.label, attempt_id)
        path = [
            (entry["from"], entry["event"], entry["to"])
            for entry in detail["timeline"]
            if entry["accepted"] and entry["to"] is not None
        ]
        record = self.engine.read_sync(detail["id"])
        resendable = "resend" in self.engine.spec_of(record).hooks
        blocked, latest = (None, None)
        if resendable:
            blocked, latest = self.support.resend_check_sync(record.id)
        return AttemptPage(detail, path, self._related(record), resendable, blocked, latest)

    def _related(self, record: AttemptRecord) -> list[dict[str, Any]]:
        """The same address's other attempts, of every flow, newest first."""
        if not record.subject:
            return []
        page = self.engine.queries.page_sync(subject=record.subject, limit=RELATED_LIMIT + 1)
        return [self._item(r) for r in page.items if r.id != record.id][:RELATED_LIMIT]

    @staticmethod
    def _item(record: AttemptRecord) -> dict[str, Any]:
        item = views.item(record)
        resend_of = record.data.get("resend_of")
        item["resend_of"] = resend_of if isinstance(resend_of, str) else None
        return item

    def fire_event_sync(self, agent: Agent, attempt_id: str, event: str, reason: str) -> str:
        return self.support.fire_event_sync(agent.label, attempt_id, event, reason).state

    def resend_sync(
        self,
        agent: Agent,
        attempt_id: str,
        *,
        override_reason: str | None = None,
        expected_latest: str | None = None,
    ) -> AttemptRecord:
        return self.support.resend_sync(
            agent.label,
            attempt_id,
            override_reason=override_reason,
            expected_latest=expected_latest,
        )

    # -- accounts ------------------------------------------------------------------------------

    def account_by_email_sync(
        self, agent: Agent, email: str
    ) -> tuple[AccountFacts | None, list[dict[str, Any]]]:
        """Whether an account has this exact address (agents may know), and its journeys."""
        shown = mask_email(email.strip().casefold()) if "@" in email else email[:20]

        def work() -> tuple[AccountFacts | None, list[dict[str, Any]]]:
            facts = self.overview.find_sync(email)
            return facts, self._journeys(facts)

        found = self.audit_log.audited(agent.label, "view_account", None, {"email": shown}, work)
        return found

    def account_sync(
        self, agent: Agent, account_id: str
    ) -> tuple[AccountFacts, list[dict[str, Any]]]:
        def work() -> tuple[AccountFacts, list[dict[str, Any]]]:
            facts = self.overview.by_id_sync(account_id)
            return facts, self._journeys(facts)

        return self.audit_log.audited(agent.label, "view_account", account_id[:64], {}, work)

    def _journeys(self, facts: AccountFacts | None) -> list[dict[str, Any]]:
        if facts is None:
            return []
        page = self.engine.queries.page_sync(subject=facts.address, limit=RELATED_LIMIT)
        return [self._item(r) for r in page.items]

    def clear_slow_down_sync(self, agent: Agent, account_id: str) -> int:
        return self.audit_log.audited(
            agent.label,
            "clear_slow_down",
            account_id[:64],
            {},
            lambda: self.overview.clear_slow_down_sync(account_id),
        )

    def revoke_session_sync(self, agent: Agent, account_id: str, ref: str) -> None:
        self.audit_log.audited(
            agent.label,
            "revoke_session",
            account_id[:64],
            {"session": ref[:16]},
            lambda: self.overview.revoke_session_sync(account_id, ref),
        )

    # -- stats, audit, keys ------------------------------------------------------------------------

    def stats_sync(self, agent: Agent, since: datetime, until: datetime) -> list[dict[str, Any]]:
        """Each flow's counts per state and funnel over [since, until)."""
        return [
            self.support.stats_sync(agent.label, since, until, name)
            for name in self.engine.flows.names()
        ]

    def audit_sync(
        self,
        agent: Agent,
        *,
        who: str | None = None,
        action: str | None = None,
        target: str | None = None,
        cursor: str | None = None,
    ) -> Page:
        """The audit log, newest first, filtered (this query recorded first)."""
        if target is not None:
            # An attempt may be named by its reference too.
            try:
                target = str(parse_attempt_id(target))
            except (InvalidAttemptId, ValueError):
                found = self._by_reference(target)
                target = str(found) if found else target
        filters = {"who": who, "action": action, "target": target}
        shown = {k: v for k, v in filters.items() if v}
        self.audit_log.record(agent.label, "audit", None, {**shown, "outcome": "ok"})
        items, next_cursor = self.audit_log.page_sync(DEFAULT_AUDIT_PAGE, cursor, **filters)
        return Page(items, next_cursor)

    def _by_reference(self, text: str) -> uuid.UUID | None:
        from api.support.reference import reference_bounds

        bounds = reference_bounds(text)
        if bounds is None:
            return None
        found = self.engine.queries.page_sync(id_between=bounds, limit=2).items
        return found[0].id if len(found) == 1 else None

    def actions(self) -> list[str]:
        """The actions the audit log records, for its filter."""
        events = {
            e
            for spec in self.engine.flows.all_versions()
            for e in spec.hooks.get("support_events", ())
        }
        fixed = {
            "audit",
            "clear_slow_down",
            "fire_event",
            "list_attempts",
            "list_keys",
            "view_queue",
            "refused",
            "resend",
            "revoke_key",
            "revoke_session",
            "sign_in",
            "sign_out",
            "stats",
            "view_account",
            "view_attempt",
            "view_diagram",
        }
        return sorted(fixed | {str(e) for e in events})

    def who(self) -> list[str]:
        """Agents and keys, as the audit log names them, for its filter."""
        agents = [a.label for a in self.agents.list_sync()]
        keys = sorted({k["name"] for k in self.support.list_keys_sync()})
        return agents + keys

    def keys_sync(self, agent: Agent) -> list[dict[str, Any]]:
        return self.audit_log.audited(
            agent.label, "list_keys", None, {}, self.support.list_keys_sync
        )

    def revoke_key_sync(self, agent: Agent, name: str) -> None:
        self.audit_log.audited(
            agent.label,
            "revoke_key",
            name[:100],
            {},
            lambda: self.support.revoke_key_sync(name),
        )
