"""Work in batches: many fires in one transaction, jobs that take their attempts together,
the queries that answer for many subjects at once, and starts that arrive together
written in one transaction (issue 17).

Each batch form is checked against what the one-at-a-time form does on the
same data: the same states, the same event log, the same running totals.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from statemachine import State, StateMachine

from engine import ConflictError, Engine, EventRefused, Exclusive, FlowSpec, Job, NotFound
from engine.core import Fire
from engine.db import Lane
from engine.errors import UnknownFlow
from engine.models import Attempt
from engine.records import AttemptRecord
from engine.worker import Decision, Worker, fire_claimed_many, waves
from tests.engine.helpers import FLOW, offered
from tests.engine.ticket import OFFER
from tests.support.commits import Commits

LEASE = timedelta(seconds=30)


def _states(engine: Engine, attempts: list[AttemptRecord]) -> list[str]:
    return [engine.read_sync(a.id).state for a in attempts]


# -- Engine.fire_many_sync ----------------------------------------------------------------


def test_a_batch_fires_each_event_and_reports_each_outcome_in_order(engine: Engine) -> None:
    """Two offers go through, a hold on a queued booking is refused (and recorded), a
    stale version is a conflict that writes nothing, and an unknown id is not found; the
    others still commit."""
    first, second, refused, stale = (engine.start_sync(FLOW, subject=f"c{i}") for i in range(4))
    engine.fire_sync(stale.id, "withdraw")
    missing = uuid.uuid4()
    outcomes = engine.fire_many_sync(
        [
            Fire(first.id, "offer", params=OFFER, expected_version=first.version),
            Fire(refused.id, "hold", params={"code_ok": True}),
            Fire(missing, "offer", params=OFFER),
            Fire(stale.id, "offer", params=OFFER, expected_version=stale.version),
            Fire(second.id, "offer", params=OFFER, detail={"why": "batch"}),
        ]
    )
    kinds = [type(o).__name__ for o in outcomes]
    assert kinds == ["Fired", "EventRefused", "NotFound", "ConflictError", "Fired"]
    assert isinstance(outcomes[1], EventRefused) and outcomes[1].state == "queued"
    assert isinstance(outcomes[2], NotFound)
    assert isinstance(outcomes[3], ConflictError)
    assert _states(engine, [first, second, refused, stale]) == [
        "offered",
        "offered",
        "queued",
        "withdrawn",
    ]
    assert engine.history_sync(second.id)[-1].detail == {"why": "batch"}
    refusal = engine.history_sync(refused.id)[-1]
    assert (refusal.event, refusal.accepted) == ("hold", False)
    # The stale one's log ends with its withdrawal: the conflict wrote nothing.
    assert [e.event for e in engine.history_sync(stale.id)] == ["start", "withdraw"]


def test_a_batch_leaves_the_same_totals_as_one_fire_at_a_time(engine: Engine) -> None:
    """The running totals after a batch equal those after the same fires made one by one
    (on a second set of bookings with the same shape)."""
    batch = [engine.start_sync(FLOW, subject=f"b{i}") for i in range(5)]
    single = [engine.start_sync(FLOW, subject=f"s{i}") for i in range(5)]
    before = engine.totals_sync()
    engine.fire_many_sync([Fire(a.id, "offer", params=OFFER) for a in batch[:4]])
    engine.fire_many_sync([Fire(batch[4].id, "hold", params={"code_ok": True})])
    after_batch = engine.totals_sync()
    for attempt in single[:4]:
        engine.fire_sync(attempt.id, "offer", params=OFFER)
    with pytest.raises(EventRefused):
        engine.fire_sync(single[4].id, "hold", params={"code_ok": True})
    after_single = engine.totals_sync()
    batch_delta = {k: after_batch.get(k, 0) - before.get(k, 0) for k in after_single}
    single_delta = {k: after_single.get(k, 0) - after_batch.get(k, 0) for k in after_single}
    assert batch_delta == single_delta
    assert any(batch_delta.values())


def test_a_batch_ends_the_journeys_its_fires_supersede(engine: Engine) -> None:
    """The one-live rule holds across a batch: an offer made live in the batch replaces the
    customer's older live offer (with who replaced it in the detail), and of two bookings of
    one customer offered in one batch, the later is the one left live."""
    older = offered(engine, "same")
    newer = engine.start_sync(FLOW, subject="same")
    twin_a = engine.start_sync(FLOW, subject="twin")
    twin_b = engine.start_sync(FLOW, subject="twin")
    outcomes = engine.fire_many_sync(
        [Fire(a.id, "offer", params=OFFER) for a in (newer, twin_a, twin_b)]
    )
    assert all(type(o).__name__ == "Fired" for o in outcomes)
    assert _states(engine, [older, newer, twin_a, twin_b]) == [
        "replaced",
        "offered",
        "replaced",
        "offered",
    ]
    replaced = engine.history_sync(older.id)[-1]
    assert (replaced.event, replaced.detail) == ("replace", {"superseded_by": str(newer.id)})
    assert engine.history_sync(twin_a.id)[-1].detail == {"superseded_by": str(twin_b.id)}


def test_an_effect_that_fails_rolls_the_whole_batch_back(engine: Engine) -> None:
    """A fire whose effect raises (a negative charge) fails the batch as it fails `fire_sync`:
    nothing of the batch is written."""
    good = offered(engine, "good")
    engine.fire_sync(good.id, "hold", params={"code_ok": True})
    bad = offered(engine, "bad")
    engine.fire_sync(bad.id, "hold", params={"code_ok": True})
    pay = {"code_ok": True, "card_ok": True}
    with pytest.raises(ValueError, match="negative"):
        engine.fire_many_sync(
            [
                Fire(good.id, "pay", params={**pay, "amount": 5}),
                Fire(bad.id, "pay", params={**pay, "amount": -1}),
            ]
        )
    assert _states(engine, [good, bad]) == ["held", "held"]


# A flow whose effect conflicts when told to: a row that moved under the batch mid-transition.
class Racy(StateMachine):
    waiting = State(initial=True)
    done = State(final=True)

    finish = waiting.to(done, on="write")

    def write(self, tx: Any, lose: bool = False) -> None:
        tx.data["written"] = True
        if lose:
            raise ConflictError(tx.attempt.id, "finish")


def test_a_fire_that_conflicts_mid_transition_leaves_the_others_to_commit(engine: Engine) -> None:
    """The batch is fired again with a savepoint per fire: the one that lost its race is a
    conflict and wrote nothing, the others are done."""
    racy = Engine(engine.db, [FlowSpec(name="racy", machine=Racy)])
    first, loser, last = (racy.start_sync("racy", subject=f"r{i}") for i in range(3))
    outcomes = racy.fire_many_sync(
        [
            Fire(first.id, "finish"),
            Fire(loser.id, "finish", params={"lose": True}),
            Fire(last.id, "finish"),
        ]
    )
    assert [type(o).__name__ for o in outcomes] == ["Fired", "ConflictError", "Fired"]
    assert _states(racy, [first, loser, last]) == ["done", "waiting", "done"]
    assert racy.read_sync(first.id).data == {"written": True}
    assert racy.read_sync(loser.id).data == {}
    assert [e.event for e in racy.history_sync(loser.id)] == ["start"]


# A flow whose effect, told to, reaches past the batch: it reads another attempt's row,
# moves one the batch has yet to fire on, or logs an event on it, all through `tx.conn`.
class Meddling(StateMachine):
    waiting = State(initial=True)
    done = State(final=True)

    finish = waiting.to(done, on="meddle")
    poke = waiting.to(waiting, cond="never")

    def never(self) -> bool:
        return False

    def meddle(
        self,
        tx: Any,
        seen: dict[str, str] | None = None,
        look_at: uuid.UUID | None = None,
        move: uuid.UUID | None = None,
        log_on: uuid.UUID | None = None,
    ) -> None:
        attempt = Attempt.__table__
        if look_at is not None and seen is not None:
            row = tx.conn.execute(select(attempt.c.state).where(attempt.c.id == look_at))
            seen[str(look_at)] = row.scalar_one()
        if move is not None:
            tx.conn.execute(
                update(attempt).where(attempt.c.id == move).values(version=attempt.c.version + 1)
            )
        if log_on is not None:
            tx.fire(log_on, "poke")  # refused, and recorded at once


def _meddling(engine: Engine) -> tuple[Engine, list[AttemptRecord]]:
    meddling = Engine(engine.db, [FlowSpec(name="meddling", machine=Meddling)])
    return meddling, [meddling.start_sync("meddling", subject=f"m{i}") for i in range(3)]


def _finish_in_one_batch(
    meddling: Engine, attempts: list[AttemptRecord], params: dict[uuid.UUID, dict[str, Any]]
) -> None:
    """Fire `finish` at every attempt in one batch, each with its `params`; all go through."""
    outcomes = meddling.fire_many_sync(
        [Fire(a.id, "finish", params=params.get(a.id)) for a in attempts]
    )
    assert [type(o).__name__ for o in outcomes] == ["Fired"] * len(attempts)


def test_an_effect_sees_the_transitions_its_batch_made_before_it(engine: Engine) -> None:
    """The batch holds its own writes back to send them together, but an effect that reads
    through the transaction reads them: the first attempt is already done for the third."""
    meddling, (first, second, third) = _meddling(engine)
    seen: dict[str, str] = {}
    _finish_in_one_batch(
        meddling, [first, second, third], {third.id: {"seen": seen, "look_at": first.id}}
    )
    assert seen == {str(first.id): "done"}
    assert [[e.seq for e in meddling.history_sync(a.id)] for a in (first, second, third)] == [
        [1, 2]
    ] * 3


def test_a_row_moved_under_the_batch_is_found_and_the_batch_fired_again(
    engine: Engine,
) -> None:
    """An attempt moved after the batch read it (here by the first fire's effect, as another
    writer would) makes its held-back transition match no row: the batch is fired again
    with a savepoint per fire, and every attempt ends done with one `finish` logged."""
    meddling, (first, second, third) = _meddling(engine)
    _finish_in_one_batch(meddling, [first, second, third], {first.id: {"move": third.id}})
    assert _states(meddling, [first, second, third]) == ["done"] * 3
    for attempt in (first, second, third):
        assert [e.event for e in meddling.history_sync(attempt.id)] == ["start", "finish"]
    # The first try rolled back; the second moved it once by the effect, once by `finish`.
    assert meddling.read_sync(third.id).version == third.version + 2


def test_an_event_number_taken_under_the_batch_is_found_and_the_batch_fired_again(
    engine: Engine,
) -> None:
    """An event logged on an attempt after the batch numbered its events (a refused `poke`
    fired by the first fire's effect) takes the number the batch held for it: the batch
    is fired again, and the log runs 1, 2, 3 with nothing lost or doubled."""
    meddling, (first, second, third) = _meddling(engine)
    _finish_in_one_batch(meddling, [first, second, third], {first.id: {"log_on": third.id}})
    log = [(e.seq, e.event, e.accepted) for e in meddling.history_sync(third.id)]
    assert log == [(1, "start", True), (2, "poke", False), (3, "finish", True)]
    assert _states(meddling, [first, second, third]) == ["done"] * 3


# A flow whose effect checks each attempt against a value read for the whole batch.
class Stamped(StateMachine):
    waiting = State(initial=True)
    stamped = State(final=True)

    stamp = waiting.to(stamped, on="check_the_stamp")

    def check_the_stamp(self, tx: Any, reads: list[list[uuid.UUID]], other: Any = None) -> None:
        def read(conn: Any, ids: Any) -> dict[uuid.UUID, str]:
            reads.append(list(ids))
            return {i: f"stamp-{i}" for i in ids}

        if tx.read_for_all("stamps", read).get(tx.attempt.id) != f"stamp-{tx.attempt.id}":
            raise ConflictError(tx.attempt.id, "stamp")
        if other is not None:
            # A fire made from inside an effect, on an attempt outside the batch.
            tx.fire(other, "stamp", params={"reads": reads})


def test_a_value_read_for_all_is_read_once_per_batch_and_alone_for_a_single_fire(
    engine: Engine,
) -> None:
    """Five fires of one batch share one read of all five attempts; a single fire reads
    for its attempt alone, and so does a fire its effect makes on an attempt outside the
    batch."""
    stamps = Engine(engine.db, [FlowSpec(name="stamped", machine=Stamped)])
    batch = [stamps.start_sync("stamped", subject=f"s{i}") for i in range(5)]
    alone, outside = (stamps.start_sync("stamped", subject=s) for s in ("alone", "outside"))
    reads: list[list[uuid.UUID]] = []
    params: dict[str, Any] = {"reads": reads}
    fires = [Fire(a.id, "stamp", params=params) for a in batch[:-1]]
    fires.append(Fire(batch[-1].id, "stamp", params={**params, "other": outside.id}))
    outcomes = stamps.fire_many_sync(fires)
    assert [type(o).__name__ for o in outcomes] == ["Fired"] * 5
    assert reads == [sorted(a.id for a in batch), [outside.id]]
    reads.clear()
    stamps.fire_sync(alone.id, "stamp", params=params)
    assert reads == [[alone.id]]
    assert _states(stamps, [*batch, alone, outside]) == ["stamped"] * 7


def test_a_batch_costs_one_commit_however_many_it_fires(engine: Engine) -> None:
    """Five fires or twenty: one transaction each time."""
    few = [engine.start_sync(FLOW, subject=f"f{i}") for i in range(5)]
    many = [engine.start_sync(FLOW, subject=f"m{i}") for i in range(20)]
    commits = Commits(engine.db)
    engine.fire_many_sync([Fire(a.id, "offer", params=OFFER) for a in few])
    assert commits.count == 1
    engine.fire_many_sync([Fire(a.id, "offer", params=OFFER) for a in many])
    assert commits.count == 2
    assert set(_states(engine, few + many)) == {"offered"}


# -- the worker's side: waves, fire_claimed_many, jobs that take attempts together -----------


def _record(subject: str) -> AttemptRecord:
    now = datetime.now(UTC)
    return AttemptRecord(
        id=uuid.uuid4(),
        flow=FLOW,
        flow_version=1,
        state="queued",
        version=1,
        created_at=now,
        updated_at=now,
        deadline_at=None,
        lease_until=None,
        subject=subject,
        data={},
    )


def test_waves_hold_one_attempt_per_subject_in_claim_order() -> None:
    a1, b1, a2, c1, a3, b2 = (_record(s) for s in "abacab")
    assert waves([a1, b1, a2, c1, a3, b2]) == [[a1, b1, c1], [a2, b2], [a3]]
    assert waves([]) == []


async def test_fire_claimed_many_records_the_outcomes_and_skips_what_moved(
    engine: Engine,
) -> None:
    """Claimed bookings are offered in one go; one withdrawn after its claim is not (False)."""
    attempts = [engine.start_sync(FLOW, subject=f"c{i}") for i in range(3)]
    claims = engine.claim_sync(FLOW, "queued", lease=LEASE)
    engine.fire_sync(attempts[1].id, "withdraw")
    by_id = {c.id: c for c in claims}
    decisions = [Decision(by_id[a.id], "offer", params=OFFER) for a in attempts]
    assert await fire_claimed_many(engine, decisions) == [True, False, True]
    assert _states(engine, attempts) == ["offered", "withdrawn", "offered"]
    assert await fire_claimed_many(engine, []) == []


@dataclass
class Together:
    """What the together job was handed, list by list."""

    engine: Engine
    lists: list[list[str]] = field(default_factory=list)


async def offer_all(context: Together, attempts: list[AttemptRecord]) -> None:
    context.lists.append([a.subject for a in attempts])
    await fire_claimed_many(context.engine, [Decision(a, "offer", params=OFFER) for a in attempts])


class Seat(StateMachine):
    queued = State(initial=True)
    offered = State()
    replaced = State(final=True)

    offer = queued.to(offered)
    replace = offered.to(replaced)


async def test_a_together_job_gets_one_attempt_per_subject_per_list(engine: Engine) -> None:
    """Three bookings of one customer and one of another: the job is handed the first of
    each, then the second, then the third, and the one-live rule leaves the newest live."""
    spec = FlowSpec(
        name="seat",
        machine=Seat,
        exclusive=Exclusive("seat-together", live=("offered",), end_event="replace"),
        jobs=(Job("queued", offer_all, together=True),),
    )
    seats = Engine(engine.db, [spec])
    same = [seats.start_sync("seat", subject="same") for _ in range(3)]
    other = seats.start_sync("seat", subject="other")
    context = Together(seats)
    worker = Worker(seats, context, lease=LEASE, poll_seconds=0.01)
    assert await worker.run_once() == 4
    assert context.lists == [["same", "other"], ["same"], ["same"]]
    assert _states(seats, [*same, other]) == ["replaced", "replaced", "offered", "offered"]


# -- queries for many subjects at once ---------------------------------------------------------


def test_counting_events_by_subject_agrees_with_counting_one_subject(engine: Engine) -> None:
    """The grouped count equals the one-subject count for each subject, excluded attempts
    left out; a subject with none is absent."""
    for subject, n in (("a", 3), ("b", 1), ("c", 0)):
        for _ in range(n):
            attempt = engine.start_sync(FLOW, subject=subject)
            engine.fire_sync(attempt.id, "offer", params=OFFER)
    waiting = engine.start_sync(FLOW, subject="a")
    since = engine.clock.now() - timedelta(hours=1)
    query: dict[str, Any] = {
        "flow": FLOW,
        "event": "offer",
        "to_states": ["offered", "replaced"],
        "since": since,
    }
    grouped = engine.queries.count_events_by_subject_sync(
        subjects=["a", "b", "c"], exclude=[waiting.id], **query
    )
    assert grouped == {"a": 3, "b": 1}
    for subject in "abc":
        one = engine.queries.count_events_sync(subject=subject, exclude=waiting.id, **query)
        assert grouped.get(subject, 0) == one
    assert engine.queries.count_events_by_subject_sync(subjects=[], **query) == {}


def test_finding_predecessors_in_bulk_agrees_with_asking_one_by_one(engine: Engine) -> None:
    """For attempts started close together or apart, with several subjects, the bulk answer
    is the set of those whose one-by-one answer is yes."""
    attempts = [engine.start_sync(FLOW, subject=s) for s in ("x", "y", "x", "z", "x", "y")]
    records = [engine.read_sync(a.id) for a in attempts]
    for within in (timedelta(0), timedelta(microseconds=1), timedelta(minutes=5)):
        bulk = engine.queries.with_predecessor_sync(records, within)
        one_by_one = {r.id for r in records if engine.queries.has_predecessor_sync(r, within)}
        assert bulk == one_by_one
    assert engine.queries.with_predecessor_sync(records, timedelta(minutes=5)) == {
        records[2].id,
        records[4].id,
        records[5].id,
    }
    assert engine.queries.with_predecessor_sync([], timedelta(minutes=5)) == set()


# -- starts that arrive together ------------------------------------------------------------


def test_a_busy_lane_hands_the_items_that_waited_to_one_call_in_order() -> None:
    """While the lane's thread is busy, ten items wait; then one call takes them all (at
    most `limit` at a time), each awaiter gets its own outcome, an exception instance is
    raised to its item's awaiter alone, and an idle lane runs an item at once, alone."""
    lane = Lane(1, "test-lane", initializer=lambda: None)
    calls: list[list[int]] = []

    def each(items: list[int]) -> list[Any]:
        calls.append(list(items))
        return [ValueError(f"no {i}") if i == 3 else i * 10 for i in items]

    async def main() -> list[Any]:
        busy = threading.Event()
        blocked = lane.submit(lambda: busy.wait(5))
        waiting = [lane.submit_together(each, i, 4) for i in range(10)]
        busy.set()
        await blocked
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        alone = await lane.submit_together(each, 42, 4)
        return [*outcomes, alone]

    try:
        outcomes = asyncio.run(main())
    finally:
        lane.shutdown()
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [42]]
    assert outcomes[:3] == [0, 10, 20] and outcomes[4:] == [40, 50, 60, 70, 80, 90, 420]
    assert isinstance(outcomes[3], ValueError) and str(outcomes[3]) == "no 3"


