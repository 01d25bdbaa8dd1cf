"""Reading the engine's tables: the one place outside `engine.core` that queries them.

Everything above the engine (support screens and API, throttles, workers,
metrics, the command line) asks here instead of writing SQL against the
attempt, event and outbox tables:

- `page`: attempts newest first, filtered by flow, state, subject, creation
  time or an id range, one keyset page at a time;
- `counts`: attempts per (flow, state); `waiting`: how many wait in a state;
- `count_events`: accepted events of a subject's attempts in a time window
  (what a throttle counts), and `event_times` when each was; `has_predecessor`:
  whether another attempt of the same subject and flow started shortly before
  this one (a duplicate);
- `live`: a subject's live attempts in an exclusive group;
- `funnel`: how many attempts reached each step of a path, and how fast;
- `transition_counts`: events fired per flow, event and outcome.

Each `*_sync` method runs one read transaction in the calling thread; the
plain ones await it on the database's reader threads. Times are parameters,
never SQL `now()`.
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, tuple_

from engine.clock import as_utc
from engine.db import Database
from engine.flow import FlowRegistry
from engine.models import Attempt, AttemptEvent, Outbox
from engine.records import AttemptRecord

attempt_t = Attempt.__table__
event_t = AttemptEvent.__table__
outbox_t = Outbox.__table__

Key = tuple[datetime, uuid.UUID]


@dataclass(frozen=True)
class Page:
    """One page of attempts, newest first, and the key to start the next one after."""

    items: list[AttemptRecord]
    next_key: Key | None


@dataclass(frozen=True)
class FunnelStep:
    """How many attempts reached a step, the share of the previous step's, and how fast."""

    step: str
    count: int
    conversion: float | None
    median_seconds: float | None


def _records(rows: Iterable[Any]) -> list[AttemptRecord]:
    return [AttemptRecord.from_row(r) for r in rows]


