"""Deadlines: live exactly at the deadline, lapsed one second after, on read and by the sweep.

Time is moved with freezegun; the engine reads it through its clock seam and
passes it to every query, so the database never consults its own clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from sqlalchemy import event, select

from engine import Database, Engine, EventRefused
from engine.core import AttemptRecord
from engine.models import Attempt
from tests.engine.helpers import FLOW, offered, row_counts
from tests.engine.ticket import HOLD, OFFER

T0 = datetime(2026, 2, 1, 8, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@pytest.fixture
def frozen() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(T0) as factory:
        yield factory


def _two_in_requested(engine: Engine, frozen: FrozenDateTimeFactory) -> list[AttemptRecord]:
    """Requested at T0."""
    return [engine.start_sync(FLOW, subject=f"s{i}") for i in range(2)]


def _two_offered(engine: Engine, frozen: FrozenDateTimeFactory) -> list[AttemptRecord]:
    """Offered at T0."""
    return [offered(engine, f"s{i}") for i in range(2)]


def _two_held_late(engine: Engine, frozen: FrozenDateTimeFactory) -> list[AttemptRecord]:
    """Offered at T0, held at minute 59: the deadline stays at minute 60 (not restarted)."""
    sent = _two_offered(engine, frozen)
    frozen.tick(timedelta(minutes=59))
    return [engine.fire_sync(a.id, "hold", params=HOLD).attempt for a in sent]


Setup = Callable[[Engine, FrozenDateTimeFactory], list[AttemptRecord]]
DEADLINES: dict[str, tuple[Setup, timedelta]] = {
    "queued": (_two_in_requested, timedelta(hours=24)),
    "offered": (_two_offered, timedelta(minutes=60)),
    "held": (_two_held_late, timedelta(minutes=60)),
}


@pytest.mark.parametrize("state", list(DEADLINES))
def test_attempt_is_live_at_its_deadline_and_expired_one_second_after(
    engine: Engine, frozen: FrozenDateTimeFactory, state: str
) -> None:
    """At the deadline reading and the sweep leave the attempt alone; one second later a read
    and the sweep each expire it, persisted, with one `expire` event by the system."""
    make, after = DEADLINES[state]
    read_one, swept_one = make(engine, frozen)
    deadline = T0 + after
    assert read_one.state == state and read_one.deadline_at == deadline

    frozen.move_to(deadline)
    assert engine.get_sync(read_one.id).state == state
    assert engine.sweep_sync() == 0
    assert engine.read_sync(swept_one.id).state == state

    frozen.move_to(deadline + SECOND)
    got = engine.get_sync(read_one.id)
    assert (got.state, got.deadline_at, got.version) == ("lapsed", None, read_one.version + 1)
    assert engine.read_sync(read_one.id) == got, "the lazy expiry was not persisted"
    assert engine.get_sync(read_one.id) == got, "a second read lapsed it again"
    assert engine.sweep_sync() == 1
    assert engine.read_sync(swept_one.id).state == "lapsed"

    for attempt in (read_one, swept_one):
        last = engine.history_sync(attempt.id)[-1]
        assert (last.event, last.from_state, last.to_state, last.actor, last.at) == (
            "lapse",
            state,
            "lapsed",
            "system",
            deadline + SECOND,
        )
        assert [e.event for e in engine.history_sync(attempt.id)].count("lapse") == 1


async def test_async_read_applies_an_overdue_deadline(engine: Engine) -> None:
    """`await engine.get()` expires an overdue attempt just as the sync read does."""
    with freeze_time(T0, real_asyncio=True) as frozen:
        attempt = await engine.start(FLOW)
        await engine.fire(attempt.id, "offer", params=OFFER)
        frozen.tick(timedelta(minutes=60))
        assert (await engine.get(attempt.id)).state == "offered"
        frozen.tick(SECOND)
        assert (await engine.get(attempt.id)).state == "lapsed"


def test_the_offer_can_still_be_taken_at_its_deadline(
    engine: Engine, frozen: FrozenDateTimeFactory
) -> None:
    """Opening at exactly minute 60 works and keeps the same deadline."""
    attempt = offered(engine)
    frozen.tick(timedelta(minutes=60))
    opened = engine.fire_sync(attempt.id, "hold", params=HOLD).attempt
    assert (opened.state, opened.deadline_at) == ("held", T0 + timedelta(minutes=60))


def test_an_event_after_the_deadline_lapses_the_attempt_and_is_refused_as_expired(
    engine: Engine, database: Database, frozen: FrozenDateTimeFactory
) -> None:
    """Firing at an overdue attempt applies the deadline first, then refuses the event with
    reason `expired` and the time it lapsed at."""
    attempt = offered(engine)
    frozen.tick(timedelta(minutes=60) + SECOND)
    counts = row_counts(database)
    with pytest.raises(EventRefused) as refused:
        engine.fire_sync(attempt.id, "hold", actor="customer", params=HOLD)
    assert (refused.value.reason, refused.value.state) == ("expired", "lapsed")
    assert refused.value.expired_at == T0 + timedelta(minutes=60)
    history = engine.history_sync(attempt.id)
    assert [(e.event, e.accepted, e.actor) for e in history[-2:]] == [
        ("lapse", True, "system"),
        ("hold", False, "customer"),
    ]
    assert row_counts(database) == {**counts, "attempt_event": counts["attempt_event"] + 2}
    assert engine.read_sync(attempt.id).state == "lapsed"


def test_sweep_expires_every_overdue_attempt_in_set_based_batches(
    engine: Engine, database: Database, frozen: FrozenDateTimeFactory
) -> None:
    """The sweep moves exactly the overdue attempts, one event each, using a handful of
    statements per batch rather than any per-attempt statement."""
    overdue = [offered(engine, f"o{i}").id for i in range(40)]
    finished = [engine.fire_sync(offered(engine, f"f{i}").id, "withdraw").attempt for i in range(3)]
    frozen.tick(timedelta(minutes=30))
    fresh = [offered(engine, f"n{i}") for i in range(3)]
    waiting = [engine.start_sync(FLOW, subject=f"r{i}") for i in range(3)]
    frozen.tick(timedelta(minutes=30) + SECOND)
    untouched = {a.id: engine.read_sync(a.id) for a in [*finished, *fresh, *waiting]}
    counts = row_counts(database)

    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(database.engine, "before_cursor_execute", count)
    try:
        moved = engine.sweep_sync(batch_size=10)
    finally:
        event.remove(database.engine, "before_cursor_execute", count)

    assert moved == len(overdue)
    # Per batch: BEGIN, pick ids, insert events, update attempts (here 5 batches of
    # offered attempts, one empty pick per other deadline state): ~22, never one per attempt.
    assert len(statements) < len(overdue), "the sweep issued per-attempt statements"
    assert row_counts(database) == {
        **counts,
        "attempt_event": counts["attempt_event"] + len(overdue),
    }
    with database.transaction(write=False) as conn:
        states = dict(
            conn.execute(
                select(Attempt.__table__.c.id, Attempt.__table__.c.state).where(
                    Attempt.__table__.c.id.in_(overdue)
                )
            ).all()
        )
    assert set(states.values()) == {"lapsed"}
    for attempt_id in overdue[:3]:
        *_, before, last = engine.history_sync(attempt_id)
        assert (last.seq, last.event, last.from_state, last.to_state) == (
            before.seq + 1,
            "lapse",
            "offered",
            "lapsed",
        )
        assert last.at == T0 + timedelta(minutes=60) + SECOND
        assert last.detail == {
            "deadline_at": (T0 + timedelta(minutes=60)).isoformat("T", "microseconds")
        }
        assert engine.read_sync(attempt_id).version == 3
    for attempt_id, before in untouched.items():
        assert engine.read_sync(attempt_id) == before
    assert engine.sweep_sync() == 0


def test_sweep_on_postgresql_skips_attempts_another_transaction_holds(
    engine: Engine, database: Database, frozen: FrozenDateTimeFactory, backend: str
) -> None:
    """A sweep does not wait on a row another writer has locked; the next sweep takes it."""
    if backend != "postgresql":
        pytest.skip("SQLite has a single writer; SKIP LOCKED is PostgreSQL's")
    ids = [offered(engine, f"s{i}").id for i in range(4)]
    frozen.tick(timedelta(minutes=61))
    other = Database(database.url, pool_size=1)
    try:
        with other.transaction() as conn:
            table = Attempt.__table__
            conn.execute(select(table.c.id).where(table.c.id == ids[0]).with_for_update()).all()
            assert engine.sweep_sync() == 3
    finally:
        other.close()
    assert engine.sweep_sync() == 1


@pytest.mark.parametrize("batch_size", [0, -5])
def test_a_sweep_batch_that_is_not_positive_is_refused_before_anything_moves(
    engine: Engine, frozen: FrozenDateTimeFactory, batch_size: int
) -> None:
    """A zero or negative batch size raises ValueError (it would never finish) and moves nothing."""
    attempt = offered(engine)
    frozen.tick(timedelta(hours=2))
    with pytest.raises(ValueError, match="batch_size must be positive"):
        engine.sweep_sync(batch_size=batch_size)
    assert engine.read_sync(attempt.id) == attempt


def test_sweep_moves_attempts_with_varied_deadlines_exactly_once_in_small_batches(
    engine: Engine, frozen: FrozenDateTimeFactory
) -> None:
    """Deadlines spread over time and shared by several attempts: every overdue one moves once,
    oldest first, however the batches cut through them."""
    ids = []
    for minute in range(6):
        ids += [offered(engine, f"m{minute}-{i}").id for i in range(3)]
        frozen.tick(timedelta(minutes=1))
    frozen.move_to(T0 + timedelta(minutes=60 + 2, seconds=30))  # the first 3 minutes are overdue
    assert engine.sweep_sync(batch_size=2) == 9
    states = [engine.read_sync(i).state for i in ids]
    assert states == ["lapsed"] * 9 + ["offered"] * 9
    frozen.tick(timedelta(minutes=10))
    assert engine.sweep_sync(batch_size=4) == 9
    for attempt_id in ids:
        assert [e.event for e in engine.history_sync(attempt_id)].count("lapse") == 1
