"""Deadlines: live exactly at the deadline, expired one second after, on read and by the sweep.

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
from tests.engine.helpers import FLOW, OPEN, SEND, emailed, row_counts

T0 = datetime(2026, 2, 1, 8, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@pytest.fixture
def frozen() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(T0) as factory:
        yield factory


def _two_in_requested(engine: Engine, frozen: FrozenDateTimeFactory) -> list[AttemptRecord]:
    """Requested at T0."""
    return [engine.start_sync(FLOW, subject=f"s{i}") for i in range(2)]


def _two_in_emailed(engine: Engine, frozen: FrozenDateTimeFactory) -> list[AttemptRecord]:
    """Emailed at T0."""
    return [emailed(engine, f"s{i}") for i in range(2)]


def _two_in_link_opened_late(engine: Engine, frozen: FrozenDateTimeFactory) -> list[AttemptRecord]:
    """Emailed at T0, opened at minute 59: the deadline stays at minute 60 (not restarted)."""
    sent = _two_in_emailed(engine, frozen)
    frozen.tick(timedelta(minutes=59))
    return [engine.fire_sync(a.id, "open_link", params=OPEN).attempt for a in sent]


Setup = Callable[[Engine, FrozenDateTimeFactory], list[AttemptRecord]]
DEADLINES: dict[str, tuple[Setup, timedelta]] = {
    "requested": (_two_in_requested, timedelta(hours=24)),
    "emailed": (_two_in_emailed, timedelta(minutes=60)),
    "link_opened": (_two_in_link_opened_late, timedelta(minutes=60)),
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
    assert (got.state, got.deadline_at, got.version) == ("expired", None, read_one.version + 1)
    assert engine.read_sync(read_one.id) == got, "the lazy expiry was not persisted"
    assert engine.get_sync(read_one.id) == got, "a second read expired it again"
    assert engine.sweep_sync() == 1
    assert engine.read_sync(swept_one.id).state == "expired"

    for attempt in (read_one, swept_one):
        last = engine.history_sync(attempt.id)[-1]
        assert (last.event, last.from_state, last.to_state, last.actor, last.at) == (
            "expire",
            state,
            "expired",
            "system",
            deadline + SECOND,
        )
        assert [e.event for e in engine.history_sync(attempt.id)].count("expire") == 1


async def test_async_read_applies_an_overdue_deadline(engine: Engine) -> None:
    """`await engine.get()` expires an overdue attempt just as the sync read does."""
    with freeze_time(T0, real_asyncio=True) as frozen:
        attempt = await engine.start(FLOW)
        await engine.fire(attempt.id, "dispatch", params=SEND)
        frozen.tick(timedelta(minutes=60))
        assert (await engine.get(attempt.id)).state == "emailed"
        frozen.tick(SECOND)
        assert (await engine.get(attempt.id)).state == "expired"


def test_the_link_can_still_be_used_at_its_deadline(
    engine: Engine, frozen: FrozenDateTimeFactory
) -> None:
    """Opening at exactly minute 60 works and keeps the same deadline."""
    attempt = emailed(engine)
    frozen.tick(timedelta(minutes=60))
    opened = engine.fire_sync(attempt.id, "open_link", params=OPEN).attempt
    assert (opened.state, opened.deadline_at) == ("link_opened", T0 + timedelta(minutes=60))


def test_an_event_after_the_deadline_expires_the_attempt_and_is_refused_as_expired(
    engine: Engine, database: Database, frozen: FrozenDateTimeFactory
) -> None:
    """Firing at an overdue attempt applies the deadline first, then refuses the event with
    reason `expired` and the time it expired at."""
    attempt = emailed(engine)
    frozen.tick(timedelta(minutes=60) + SECOND)
    counts = row_counts(database)
    with pytest.raises(EventRefused) as refused:
        engine.fire_sync(attempt.id, "open_link", actor="person", params=OPEN)
    assert (refused.value.reason, refused.value.state) == ("expired", "expired")
    assert refused.value.expired_at == T0 + timedelta(minutes=60)
    history = engine.history_sync(attempt.id)
    assert [(e.event, e.accepted, e.actor) for e in history[-2:]] == [
        ("expire", True, "system"),
        ("open_link", False, "person"),
    ]
    assert row_counts(database) == {**counts, "attempt_event": counts["attempt_event"] + 2}
    assert engine.read_sync(attempt.id).state == "expired"


def test_sweep_expires_every_overdue_attempt_in_set_based_batches(
    engine: Engine, database: Database, frozen: FrozenDateTimeFactory
) -> None:
    """The sweep moves exactly the overdue attempts, one event each, using a handful of
    statements per batch rather than any per-attempt statement."""
    overdue = [emailed(engine, f"o{i}").id for i in range(40)]
    finished = [engine.fire_sync(emailed(engine, f"f{i}").id, "cancel").attempt for i in range(3)]
    frozen.tick(timedelta(minutes=30))
    fresh = [emailed(engine, f"n{i}") for i in range(3)]
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
    # emailed attempts, one empty pick per other deadline state): ~22, never one per attempt.
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
    assert set(states.values()) == {"expired"}
    for attempt_id in overdue[:3]:
        *_, before, last = engine.history_sync(attempt_id)
        assert (last.seq, last.event, last.from_state, last.to_state) == (
            before.seq + 1,
            "expire",
            "emailed",
            "expired",
        )
        assert last.at == T0 + timedelta(minutes=60) + SECOND and last.detail == {"sweep": True}
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
    ids = [emailed(engine, f"s{i}").id for i in range(4)]
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
    attempt = emailed(engine)
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
        ids += [emailed(engine, f"m{minute}-{i}").id for i in range(3)]
        frozen.tick(timedelta(minutes=1))
    frozen.move_to(T0 + timedelta(minutes=60 + 2, seconds=30))  # the first 3 minutes are overdue
    assert engine.sweep_sync(batch_size=2) == 9
    states = [engine.read_sync(i).state for i in ids]
    assert states == ["expired"] * 9 + ["emailed"] * 9
    frozen.tick(timedelta(minutes=10))
    assert engine.sweep_sync(batch_size=4) == 9
    for attempt_id in ids:
        assert [e.event for e in engine.history_sync(attempt_id)].count("expire") == 1