def test_a_call_that_fails_as_a_whole_fails_every_item_it_took() -> None:
    """A function that raises, or answers the wrong number of outcomes, fails all of its
    items: nobody waits forever."""
    lane = Lane(1, "test-lane", initializer=lambda: None)

    def broken(items: list[int]) -> list[Any]:
        if items[0] == 0:
            raise RuntimeError("down")
        return []

    async def main() -> list[Any]:
        busy = threading.Event()
        blocked = lane.submit(lambda: busy.wait(5))
        first = [lane.submit_together(broken, i, 2) for i in (0, 1)]
        second = [lane.submit_together(broken, i, 2) for i in (2, 3)]
        busy.set()
        await blocked
        return await asyncio.gather(*first, *second, return_exceptions=True)

    try:
        outcomes = asyncio.run(main())
    finally:
        lane.shutdown()
    assert [type(o) for o in outcomes] == [RuntimeError] * 4
    assert [str(o) for o in outcomes[:2]] == ["down", "down"]
    assert "gave 0 outcomes for 2" in str(outcomes[2])


async def test_concurrent_starts_share_commits_and_each_is_logged_and_counted(
    engine: Engine,
) -> None:
    """Forty starts at once: every attempt, creation event and total is there as forty
    `start_sync` calls would leave them, in fewer commits than starts."""
    before = engine.totals_sync()
    commits = Commits(engine.db)
    outcomes = await asyncio.gather(
        *(engine.start(FLOW, subject=f"crowd{i}", detail={"n": i}) for i in range(40))
    )
    assert commits.count < 40
    assert len({o.id for o in outcomes}) == 40
    for i, record in enumerate(outcomes):
        assert engine.read_sync(record.id).subject == f"crowd{i}"
        [created] = engine.history_sync(record.id)
        assert (created.event, created.detail) == ("start", {"n": i})
    after = engine.totals_sync()
    for key in (("attempts", "queued"), ("accepted", "start")):
        assert after[(FLOW, *key)] == before.get((FLOW, *key), 0) + 40


async def test_a_start_refused_in_a_crowd_is_refused_alone(engine: Engine) -> None:
    """An unknown flow and a duplicate attempt id among twenty concurrent starts get their
    own errors; the other starts are written, the taken id keeps its attempt."""
    taken = engine.start_sync(FLOW, subject="first")
    starts = [engine.start(FLOW, subject=f"crowd{i}") for i in range(20)]
    starts.insert(7, engine.start("no_such_flow", subject="x"))
    starts.insert(12, engine.start(FLOW, subject="again", attempt_id=taken.id))
    outcomes = await asyncio.gather(*starts, return_exceptions=True)
    assert isinstance(outcomes.pop(12), IntegrityError)
    assert isinstance(outcomes.pop(7), UnknownFlow)
    assert [engine.read_sync(o.id).subject for o in outcomes] == [f"crowd{i}" for i in range(20)]
    assert engine.read_sync(taken.id).subject == "first"
    assert [e.event for e in engine.history_sync(taken.id)] == ["start"]