class Queries:
    """The engine's read API (see the module docstring)."""

    def __init__(self, db: Database, flows: FlowRegistry) -> None:
        self.db = db
        self.flows = flows

    async def _read(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return await self.db.run(fn, *args, write=False, **kw)

    # -- lists -------------------------------------------------------------

    def page_sync(
        self,
        *,
        flows: Sequence[str] | None = None,
        states: Sequence[str] | None = None,
        subject: str | None = None,
        created_since: datetime | None = None,
        created_until: datetime | None = None,
        id_between: tuple[uuid.UUID, uuid.UUID] | None = None,
        after: Key | None = None,
        limit: int = 50,
    ) -> Page:
        """Attempts matching every filter given, newest first, `limit` at most."""
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit!r}")
        conditions: list[Any] = []
        if flows is not None:
            conditions.append(attempt_t.c.flow.in_(list(flows)))
        if states is not None:
            conditions.append(attempt_t.c.state.in_(list(states)))
        if subject is not None:
            conditions.append(attempt_t.c.subject == subject)
        if created_since is not None:
            conditions.append(attempt_t.c.created_at >= as_utc(created_since))
        if created_until is not None:
            conditions.append(attempt_t.c.created_at < as_utc(created_until))
        if id_between is not None:
            conditions.append(attempt_t.c.id.between(*id_between))
        if after is not None:
            # A row-value comparison: both databases start an index range from it
            # (an OR of the two halves scans from the newest row instead).
            conditions.append(tuple_(attempt_t.c.created_at, attempt_t.c.id) < after)
        query = (
            select(attempt_t)
            .where(*conditions)
            .order_by(attempt_t.c.created_at.desc(), attempt_t.c.id.desc())
            .limit(limit + 1)
        )
        with self.db.transaction(write=False) as conn:
            rows = _records(conn.execute(query))
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, (rows[-1].created_at, rows[-1].id) if more else None)

    async def page(self, **filters: Any) -> Page:
        return await self._read(self.page_sync, **filters)  # type: ignore[no-any-return]

    def latest_sync(self, subject: str, flow: str) -> AttemptRecord | None:
        """A subject's newest attempt of a flow."""
        found = self.page_sync(flows=[flow], subject=subject, limit=1).items
        return found[0] if found else None

    # -- counts ------------------------------------------------------------

    def counts_sync(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> dict[tuple[str, str], int]:
        """Attempts per (flow, state), of those created in [since, until) when given."""
        conditions = []
        if since is not None:
            conditions.append(attempt_t.c.created_at >= as_utc(since))
        if until is not None:
            conditions.append(attempt_t.c.created_at < as_utc(until))
        query = (
            select(attempt_t.c.flow, attempt_t.c.state, func.count())
            .where(*conditions)
            .group_by(attempt_t.c.flow, attempt_t.c.state)
        )
        with self.db.transaction(write=False) as conn:
            return {(flow, state): int(n) for flow, state, n in conn.execute(query)}

    async def counts(self, **window: Any) -> dict[tuple[str, str], int]:
        return await self._read(self.counts_sync, **window)  # type: ignore[no-any-return]

    def waiting_sync(self, flow: str, state: str) -> int:
        """How many attempts of a flow are in a state (claimed or not)."""
        with self.db.transaction(write=False) as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(attempt_t)
                    .where(attempt_t.c.flow == flow, attempt_t.c.state == state)
                ).scalar_one()
            )

    def outbox_pending_sync(self, kinds: Sequence[str] | None = None) -> int:
        """How many outbox items (of the given kinds) wait to run."""
        conditions = [outbox_t.c.done_at.is_(None)]
        if kinds is not None:
            conditions.append(outbox_t.c.kind.in_(list(kinds)))
        with self.db.transaction(write=False) as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(outbox_t).where(*conditions)
                ).scalar_one()
            )

    # -- windows of the event log ------------------------------------------

    def count_events_sync(
        self,
        *,
        flow: str,
        subject: str,
        event: str,
        to_states: Sequence[str],
        since: datetime,
        exclude: uuid.UUID | None = None,
        created_since: datetime | None = None,
    ) -> int:
        """Accepted `event`s into `to_states` at attempts of `subject`, fired after `since`.

        `created_since`, when the caller knows that no older attempt can qualify,
        bounds the (subject, created_at) index range the query scans.
        """
        conditions = [
            attempt_t.c.flow == flow,
            attempt_t.c.subject == subject,
            event_t.c.event == event,
            event_t.c.accepted.is_(True),
            event_t.c.to_state.in_(list(to_states)),
            event_t.c.at > since,
        ]
        if exclude is not None:
            conditions.append(attempt_t.c.id != exclude)
        if created_since is not None:
            conditions.append(attempt_t.c.created_at > created_since)
        query = (
            select(func.count())
            .select_from(attempt_t.join(event_t, event_t.c.attempt_id == attempt_t.c.id))
            .where(*conditions)
        )
        with self.db.transaction(write=False) as conn:
            return int(conn.execute(query).scalar_one())

    def count_events_by_subject_sync(
        self,
        *,
        flow: str,
        subjects: Sequence[str],
        event: str,
        to_states: Sequence[str],
        since: datetime,
        exclude: Sequence[uuid.UUID] = (),
        created_since: datetime | None = None,
    ) -> dict[str, int]:
        """`count_events_sync` for many subjects in one query, by subject (a subject with
        none is absent); the attempts in `exclude` are not counted."""
        if not subjects:
            return {}
        conditions = [
            attempt_t.c.flow == flow,
            attempt_t.c.subject.in_(list(subjects)),
            event_t.c.event == event,
            event_t.c.accepted.is_(True),
            event_t.c.to_state.in_(list(to_states)),
            event_t.c.at > since,
        ]
        if exclude:
            conditions.append(attempt_t.c.id.not_in(list(exclude)))
        if created_since is not None:
            conditions.append(attempt_t.c.created_at > created_since)
        query = (
            select(attempt_t.c.subject, func.count())
            .select_from(attempt_t.join(event_t, event_t.c.attempt_id == attempt_t.c.id))
            .where(*conditions)
            .group_by(attempt_t.c.subject)
        )
        with self.db.transaction(write=False) as conn:
            return {subject: int(n) for subject, n in conn.execute(query)}

    def event_times_sync(
        self,
        *,
        flow: str,
        subject: str,
        event: str,
        to_states: Sequence[str],
        since: datetime,
        created_since: datetime | None = None,
    ) -> list[tuple[uuid.UUID, datetime]]:
        """The (attempt id, time) of each event `count_events_sync` counts, oldest first."""
        conditions = [
            attempt_t.c.flow == flow,
            attempt_t.c.subject == subject,
            event_t.c.event == event,
            event_t.c.accepted.is_(True),
            event_t.c.to_state.in_(list(to_states)),
            event_t.c.at > since,
        ]
        if created_since is not None:
            conditions.append(attempt_t.c.created_at > created_since)
        query = (
            select(event_t.c.attempt_id, event_t.c.at)
            .select_from(attempt_t.join(event_t, event_t.c.attempt_id == attempt_t.c.id))
            .where(*conditions)
            .order_by(event_t.c.at)
        )
        with self.db.transaction(write=False) as conn:
            return [(row.attempt_id, as_utc(row.at)) for row in conn.execute(query)]

    def has_predecessor_sync(self, record: AttemptRecord, within: timedelta) -> bool:
        """Whether another attempt of the same flow and subject started in the `within`
        before this one. Two started in the same instant are ordered by id, so exactly
        one of them is the first."""
        created = record.created_at
        query = (
            select(attempt_t.c.id)
            .where(
                attempt_t.c.flow == record.flow,
                attempt_t.c.subject == record.subject,
                attempt_t.c.id != record.id,
                attempt_t.c.created_at >= created - within,
                or_(
                    attempt_t.c.created_at < created,
                    and_(attempt_t.c.created_at == created, attempt_t.c.id < record.id),
                ),
            )
            .limit(1)
        )
        with self.db.transaction(write=False) as conn:
            return conn.execute(query).first() is not None

    def with_predecessor_sync(
        self, records: Sequence[AttemptRecord], within: timedelta
    ) -> set[uuid.UUID]:
        """`has_predecessor_sync` for many attempts of one flow in one query: the ids of
        those that have one."""
        if not records:
            return set()
        flow = records[0].flow
        earliest = min(r.created_at for r in records) - within
        query = select(attempt_t.c.id, attempt_t.c.subject, attempt_t.c.created_at).where(
            attempt_t.c.flow == flow,
            attempt_t.c.subject.in_(sorted({r.subject for r in records})),
            attempt_t.c.created_at >= earliest,
            attempt_t.c.created_at <= max(r.created_at for r in records),
        )
        with self.db.transaction(write=False) as conn:
            others = conn.execute(query).all()
        by_subject: dict[str, list[tuple[datetime, uuid.UUID]]] = {}
        for other_id, subject, created in others:
            by_subject.setdefault(subject, []).append((as_utc(created), other_id))
        found: set[uuid.UUID] = set()
        for record in records:
            created = as_utc(record.created_at)
            for other_created, other_id in by_subject.get(record.subject, ()):
                # Two started in the same instant are ordered by id (as the one-row query).
                earlier = other_created < created or (
                    other_created == created and other_id < record.id
                )
                if other_id != record.id and other_created >= created - within and earlier:
                    found.add(record.id)
                    break
        return found

    # -- the one-live rule ---------------------------------------------------

    def live_in(
        self, conn: Connection, group: str, subject: str, exclude: uuid.UUID | None = None
    ) -> list[AttemptRecord]:
        """A subject's attempts in a live state of their flow, among the flows of `group`
        (on an open connection: inside a transition)."""
        live = self._live_clause(group)
        if live is None:
            return []
        conditions = [attempt_t.c.subject == subject, live]
        if exclude is not None:
            conditions.append(attempt_t.c.id != exclude)
        rows = conn.execute(select(attempt_t).where(*conditions).order_by(attempt_t.c.created_at))
        return _records(rows)

    def live_in_many(
        self, conn: Connection, group: str, subjects: Sequence[str]
    ) -> list[AttemptRecord]:
        """`live_in` for many subjects at once, oldest first (on an open connection)."""
        live = self._live_clause(group)
        if live is None or not subjects:
            return []
        rows = conn.execute(
            select(attempt_t)
            .where(attempt_t.c.subject.in_(list(subjects)), live)
            .order_by(attempt_t.c.created_at)
        )
        return _records(rows)

    def _live_clause(self, group: str) -> Any:
        """Being in a live state of its flow, for the flows of `group` (None: no such flow)."""
        by_flow: dict[str, set[str]] = {}
        for spec in self.flows.group(group):
            by_flow.setdefault(spec.name, set()).update(spec.live_states)
        if not by_flow:
            return None
        return or_(
            *(
                and_(attempt_t.c.flow == flow, attempt_t.c.state.in_(sorted(states)))
                for flow, states in by_flow.items()
            )
        )

    def live_sync(self, group: str, subject: str) -> list[AttemptRecord]:
        """`live_in` in a read transaction of its own."""
        with self.db.transaction(write=False) as conn:
            return self.live_in(conn, group, subject)

    # -- statistics -----------------------------------------------------------

    def funnel_sync(
        self, flow: str, steps: Sequence[str], since: datetime, until: datetime
    ) -> list[FunnelStep]:
        """Of the flow's attempts created in [since, until): how many reached each step,
        the share of the previous step's that did, and the median time between them."""
        window = and_(
            attempt_t.c.flow == flow,
            attempt_t.c.created_at >= as_utc(since),
            attempt_t.c.created_at < as_utc(until),
        )
        joined = event_t.join(attempt_t, attempt_t.c.id == event_t.c.attempt_id)
        reached_on = and_(window, event_t.c.accepted.is_(True), event_t.c.to_state.in_(steps))
        with self.db.transaction(write=False) as conn:
            firsts = conn.execute(
                select(event_t.c.attempt_id, event_t.c.to_state, func.min(event_t.c.at))
                .select_from(joined)
                .where(reached_on)
                .group_by(event_t.c.attempt_id, event_t.c.to_state)
            ).all()
        first_at: dict[Any, dict[str, datetime]] = {}
        for attempt_id, state, at in firsts:
            first_at.setdefault(attempt_id, {})[state] = as_utc(at)
        reached = {step: sum(1 for t in first_at.values() if step in t) for step in steps}
        funnel = []
        for i, step in enumerate(steps):
            conversion = median = None
            if i > 0:
                before = reached[steps[i - 1]]
                conversion = round(reached[step] / before, 4) if before else None
                gaps = [
                    (times[step] - times[steps[i - 1]]).total_seconds()
                    for times in first_at.values()
                    if step in times and steps[i - 1] in times
                ]
                median = float(statistics.median(gaps)) if gaps else None
            funnel.append(FunnelStep(step, reached[step], conversion, median))
        return funnel

    def transition_counts_sync(self) -> list[tuple[str, str, bool, int]]:
        """(flow, event, accepted, how many) over the whole event log."""
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(
                select(attempt_t.c.flow, event_t.c.event, event_t.c.accepted, func.count())
                .select_from(event_t.join(attempt_t, attempt_t.c.id == event_t.c.attempt_id))
                .group_by(attempt_t.c.flow, event_t.c.event, event_t.c.accepted)
            ).all()
        return [(flow, event, bool(accepted), int(n)) for flow, event, accepted, n in rows]
