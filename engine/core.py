"""The engine: start attempts, fire events, read them, sweep their deadlines.

Each public operation is one database transaction run by `Database`; the
async methods await it on the database's threads, the `*_sync` ones run it in
the caller's thread (the command line, the worker, the sweep).

Firing an event:
1. the caller gathers the facts the flow's guards need (`params`);
2. the engine loads the attempt, applies an overdue deadline first, and lets
   a machine bound to a copy of the row decide (`engine.machines`: a machine
   is kept for the next fire, as good as new); the transition's
   callbacks (its effects) run inside the same database transaction and get
   it as the `tx` keyword (`Transaction`: the connection, the time, the
   outbox, other attempts);
3. an accepted transition updates the row only if its `version` is still the
   one read (optimistic lock) and appends its event row; entering a live
   state of an exclusive group ends the subject's other live attempts of
   that group in the same transaction;
4. a refused event (wrong state, failed guard) appends a refused event row and
   changes nothing else.

Reading the tables is also the engine's: `engine.queries` holds the lists,
counts and event-log windows everything above it uses. Every write
transaction also adds what it changed to the flows' running totals
(`engine.tally`) just before it commits.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    Connection,
    Select,
    and_,
    bindparam,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import BindParameter

from engine.clock import Clock, SystemClock, as_utc
from engine.db import Database
from engine.errors import (
    ConflictError,
    EngineError,
    EventRefused,
    NotFound,
    StoredStateInvalid,
)
from engine.flow import FlowRegistry, FlowSpec
from engine.machines import Machines
from engine.models import Attempt, AttemptEvent, Outbox
from engine.queries import Queries
from engine.records import AttemptRecord, EventRecord, parse_attempt_id
from engine.tally import Tally
from engine.tally import add as add_tally
from engine.tally import read as read_tally

attempt_t = Attempt.__table__
event_t = AttemptEvent.__table__
outbox_t = Outbox.__table__

SYSTEM = "system"
T = TypeVar("T")
_EVENT_COLUMNS = [
    "attempt_id",
    "seq",
    "event",
    "from_state",
    "to_state",
    "actor",
    "at",
    "accepted",
    "detail",
]


def _bind(column: Column[Any], name: str) -> BindParameter[Any]:
    return bindparam(name, type_=column.type)


# The statements every fire runs, built once. Building a Core statement and
# its cache key anew on each call cost more CPU than running it on SQLite;
# prebuilt, the engine's fire() went from ~2.2x to ~1.25x a hand-written
# transition on SQLite, ~1.5x to ~1.1x on PostgreSQL (bench/RESULTS.md).
_LOAD = select(attempt_t).where(attempt_t.c.id == _bind(attempt_t.c.id, "b_id"))
_LOAD_MANY = select(attempt_t).where(attempt_t.c.id.in_(bindparam("ids", expanding=True)))
_TRANSITION = (
    update(attempt_t)
    .where(
        attempt_t.c.id == _bind(attempt_t.c.id, "b_id"),
        attempt_t.c.version == _bind(attempt_t.c.version, "b_version"),
    )
    .values(
        state=_bind(attempt_t.c.state, "b_state"),
        version=_bind(attempt_t.c.version, "b_new_version"),
        updated_at=_bind(attempt_t.c.updated_at, "b_now"),
        deadline_at=_bind(attempt_t.c.deadline_at, "b_deadline_at"),
        lease_until=None,
        data=_bind(attempt_t.c.data, "b_data"),
    )
)
_NEXT_SEQ = (
    select(func.coalesce(func.max(event_t.c.seq), 0) + 1)
    .where(event_t.c.attempt_id == _bind(event_t.c.attempt_id, "b_attempt_id"))
    .scalar_subquery()
)
_EVENT_VALUES = {
    "attempt_id": _bind(event_t.c.attempt_id, "b_attempt_id"),
    "event": _bind(event_t.c.event, "b_event"),
    "from_state": _bind(event_t.c.from_state, "b_from_state"),
    "to_state": _bind(event_t.c.to_state, "b_to_state"),
    "actor": _bind(event_t.c.actor, "b_actor"),
    "at": _bind(event_t.c.at, "b_at"),
    "accepted": _bind(event_t.c.accepted, "b_accepted"),
    "detail": _bind(event_t.c.detail, "b_detail"),
}
# Where the database can return it, the event's number is taken inside the INSERT.
_LOG_RETURNING = insert(event_t).values(seq=_NEXT_SEQ, **_EVENT_VALUES).returning(event_t.c.seq)
_SELECT_NEXT_SEQ = select(_NEXT_SEQ)
# A batch's attempts' last event numbers, read once so its fires number their own events.
_LAST_SEQS = (
    select(event_t.c.attempt_id, func.max(event_t.c.seq))
    .where(event_t.c.attempt_id.in_(bindparam("ids", expanding=True)))
    .group_by(event_t.c.attempt_id)
)
_LOG = insert(event_t).values(seq=_bind(event_t.c.seq, "b_seq"), **_EVENT_VALUES)
START_EVENT = "start"
# Creating an attempt: the row and its first event, built once like the fire path's.
_INSERT_ATTEMPT = insert(attempt_t)
_INSERT_EVENT = insert(event_t)
# First key of the PostgreSQL advisory locks taken per (exclusive group, subject).
ADVISORY_LOCK_CLASS = 0x656E6467  # "endg"
_LOCK_SUBJECTS = text(
    "SELECT count(pg_advisory_xact_lock(:lock_class, hashtext(t.key))) "
    "FROM unnest(CAST(:keys AS text[])) WITH ORDINALITY AS t(key, n)"
)


@dataclass(frozen=True)
class NewAttempt:
    """An attempt to create (`Engine.start_many_sync`): its subject, data and the detail
    its creation event records."""

    subject: str = ""
    data: Mapping[str, Any] | None = None
    detail: Mapping[str, Any] | None = None
    attempt_id: uuid.UUID | None = None


@dataclass(frozen=True)
class _Start:
    """One `Engine.start` waiting to be written with the others that came with it."""

    flow: str
    actor: str
    new: NewAttempt


# The most starts one transaction writes (`Engine.start`).
START_BATCH = 64


def _attempt_row(record: AttemptRecord) -> dict[str, Any]:
    return {**record.__dict__, "data": dict(record.data)}


def _start_event_row(
    record: AttemptRecord, actor: str, now: datetime, detail: Mapping[str, Any] | None
) -> dict[str, Any]:
    return {
        "attempt_id": record.id,
        "seq": 1,
        "event": START_EVENT,
        "from_state": None,
        "to_state": record.state,
        "actor": actor,
        "at": now,
        "accepted": True,
        "detail": dict(detail or {}),
    }


@dataclass(frozen=True)
class Fired:
    """The outcome of an accepted event."""

    attempt: AttemptRecord
    event: EventRecord
    previous_state: str


@dataclass(frozen=True)
class Fire:
    """One event of a batch fired in one transaction (`Engine.fire_many_sync`), with what
    `Engine.fire_sync` takes."""

    attempt_id: uuid.UUID
    event: str
    params: Mapping[str, Any] | None = None
    detail: Mapping[str, Any] | None = None
    data: Mapping[str, Any] | None = None
    expected_version: int | None = None
    actor: str = SYSTEM


@dataclass
class _Batch:
    """The attempts one transaction fires on, and what effects read once for all of them.

    When the batch is fired without savepoints, `next_seq` holds each attempt's next
    event number (it is empty otherwise), and the transitions and events of those
    attempts are held back (`moves`, `events`) to be written together, one statement
    each, by `flush`: at the end of the batch, and before anything else reads or
    writes through the transaction (an effect's `Transaction.conn`), so no query
    ever sees the database without them.
    A moved row or a taken event number is found by the flush; it raises, and the
    batch is fired again with a savepoint per fire, writing as it goes.
    """

    ids: frozenset[uuid.UUID]
    read: dict[str, Any] = field(default_factory=dict)
    next_seq: dict[uuid.UUID, int] = field(default_factory=dict)
    moves: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def holds(self, attempt_id: uuid.UUID) -> bool:
        """Whether this attempt's writes are held back for the flush."""
        return attempt_id in self.next_seq

    def hold_event(self, params: dict[str, Any]) -> int:
        """Hold back an event of an attempt this batch holds; the number it will have."""
        attempt_id = params["b_attempt_id"]
        seq = self.next_seq[attempt_id]
        self.next_seq[attempt_id] = seq + 1
        self.events.append({**params, "b_seq": seq})
        return seq

    def flush(self, conn: Connection) -> None:
        """Write what was held back: the transitions, then the events."""
        if self.moves:
            moves, self.moves = self.moves, []
            if conn.execute(_TRANSITION, moves).rowcount != len(moves):
                raise ConflictError(moves[0]["b_id"], "a transition of the batch")
        if self.events:
            events, self.events = self.events, []
            conn.execute(_LOG, events)


@dataclass
class Transaction:
    """What a transition's effects (and an `in_tx` hook) see: the open connection, the
    clock's now, the attempt as it was before the transition, and the outbox.

    Effects may write other tables through `conn`, merge facts into the
    attempt's data (`data`), queue work to run after the commit (`enqueue`),
    fire events at other attempts (`fire`) and end the subject's other live
    journeys (`end_journeys`); all of it commits, or rolls back, with the
    transition.
    """

    connection: Connection
    now: datetime
    attempt: AttemptRecord
    previous_state: str
    engine: Engine
    # What the transaction changed, added to the running totals before it commits.
    tally: Tally = field(default_factory=Tally)
    data: dict[str, Any] = field(default_factory=dict)
    # The attempts of the batch this fire is one of (`Engine.fire_many_sync`), if any.
    batch: _Batch | None = None

    @property
    def conn(self) -> Connection:
        """The open connection, with the batch's held-back writes made first."""
        if self.batch is not None:
            self.batch.flush(self.connection)
        return self.connection

    def read_for_all(
        self, name: str, read: Callable[[Connection, Sequence[uuid.UUID]], Mapping[uuid.UUID, T]]
    ) -> Mapping[uuid.UUID, T]:
        """What `read` finds for the attempts this transaction fires on, by attempt: read
        once per transaction under `name` when the fire is one of a batch (an effect that
        runs for each fire then asks the database once), else for this attempt alone.

        It is read when first asked for, so it suits what the batch's own effects do not
        change for one another (each attempt's own rows)."""
        batch = self.batch
        if batch is None or self.attempt.id not in batch.ids:
            return read(self.conn, [self.attempt.id])
        if name not in batch.read:
            batch.read[name] = read(self.conn, sorted(batch.ids))
        found: Mapping[uuid.UUID, T] = batch.read[name]
        return found

    def fire(
        self,
        attempt_id: uuid.UUID,
        event: str,
        *,
        actor: str = SYSTEM,
        params: Mapping[str, Any] | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> Fired | None:
        """Fire an event at another attempt inside this transaction; None if refused."""
        outcome = self.engine._fire_in(
            self.conn,
            attempt_id,
            event,
            actor=actor,
            params=params or {},
            detail=detail or {},
            data=None,
            in_tx=None,
            expected_version=None,
            tally=self.tally,
        )
        return outcome.fired

    def enqueue(
        self, kind: str, payload: Mapping[str, Any], available_at: datetime | None = None
    ) -> None:
        """Queue work to run after this transaction commits."""
        enqueue(
            self.conn,
            kind,
            payload,
            now=self.now,
            attempt_id=self.attempt.id,
            available_at=available_at,
        )

    def end_journeys(
        self, subject: str | None = None, *, detail: Mapping[str, Any], group: str | None = None
    ) -> list[uuid.UUID]:
        """End every live attempt of `subject` (this attempt's by default) in an exclusive
        group (this flow's by default), this attempt excepted; the ids ended."""
        spec = self.engine._spec_for(self.attempt)
        name = group or (spec.exclusive.group if spec.exclusive else None)
        if name is None:
            return []
        return self.engine._end_live(
            self.conn, name, subject or self.attempt.subject, self.attempt.id, detail, self.tally
        )


InTx = Callable[[Transaction], None]


def enqueue(
    conn: Connection,
    kind: str,
    payload: Mapping[str, Any],
    *,
    now: datetime,
    attempt_id: uuid.UUID | None = None,
    available_at: datetime | None = None,
) -> None:
    """Queue work for an `OutboxHandler` of `kind`, run once the transaction on `conn`
    commits (and never if it rolls back). A transition's effects use `tx.enqueue`; code
    outside a transition that writes in its own transaction calls this."""
    conn.execute(
        insert(outbox_t).values(
            attempt_id=attempt_id,
            kind=kind,
            payload=dict(payload),
            created_at=now,
            available_at=available_at or now,
            tries=0,
        )
    )


@dataclass(frozen=True)
class _Outcome:
    fired: Fired | None = None
    refused: EventRefused | None = None


def deadline_detail(deadline_at: datetime | None) -> dict[str, Any]:
    """What an applied deadline records, whether a read or the sweep applied it."""
    if deadline_at is None:
        return {}
    return {"deadline_at": as_utc(deadline_at).isoformat(timespec="microseconds")}


class Engine:
    """Runs registered flows against one database through one clock."""

    def __init__(
        self, db: Database, flows: FlowRegistry | Iterable[FlowSpec], clock: Clock | None = None
    ) -> None:
        self.db = db
        self.flows = flows if isinstance(flows, FlowRegistry) else FlowRegistry(flows)
        self.clock = clock or SystemClock()
        self.queries = Queries(db, self.flows)
        self.machines = Machines()

    # -- async surface -------------------------------------------------

    async def start(
        self,
        flow: str,
        *,
        subject: str = "",
        data: Mapping[str, Any] | None = None,
        actor: str = SYSTEM,
        detail: Mapping[str, Any] | None = None,
        attempt_id: uuid.UUID | None = None,
    ) -> AttemptRecord:
        """`start_sync` from the event loop. Starts that arrive together are written in
        one transaction (`start_each_sync`): under load, one commit for many requests."""
        start = _Start(flow, actor, NewAttempt(subject, data, detail, attempt_id))
        record: AttemptRecord = await self.db.run_together(
            self.start_each_sync, start, limit=START_BATCH
        )
        return record

    async def fire(self, attempt_id: uuid.UUID | str, event: str, **kw: Any) -> Fired:
        return await self.db.run(self.fire_sync, attempt_id, event, **kw)

    async def get(self, attempt_id: uuid.UUID | str) -> AttemptRecord:
        record = await self.db.run(self.read_sync, attempt_id, write=False)
        if self._overdue(record, self.clock.now()):
            return await self.db.run(self.get_sync, record.id)
        return record

    async def history(self, attempt_id: uuid.UUID | str) -> list[EventRecord]:
        return await self.db.run(self.history_sync, attempt_id, write=False)

    async def sweep(self, batch_size: int = 5000) -> int:
        return await self.db.run(self.sweep_sync, batch_size)

    # -- starting ------------------------------------------------------

    def start_sync(
        self,
        flow: str,
        *,
        subject: str = "",
        data: Mapping[str, Any] | None = None,
        actor: str = SYSTEM,
        detail: Mapping[str, Any] | None = None,
        attempt_id: uuid.UUID | None = None,
    ) -> AttemptRecord:
        """Create an attempt in its flow's initial state (newest version), creation logged."""
        [outcome] = self.start_each_sync(
            [_Start(flow, actor, NewAttempt(subject, data, detail, attempt_id))]
        )
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def start_each_sync(self, starts: Sequence[_Start]) -> list[AttemptRecord | Exception]:
        """Create each attempt as `start_sync` does, all in one transaction; each start's
        own outcome: its record, or the exception that refused it alone (an unknown
        flow; if the transaction fails, each start is tried again in its own)."""
        now = self.clock.now()
        outcomes: list[AttemptRecord | Exception] = []
        for start in starts:
            try:
                outcomes.append(self._new_record(self.flows.get(start.flow), now, start.new))
            except Exception as exc:
                outcomes.append(exc)
        ready = [
            (i, start, record)
            for i, (start, record) in enumerate(zip(starts, outcomes, strict=True))
            if isinstance(record, AttemptRecord)
        ]
        if not ready:
            return outcomes
        try:
            self._write_starts([(start, record) for _, start, record in ready], now)
        except Exception as exc:
            if len(ready) == 1:
                outcomes[ready[0][0]] = exc
                return outcomes
            for i, start, record in ready:
                try:
                    self._write_starts([(start, record)], now)
                except Exception as alone:
                    outcomes[i] = alone
        return outcomes

    def _write_starts(self, starts: Sequence[tuple[_Start, AttemptRecord]], now: datetime) -> None:
        with self.db.transaction() as conn:
            conn.execute(_INSERT_ATTEMPT, [_attempt_row(record) for _, record in starts])
            conn.execute(
                _INSERT_EVENT,
                [
                    _start_event_row(record, start.actor, now, start.new.detail)
                    for start, record in starts
                ],
            )
            tally = Tally()
            for _, record in starts:
                tally.moved(record.flow, START_EVENT, None, record.state)
            add_tally(conn, tally)

    def start_many_sync(
        self,
        flow: str,
        attempts: Sequence[NewAttempt],
        *,
        actor: str = SYSTEM,
        end_journeys: Mapping[str, Any] | None = None,
        in_tx: Callable[[Connection, datetime], None] | None = None,
    ) -> list[AttemptRecord]:
        """Create many attempts in their flow's initial state in one transaction, each
        creation logged exactly as `start_sync` logs it.

        `in_tx(conn, now)` runs first, in the same transaction (the caller's own writes
        commit or roll back with the attempts; it runs even when there are none). With
        `end_journeys` (the detail their end events record), every live attempt of these
        subjects in the flow's exclusive group is ended first, as
        `Transaction.end_journeys` ends them.
        """
        spec = self.flows.get(flow)
        now = self.clock.now()
        records = [self._new_record(spec, now, new) for new in attempts]
        with self.db.transaction() as conn:
            tally = Tally()
            if in_tx is not None:
                in_tx(conn, now)
            if end_journeys is not None and spec.exclusive is not None:
                self._end_live_many(
                    conn,
                    spec.exclusive.group,
                    sorted({r.subject for r in records}),
                    end_journeys,
                    tally,
                )
            if records:
                conn.execute(_INSERT_ATTEMPT, [_attempt_row(r) for r in records])
                conn.execute(
                    _INSERT_EVENT,
                    [
                        _start_event_row(r, actor, now, new.detail)
                        for r, new in zip(records, attempts, strict=True)
                    ],
                )
                tally.moved(spec.name, START_EVENT, None, spec.initial_state, len(records))
            add_tally(conn, tally)
        return records

    def _new_record(self, spec: FlowSpec, now: datetime, new: NewAttempt) -> AttemptRecord:
        record = AttemptRecord(
            id=new.attempt_id or uuid.uuid4(),
            flow=spec.name,
            flow_version=spec.version,
            state=spec.initial_state,
            version=1,
            created_at=now,
            updated_at=now,
            deadline_at=None,
            lease_until=None,
            subject=new.subject,
            data=dict(new.data or {}),
        )
        deadline = spec.deadlines.get(record.state)
        if deadline is not None:
            record = replace(record, deadline_at=now + deadline.duration(record))
        return record

    # -- firing --------------------------------------------------------

    def fire_sync(
        self,
        attempt_id: uuid.UUID | str,
        event: str,
        *,
        actor: str = SYSTEM,
        params: Mapping[str, Any] | None = None,
        detail: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        in_tx: InTx | None = None,
        expected_version: int | None = None,
    ) -> Fired:
        """Fire `event` on an attempt; raise `EventRefused` (after recording it) if not allowed.

        `params` reach the flow's guards and effects by name; `data` is merged
        into the attempt's data; `in_tx` runs after the transition, in its
        transaction; `expected_version` makes the fire a conflict if the
        attempt changed since the caller read it.
        """
        attempt_id = parse_attempt_id(attempt_id)
        try:
            with self.db.transaction() as conn:
                tally = Tally()
                outcome = self._fire_in(
                    conn,
                    attempt_id,
                    event,
                    actor=actor,
                    params=params or {},
                    detail=detail or {},
                    data=data,
                    in_tx=in_tx,
                    expected_version=expected_version,
                    tally=tally,
                )
                add_tally(conn, tally)
        except IntegrityError:
            raise ConflictError(attempt_id, event) from None
        if outcome.refused is not None:
            raise outcome.refused
        assert outcome.fired is not None
        return outcome.fired

    def fire_many_sync(self, fires: Sequence[Fire]) -> list[Fired | EngineError]:
        """Fire several events in one transaction; the outcome of each, in order.

        A fire that is refused (and recorded, as `fire_sync` records it), that
        conflicts (the attempt moved, a uniqueness rule broke) or whose attempt
        is gone leaves the others to commit, and its outcome is the
        `EventRefused`, `ConflictError` or `NotFound` that `fire_sync` would
        have raised. The attempts are read in one query, and their transitions
        and events written with one statement each (`_Batch`); a batch of N
        costs one commit instead of N. Should one change under the batch
        mid-transition, the batch is fired again with a savepoint per fire.
        """
        try:
            return self._fire_many(fires, savepoints=False)
        except (ConflictError, IntegrityError):
            return self._fire_many(fires, savepoints=True)

    def _fire_many(self, fires: Sequence[Fire], *, savepoints: bool) -> list[Fired | EngineError]:
        outcomes: list[Fired | EngineError] = []
        with self.db.transaction() as conn:
            ids = [fire.attempt_id for fire in fires]
            rows = conn.execute(_LOAD_MANY, {"ids": ids})
            loaded = {row.id: AttemptRecord.from_row(row) for row in rows}
            tally = Tally()
            batch = _Batch(frozenset(ids))
            if not savepoints and loaded:
                last = dict(conn.execute(_LAST_SEQS, {"ids": list(loaded)}).all())
                batch.next_seq = {attempt_id: last.get(attempt_id, 0) + 1 for attempt_id in loaded}
            # Without savepoints, who else is live is settled once for the whole batch.
            became_live: list[tuple[str, AttemptRecord]] | None = None if savepoints else []
            for fire in fires:
                record = loaded.get(fire.attempt_id)
                if record is None:
                    outcomes.append(NotFound(fire.attempt_id))
                    continue
                if fire.expected_version is not None and fire.expected_version != record.version:
                    outcomes.append(ConflictError(fire.attempt_id, fire.event))
                    continue
                own = Tally()
                try:
                    with conn.begin_nested() if savepoints else contextlib.nullcontext():
                        outcome = self._fire_in(
                            conn,
                            fire.attempt_id,
                            fire.event,
                            actor=fire.actor,
                            params=fire.params or {},
                            detail=fire.detail or {},
                            data=fire.data,
                            in_tx=None,
                            expected_version=fire.expected_version,
                            tally=own,
                            # Read again on a savepoint: the batch is retried because a row moved.
                            loaded=None if savepoints else record,
                            became_live=became_live,
                            batch=batch,
                        )
                except (ConflictError, IntegrityError):
                    if not savepoints:
                        raise
                    outcomes.append(ConflictError(fire.attempt_id, fire.event))
                    continue
                tally.update(own)
                outcomes.append(outcome.fired or outcome.refused)  # type: ignore[arg-type]
            batch.flush(conn)
            if became_live:
                self._supersede(conn, became_live, tally)
            add_tally(conn, tally)
        return outcomes

    def _supersede(
        self, conn: Connection, became_live: Sequence[tuple[str, AttemptRecord]], tally: Tally
    ) -> None:
        """End the journeys that attempts which just became live supersede: every other
        live attempt of their subjects in their groups (the later of one subject's wins),
        found with one query per group."""
        newest: dict[str, dict[str, uuid.UUID]] = {}
        for group, record in became_live:
            newest.setdefault(group, {})[record.subject] = record.id
        for group, by_subject in newest.items():
            subjects = sorted(by_subject)
            self._lock_subjects(conn, group, subjects)
            kept = set(by_subject.values())
            for other in self.queries.live_in_many(conn, group, subjects):
                if other.id not in kept:
                    detail = {"superseded_by": str(by_subject[other.subject])}
                    self._end_each(conn, [other], detail, tally)

    def _fire_in(
        self,
        conn: Connection,
        attempt_id: uuid.UUID,
        event: str,
        *,
        actor: str,
        params: Mapping[str, Any],
        detail: Mapping[str, Any],
        data: Mapping[str, Any] | None,
        in_tx: InTx | None,
        expected_version: int | None,
        tally: Tally,
        loaded: AttemptRecord | None = None,
        became_live: list[tuple[str, AttemptRecord]] | None = None,
        batch: _Batch | None = None,
    ) -> _Outcome:
        """Fire on an open connection; `loaded` is the attempt when this transaction
        has just read it; `became_live` as `_commit_transition` takes it; `batch` the
        attempts this transaction fires on, when it fires on several."""
        now = self.clock.now()
        record = loaded or self._load(conn, attempt_id)
        spec = self._spec_for(record)
        spec.check_event(event)
        if expected_version is not None and expected_version != record.version:
            raise ConflictError(attempt_id, event)
        expired_at: datetime | None = None
        if self._overdue(record, now):
            deadline = spec.deadlines[record.state]
            if event != deadline.event:
                expired_at = record.deadline_at
                record = self._apply_deadline(conn, spec, record, now, tally, batch).attempt
        tx = Transaction(conn, now, record, record.state, self, tally, batch=batch)
        target = self._decide(spec, record, event, now, {**params, "tx": tx})
        if target is None:
            reason = "guard_failed" if event in spec.events_from(record.state) else "wrong_state"
            if expired_at is not None:
                reason = "expired"
            self._log(
                conn,
                record.id,
                event,
                record.state,
                None,
                actor,
                now,
                False,
                # The engine's reason wins over any the caller's detail carries.
                {**detail, "reason": reason},
                batch,
            )
            tally.refused(record.flow, event)
            return _Outcome(
                refused=EventRefused(record.id, event, record.state, reason, expired_at)
            )
        new_data = {**record.data, **tx.data, **(data or {})}
        fired = self._commit_transition(
            conn,
            spec,
            record,
            event,
            target,
            actor,
            now,
            dict(detail),
            new_data,
            tally,
            became_live,
            batch,
        )
        if in_tx is not None:
            in_tx(Transaction(conn, now, fired.attempt, record.state, self, tally))
        return _Outcome(fired=fired)

    def _decide(
        self,
        spec: FlowSpec,
        record: AttemptRecord,
        event: str,
        now: datetime,
        params: Mapping[str, Any],
    ) -> str | None:
        """Let a machine on a copy of the row take the event (its effects run now, in the
        transaction); the state it reached, or None if it refused."""
        return self.machines.decide(spec.machine, record, now, event, params)

    def _commit_transition(
        self,
        conn: Connection,
        spec: FlowSpec,
        record: AttemptRecord,
        event: str,
        target: str,
        actor: str,
        now: datetime,
        detail: dict[str, Any],
        data: dict[str, Any],
        tally: Tally,
        became_live: list[tuple[str, AttemptRecord]] | None = None,
        batch: _Batch | None = None,
    ) -> Fired:
        """Write the transition (held back for the flush when `batch` holds the attempt);
        with `became_live`, an attempt that becomes live is added there (its group's older
        journeys are ended by the caller) instead of ending them."""
        after = replace(
            record,
            state=target,
            version=record.version + 1,
            updated_at=now,
            lease_until=None,
            data=data,
        )
        deadline = spec.deadlines.get(target)
        if deadline is None:
            deadline_at = None
        elif not deadline.restart and record.deadline_at is not None:
            deadline_at = record.deadline_at
        else:
            deadline_at = now + deadline.duration(after)
        after = replace(after, deadline_at=deadline_at)
        move = {
            "b_id": record.id,
            "b_version": record.version,
            "b_state": target,
            "b_new_version": after.version,
            "b_now": now,
            "b_deadline_at": deadline_at,
            "b_data": data,
        }
        if batch is not None and batch.holds(record.id):
            batch.moves.append(move)
        elif conn.execute(_TRANSITION, move).rowcount != 1:
            raise ConflictError(record.id, event)
        logged = self._log(
            conn, record.id, event, record.state, target, actor, now, True, detail, batch
        )
        tally.moved(record.flow, event, record.state, target)
        live = spec.live_states
        if spec.exclusive is not None and target in live and record.state not in live:
            if became_live is not None:
                became_live.append((spec.exclusive.group, after))
                return Fired(after, logged, record.state)
            # One live journey per subject in the group: the older ones end now.
            self._end_live(
                conn,
                spec.exclusive.group,
                record.subject,
                record.id,
                {"superseded_by": str(record.id)},
                tally,
            )
        return Fired(after, logged, record.state)

    def _end_live(
        self,
        conn: Connection,
        group: str,
        subject: str,
        keep: uuid.UUID,
        detail: Mapping[str, Any],
        tally: Tally,
    ) -> list[uuid.UUID]:
        """Send each live attempt of `subject` in `group` (but `keep`) its flow's end event."""
        self._lock_subjects(conn, group, [subject])
        return self._end_each(
            conn, self.queries.live_in(conn, group, subject, exclude=keep), detail, tally
        )

    def _end_live_many(
        self,
        conn: Connection,
        group: str,
        subjects: Sequence[str],
        detail: Mapping[str, Any],
        tally: Tally,
    ) -> list[uuid.UUID]:
        """`_end_live` for many subjects at once (none kept): one query finds them all."""
        self._lock_subjects(conn, group, subjects)
        return self._end_each(conn, self.queries.live_in_many(conn, group, subjects), detail, tally)

    def _lock_subjects(self, conn: Connection, group: str, subjects: Sequence[str]) -> None:
        """Order every change to who is live in `group` for these subjects (PostgreSQL).

        Two transactions making two attempts of one subject live at once must
        still leave exactly one: the second waits here, then (READ COMMITTED)
        sees the first as live and ends it. An advisory lock, not a row lock:
        whoever ends journeys locks attempts in no fixed order. A transaction that
        locks several subjects locks them in sorted order (so do batches of fires),
        so two such transactions never wait on each other in a circle.
        """
        if self.db.is_sqlite:
            return  # one writer at a time: nothing to order
        # One statement for them all: the locks are taken row by row, in the array's order.
        keys = [f"{group}\x1f{subject}" for subject in sorted(set(subjects))]
        conn.execute(_LOCK_SUBJECTS, {"lock_class": ADVISORY_LOCK_CLASS, "keys": keys})

    def _end_each(
        self,
        conn: Connection,
        live: Iterable[AttemptRecord],
        detail: Mapping[str, Any],
        tally: Tally,
    ) -> list[uuid.UUID]:
        ended = []
        for other in live:
            spec = self.flows.get(other.flow, other.flow_version)
            assert spec.exclusive is not None
            outcome = self._fire_in(
                conn,
                other.id,
                spec.exclusive.end_event,
                actor=SYSTEM,
                params={},
                detail=dict(detail),
                data=None,
                in_tx=None,
                expected_version=None,
                tally=tally,
            )
            if outcome.fired is not None:
                ended.append(other.id)
        return ended

    def _apply_deadline(
        self,
        conn: Connection,
        spec: FlowSpec,
        record: AttemptRecord,
        now: datetime,
        tally: Tally,
        batch: _Batch | None = None,
    ) -> Fired:
        """Fire the state's deadline event, effects and all (the transition is unguarded)."""
        deadline = spec.deadlines[record.state]
        tx = Transaction(conn, now, record, record.state, self, tally, batch=batch)
        target = self._decide(spec, record, deadline.event, now, {"tx": tx})
        assert target is not None  # FlowSpec checks this at definition time
        return self._commit_transition(
            conn,
            spec,
            record,
            deadline.event,
            target,
            SYSTEM,
            now,
            deadline_detail(record.deadline_at),
            {**record.data, **tx.data},
            tally,
            batch=batch,
        )

    def _log(
        self,
        conn: Connection,
        attempt_id: uuid.UUID,
        event: str,
        from_state: str | None,
        to_state: str | None,
        actor: str,
        at: datetime,
        accepted: bool,
        detail: Mapping[str, Any],
        batch: _Batch | None = None,
    ) -> EventRecord:
        """Record an event (held back for the flush when `batch` holds the attempt)."""
        params = {
            "b_attempt_id": attempt_id,
            "b_event": event,
            "b_from_state": from_state,
            "b_to_state": to_state,
            "b_actor": actor,
            "b_at": at,
            "b_accepted": accepted,
            "b_detail": dict(detail),
        }
        # A concurrent writer that took the same seq makes this insert fail;
        # fire_sync turns that into ConflictError after rolling back.
        if batch is not None and batch.holds(attempt_id):
            seq = batch.hold_event(params)
        elif conn.dialect.insert_returning:
            seq = conn.execute(_LOG_RETURNING, params).scalar_one()
        else:
            seq = conn.execute(_SELECT_NEXT_SEQ, {"b_attempt_id": attempt_id}).scalar_one()
            conn.execute(_LOG, {**params, "b_seq": seq})
        return EventRecord(
            seq, event, from_state, to_state, actor, at, accepted, params["b_detail"]
        )

    # -- reading -------------------------------------------------------

    def _load(self, conn: Connection, attempt_id: uuid.UUID) -> AttemptRecord:
        row = conn.execute(_LOAD, {"b_id": attempt_id}).first()
        if row is None:
            raise NotFound(attempt_id)
        return AttemptRecord.from_row(row)

    def _spec_for(self, record: AttemptRecord) -> FlowSpec:
        """The flow version the attempt started on (an attempt never changes version)."""
        spec = self.flows.get(record.flow, record.flow_version)
        if record.state not in spec.states:
            raise StoredStateInvalid(record.id, record.flow, record.state)
        return spec

    def spec_of(self, record: AttemptRecord) -> FlowSpec:
        """The flow version an attempt runs on."""
        return self._spec_for(record)

    def _overdue(self, record: AttemptRecord, now: datetime) -> bool:
        return record.deadline_at is not None and record.deadline_at < now

    def read_sync(self, attempt_id: uuid.UUID | str) -> AttemptRecord:
        """The stored row as it is, deadline not applied (see `get_sync`)."""
        attempt_id = parse_attempt_id(attempt_id)
        with self.db.transaction(write=False) as conn:
            record = self._load(conn, attempt_id)
        self._spec_for(record)
        return record

    def get_sync(self, attempt_id: uuid.UUID | str) -> AttemptRecord:
        """The attempt, moved by its deadline first if that has passed (persisted)."""
        attempt_id = parse_attempt_id(attempt_id)
        with self.db.transaction() as conn:
            record = self._load(conn, attempt_id)
            spec = self._spec_for(record)
            if self._overdue(record, self.clock.now()):
                tally = Tally()
                record = self._apply_deadline(conn, spec, record, self.clock.now(), tally).attempt
                add_tally(conn, tally)
        return record

    def history_sync(self, attempt_id: uuid.UUID | str) -> list[EventRecord]:
        """Every event fired at the attempt, in order."""
        attempt_id = parse_attempt_id(attempt_id)
        with self.db.transaction(write=False) as conn:
            self._load(conn, attempt_id)
            rows = conn.execute(
                select(event_t).where(event_t.c.attempt_id == attempt_id).order_by(event_t.c.seq)
            )
            return [EventRecord.from_row(r) for r in rows]

    def rewrite_subject_sync(
        self,
        subject: str,
        new_subject: str,
        *,
        data_keys: Mapping[str, Iterable[str]],
        detail_keys: Mapping[str, Iterable[str]],
    ) -> int:
        """Give every attempt of `subject` the subject `new_subject`, and blank (set to None)
        the given keys of their data and of their events' details, per flow; how many
        attempts were rewritten.

        States, times and the event log's shape stay, so counts and funnels are as they
        were; what identified the subject is gone. Each rewritten attempt's version moves
        on, so a transition that read it before loses its race.
        """
        with self.db.transaction() as conn:
            rows = conn.execute(select(attempt_t).where(attempt_t.c.subject == subject)).all()
            for row in rows:
                record = AttemptRecord.from_row(row)
                blank_data = set(data_keys.get(record.flow, ()))
                data = {k: (None if k in blank_data else v) for k, v in record.data.items()}
                conn.execute(
                    update(attempt_t)
                    .where(attempt_t.c.id == record.id)
                    .values(subject=new_subject, data=data, version=attempt_t.c.version + 1)
                )
                blank_detail = set(detail_keys.get(record.flow, ()))
                if not blank_detail:
                    continue
                events = conn.execute(
                    select(event_t.c.id, event_t.c.detail).where(event_t.c.attempt_id == record.id)
                ).all()
                for event_id, detail in events:
                    if blank_detail & set(detail or {}):
                        blanked = {k: (None if k in blank_detail else v) for k, v in detail.items()}
                        conn.execute(
                            update(event_t).where(event_t.c.id == event_id).values(detail=blanked)
                        )
        return len(rows)

    def totals_sync(self) -> dict[tuple[str, str, str], int]:
        """The flows' running totals, (flow, kind, name) -> value (see `engine.tally`).

        A handful of rows whatever the history: attempts per state (`attempts`),
        events accepted and refused per event (`accepted`, `refused`).
        """
        with self.db.transaction(write=False) as conn:
            return {(flow, kind, name): value for flow, kind, name, value in read_tally(conn)}

    def allowed_events(self, record: AttemptRecord) -> list[str]:
        """Events with a transition out of the attempt's current state."""
        return self._spec_for(record).events_from(record.state)

    # -- deadlines in bulk ---------------------------------------------

    def sweep_sync(self, batch_size: int = 5000) -> int:
        """Apply every overdue deadline, one batch per transaction.

        A deadline transition that runs effects, or enters a state whose own
        deadline depends on the attempt or that is live in an exclusive group,
        is applied attempt by attempt, exactly as a read would; the others are
        applied set-based, wholly in the database. Both record the same detail.
        """
        _require_positive("batch_size", batch_size)
        total = 0
        # One read on the live index says which deadline states have anything overdue:
        # the others open no write transaction.
        overdue = self._overdue_states()
        for spec in self.flows.all_versions():
            for state, deadline in spec.deadlines.items():
                target = spec.target_of(state, deadline.event)
                assert target is not None
                if (spec.name, spec.version, state) not in overdue:
                    continue
                next_deadline = spec.deadlines.get(target)
                one_by_one = (
                    bool(spec.effects_of(state, deadline.event))
                    or (next_deadline is not None and next_deadline.fixed is None)
                    or target in spec.live_states
                )
                while True:
                    if one_by_one:
                        moved = self._sweep_each(spec, state, batch_size)
                    else:
                        moved = self._sweep_batch(spec, state, target, deadline.event, batch_size)
                    total += moved
                    if moved < batch_size:
                        break
        return total

    def _overdue_clause(self, spec: FlowSpec, state: str, now: datetime) -> Any:
        return and_(
            attempt_t.c.flow == spec.name,
            attempt_t.c.flow_version == spec.version,
            attempt_t.c.state == state,
            attempt_t.c.deadline_at < now,
        )

    def _overdue_states(self) -> set[tuple[str, int, str]]:
        """The (flow, version, state) of every deadline state holding an overdue attempt:
        one statement, a `LIMIT 1` probe of the live index per deadline state."""
        now = self.clock.now()
        probes = [
            select(
                literal(spec.name).label("flow"),
                literal(spec.version).label("flow_version"),
                literal(state).label("state"),
            ).where(
                select(attempt_t.c.id)
                .where(self._overdue_clause(spec, state, now))
                .limit(1)
                .exists()
            )
            for spec in self.flows.all_versions()
            for state in spec.deadlines
        ]
        if not probes:
            return set()
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(union_all(*probes)).all()
        return {(flow, int(version), state) for flow, version, state in rows}

    def _sweep_each(self, spec: FlowSpec, state: str, batch_size: int) -> int:
        """Apply up to `batch_size` overdue deadlines one attempt at a time, in one transaction."""
        now = self.clock.now()
        pick = (
            select(attempt_t.c.id)
            .where(self._overdue_clause(spec, state, now))
            .order_by(attempt_t.c.deadline_at)
            .limit(batch_size)
        )
        if not self.db.is_sqlite:
            pick = pick.with_for_update(skip_locked=True)
        with self.db.transaction() as conn:
            moved = 0
            tally = Tally()
            for attempt_id in list(conn.execute(pick).scalars()):
                record = self._load(conn, attempt_id)
                if record.state == state and self._overdue(record, now):
                    self._apply_deadline(conn, spec, record, now, tally)
                    moved += 1
            add_tally(conn, tally)
        return moved

    def _sweep_batch(
        self, spec: FlowSpec, state: str, target: str, event: str, batch_size: int
    ) -> int:
        """Move up to `batch_size` overdue attempts, oldest deadline first; return how many.

        Everything happens in the database: no ids travel to Python and back.
        Measured on 100,000 overdue attempts (SQLite, CPU time), this cut the
        sweep from 3.3 s to 2.7 s against picking ids and sending them back in
        two 5,000-item IN lists per batch.
        """
        now = self.clock.now()
        new_deadline = spec.deadlines.get(target)
        overdue = self._overdue_clause(spec, state, now)
        moved_values = {
            "state": target,
            "version": attempt_t.c.version + 1,
            "updated_at": now,
            "deadline_at": now + new_deadline.fixed
            if new_deadline and new_deadline.fixed
            else None,
            "lease_until": None,
        }

        def expire_rows(attempt_id: Any, deadline_at: Any) -> Select[Any]:
            seq = (
                select(func.coalesce(func.max(event_t.c.seq), 0) + 1)
                .where(event_t.c.attempt_id == attempt_id)
                .scalar_subquery()
            )
            return select(
                attempt_id,
                seq,
                literal(event),
                literal(state),
                literal(target),
                literal(SYSTEM),
                literal(now, type_=event_t.c.at.type),
                literal(True),
                self._deadline_detail_sql(deadline_at),
            )

        with self.db.transaction() as conn:
            if self.db.is_sqlite:
                # One writer holds the lock for the whole transaction, so the same
                # deterministic pick names the same rows in both statements. The
                # live index stores (flow, state, deadline_at, rowid): no sort needed.
                rowid = literal_column("attempt.rowid")
                pick = (
                    select(rowid)
                    .where(overdue)
                    .order_by(attempt_t.c.deadline_at, rowid)
                    .limit(batch_size)
                )
                logged = conn.execute(
                    insert(event_t).from_select(
                        _EVENT_COLUMNS,
                        expire_rows(attempt_t.c.id, attempt_t.c.deadline_at).where(rowid.in_(pick)),
                    )
                ).rowcount
                if logged:
                    conn.execute(update(attempt_t).where(rowid.in_(pick)).values(moved_values))
                    self._tally_swept(conn, spec.name, event, state, target, logged)
                return logged
            # PostgreSQL: one statement. Rows another transaction holds are skipped,
            # not waited for; the UPDATE's RETURNING feeds the event rows (with the
            # deadline each attempt had, read before the update).
            picked = (
                select(attempt_t.c.id, attempt_t.c.deadline_at)
                .where(overdue)
                .order_by(attempt_t.c.deadline_at)
                .limit(batch_size)
                .with_for_update(skip_locked=True)
                .cte("picked")
            )
            moved = (
                update(attempt_t)
                .where(attempt_t.c.id == picked.c.id)
                .values(moved_values)
                .returning(attempt_t.c.id, picked.c.deadline_at)
                .cte("moved")
            )
            logged_rows = (
                insert(event_t)
                .from_select(_EVENT_COLUMNS, expire_rows(moved.c.id, moved.c.deadline_at))
                .returning(event_t.c.id)
                .cte("logged")
            )
            # An INSERT carrying data-modifying CTEs reports no rowcount: count instead.
            count = select(func.count()).select_from(logged_rows).add_cte(picked).add_cte(moved)
            swept = int(conn.execute(count).scalar_one())
            self._tally_swept(conn, spec.name, event, state, target, swept)
            return swept

    def _tally_swept(
        self, conn: Connection, flow: str, event: str, state: str, target: str, n: int
    ) -> None:
        tally = Tally()
        tally.moved(flow, event, state, target, n)
        add_tally(conn, tally)

    def _deadline_detail_sql(self, deadline_at: Any) -> Any:
        """`deadline_detail(deadline_at)` computed in SQL, byte for byte the same JSON value."""
        if self.db.is_sqlite:
            # SQLite keeps UTC datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff'.
            iso = func.replace(deadline_at, " ", "T").concat("+00:00")
            return func.json_object("deadline_at", iso).label("detail")
        iso = func.to_char(func.timezone("UTC", deadline_at), 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
        return func.json_build_object("deadline_at", iso).label("detail")

    # -- claiming work -------------------------------------------------

    def claim_sync(
        self, flow: str, state: str, *, lease: timedelta, limit: int = 10
    ) -> list[AttemptRecord]:
        """Lease up to `limit` attempts waiting in `state`, oldest first.

        A worker that dies while holding a lease leaves the attempt claimable
        again when the lease runs out; PostgreSQL workers skip rows another
        worker is claiming at the same moment.
        """
        _require_positive("limit", limit)
        _require_positive("lease", lease)
        spec = self.flows.get(flow)
        now = self.clock.now()
        with self.db.transaction() as conn:
            pick = (
                select(attempt_t)
                .where(
                    attempt_t.c.flow == spec.name,
                    attempt_t.c.state == state,
                    or_(attempt_t.c.lease_until.is_(None), attempt_t.c.lease_until < now),
                )
                .order_by(attempt_t.c.created_at)
                .limit(limit)
            )
            if not self.db.is_sqlite:
                pick = pick.with_for_update(skip_locked=True)
            records = [AttemptRecord.from_row(r) for r in conn.execute(pick)]
            if not records:
                return []
            until = now + lease
            conn.execute(
                update(attempt_t)
                .where(attempt_t.c.id.in_([r.id for r in records]))
                .values(lease_until=until, version=attempt_t.c.version + 1)
            )
        return [
            AttemptRecord(**{**r.__dict__, "lease_until": until, "version": r.version + 1})
            for r in records
        ]

    def note_sync(
        self,
        attempt_id: uuid.UUID,
        *,
        data: Mapping[str, Any],
        lease_until: datetime | None,
        expected_version: int,
    ) -> AttemptRecord:
        """Merge facts into an attempt's data without a transition (optimistically locked)."""
        with self.db.transaction() as conn:
            record = self._load(conn, attempt_id)
            if record.version != expected_version:
                raise ConflictError(attempt_id, "note")
            merged = {**record.data, **data}
            result = conn.execute(
                update(attempt_t)
                .where(attempt_t.c.id == attempt_id, attempt_t.c.version == expected_version)
                .values(data=merged, lease_until=lease_until, version=expected_version + 1)
            )
            if result.rowcount != 1:
                raise ConflictError(attempt_id, "note")
        return AttemptRecord(
            **{
                **record.__dict__,
                "data": merged,
                "lease_until": lease_until,
                "version": expected_version + 1,
            }
        )

    # -- outbox --------------------------------------------------------

    def outbox_claim_sync(
        self, kinds: Iterable[str], *, lease: timedelta, limit: int = 10
    ) -> list[dict[str, Any]]:
        """Lease pending outbox items of the given kinds (retried after `lease` if not done)."""
        _require_positive("limit", limit)
        _require_positive("lease", lease)
        now = self.clock.now()
        with self.db.transaction() as conn:
            pick = (
                select(outbox_t)
                .where(
                    outbox_t.c.kind.in_(list(kinds)),
                    outbox_t.c.done_at.is_(None),
                    outbox_t.c.available_at <= now,
                )
                .order_by(outbox_t.c.available_at)
                .limit(limit)
            )
            if not self.db.is_sqlite:
                pick = pick.with_for_update(skip_locked=True)
            items = [dict(r._mapping) for r in conn.execute(pick)]
            if items:
                conn.execute(
                    update(outbox_t)
                    .where(outbox_t.c.id.in_([i["id"] for i in items]))
                    .values(available_at=now + lease, tries=outbox_t.c.tries + 1)
                )
        return items

    def outbox_finish_sync(
        self, item_id: int, *, error: str | None = None, retry_at: datetime | None = None
    ) -> None:
        """Mark an outbox item done, or record its error and when to retry."""
        values: dict[str, Any]
        if error is None:
            values = {"done_at": self.clock.now(), "last_error": None}
        elif retry_at is None:
            values = {"done_at": self.clock.now(), "last_error": error[:500]}
        else:
            values = {"available_at": retry_at, "last_error": error[:500]}
        with self.db.transaction() as conn:
            conn.execute(update(outbox_t).where(outbox_t.c.id == item_id).values(**values))

    def outbox_pending_sync(self) -> int:
        """How many outbox items wait to run."""
        with self.db.transaction(write=False) as conn:
            return conn.execute(
                select(func.count()).select_from(outbox_t).where(outbox_t.c.done_at.is_(None))
            ).scalar_one()


def _require_positive(name: str, value: int | timedelta) -> None:
    """Refuse a count or duration that is not positive before anything runs.

    A zero batch would make the sweep loop forever, SQLite reads a negative
    LIMIT as "no limit", and a lease that is not positive hands work out twice.
    """
    if value <= (timedelta(0) if isinstance(value, timedelta) else 0):
        raise ValueError(f"{name} must be positive, got {value!r}")
