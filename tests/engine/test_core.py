"""Starting, firing, reading and refusing: the engine's core contract, on both backends."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import select, update

from engine import (
    Database,
    Engine,
    EngineError,
    EventRefused,
    InvalidAttemptId,
    NotFound,
    StoredStateInvalid,
    Transaction,
    UnknownEvent,
    UnknownFlow,
)
from engine.models import Attempt, Outbox
from tests.engine.helpers import FLOW, offered, row_counts
from tests.engine.ticket import HOLD, OFFER

T0 = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)


def test_start_creates_an_attempt_in_the_initial_state_and_logs_its_creation(
    engine: Engine,
) -> None:
    """A started attempt is in `queued`, version 1, with its facts stored and one start event."""
    with freeze_time(T0):
        attempt = engine.start_sync(
            FLOW, subject="customer-7", data={"ip": "192.0.2.1"}, actor="customer"
        )
        stored = engine.get_sync(attempt.id)
    assert stored == attempt
    assert (stored.state, stored.version, stored.subject) == ("queued", 1, "customer-7")
    assert stored.data == {"ip": "192.0.2.1"}
    assert stored.created_at == stored.updated_at == T0
    assert stored.deadline_at == T0 + timedelta(hours=24)
    [start] = engine.history_sync(attempt.id)
    assert (start.seq, start.event, start.from_state, start.to_state, start.actor) == (
        1,
        "start",
        None,
        "queued",
        "customer",
    )
    assert start.accepted and start.at == T0


def test_fire_moves_the_attempt_and_appends_one_event(engine: Engine) -> None:
    """An accepted event changes state, bumps the version, merges data and logs who and when."""
    attempt = engine.start_sync(FLOW, subject="s")
    with freeze_time(T0):
        fired = engine.fire_sync(
            attempt.id,
            "offer",
            actor="system",
            params=OFFER,
            detail={"delivery": "sent"},
            data={"account": "a1"},
        )
    assert fired.previous_state == "queued"
    assert (fired.attempt.state, fired.attempt.version) == ("offered", 2)
    assert fired.attempt.deadline_at == T0 + timedelta(minutes=60)
    assert fired.attempt.data == {"account": "a1"}
    assert fired.event.seq == 2 and fired.event.accepted
    assert (fired.event.from_state, fired.event.to_state) == ("queued", "offered")
    assert fired.event.detail == {"delivery": "sent"}
    assert engine.read_sync(attempt.id) == fired.attempt
    assert [e.event for e in engine.history_sync(attempt.id)] == ["start", "offer"]
    assert engine.allowed_events(fired.attempt) == ["hold", "lapse", "withdraw", "replace"]


def test_attempt_ids_are_accepted_as_strings_too(engine: Engine) -> None:
    """Callers holding the id as text (URLs, JSON) reach the same attempt."""
    attempt = engine.start_sync(FLOW)
    assert engine.get_sync(str(attempt.id)).id == attempt.id
    assert engine.fire_sync(str(attempt.id), "withdraw").attempt.state == "withdrawn"


async def test_async_surface_awaits_the_same_operations(engine: Engine) -> None:
    """start/fire/get/history/sweep can be awaited from async handlers."""
    attempt = await engine.start(FLOW, subject="s")
    fired = await engine.fire(attempt.id, "offer", params=OFFER)
    assert fired.attempt.state == "offered"
    assert (await engine.get(attempt.id)).state == "offered"
    assert [e.event for e in await engine.history(attempt.id)] == ["start", "offer"]
    assert await engine.sweep() == 0


def _assert_refused_changed_nothing(
    engine: Engine, database: Database, attempt_id: uuid.UUID, event: str, reason: str, **kw: object
) -> None:
    before = engine.read_sync(attempt_id)
    counts = row_counts(database)
    with pytest.raises(EventRefused) as refused:
        engine.fire_sync(attempt_id, event, actor="customer", detail={"ua": "test"}, **kw)
    assert (refused.value.reason, refused.value.state, refused.value.event) == (
        reason,
        before.state,
        event,
    )
    assert refused.value.code == "event_refused"
    assert engine.read_sync(attempt_id) == before, "a refused event changed the attempt"
    after = row_counts(database)
    assert after == {**counts, "attempt_event": counts["attempt_event"] + 1}
    last = engine.history_sync(attempt_id)[-1]
    assert (last.event, last.accepted, last.from_state, last.to_state, last.actor) == (
        event,
        False,
        before.state,
        None,
        "customer",
    )
    assert last.detail == {"reason": reason, "ua": "test"}


def test_event_in_the_wrong_state_is_recorded_as_refused_and_changes_nothing(
    engine: Engine, database: Database
) -> None:
    """`log_in` on a just-queued attempt is refused (wrong_state); only the refusal is logged."""
    attempt = engine.start_sync(FLOW)
    _assert_refused_changed_nothing(
        engine, database, attempt.id, "sit", "wrong_state", params={"signed_in": True}
    )


def test_event_whose_guards_fail_is_recorded_as_refused_and_changes_nothing(
    engine: Engine, database: Database
) -> None:
    """`hold` with a wrong code is refused (guard_failed); state, version, data kept."""
    attempt = offered(engine)
    _assert_refused_changed_nothing(
        engine, database, attempt.id, "hold", "guard_failed", params={"code_ok": False}
    )


def test_events_after_a_final_state_are_refused(engine: Engine, database: Database) -> None:
    """A withdrawn attempt refuses every further event."""
    attempt = offered(engine)
    engine.fire_sync(attempt.id, "withdraw", actor="desk:alice")
    for event in ("hold", "offer", "withdraw", "lapse"):
        _assert_refused_changed_nothing(
            engine, database, attempt.id, event, "wrong_state", params=HOLD
        )


def test_in_tx_hook_runs_in_the_transition_transaction(engine: Engine, database: Database) -> None:
    """The hook sees the new state, can queue outbox work and fire at other attempts, atomically."""
    older = offered(engine, "another customer")
    newer = engine.start_sync(FLOW, subject="this customer")
    seen: list[str] = []

    def hook(tx: Transaction) -> None:
        seen.append(tx.attempt.state)
        tx.enqueue("notify", {"attempt": str(tx.attempt.id)})
        assert tx.fire(older.id, "replace", detail={"by": str(tx.attempt.id)}) is not None

    engine.fire_sync(newer.id, "offer", params=OFFER, in_tx=hook)
    assert seen == ["offered"]
    assert engine.read_sync(older.id).state == "replaced"
    with database.transaction(write=False) as conn:
        [item] = conn.execute(select(Outbox)).all()
    assert (item.kind, item.attempt_id, item.payload) == (
        "notify",
        newer.id,
        {"attempt": str(newer.id)},
    )


def test_a_failing_in_tx_hook_rolls_the_whole_transition_back(
    engine: Engine, database: Database
) -> None:
    """If the caller's hook raises, neither the state, the event, nor queued work is kept."""
    older = offered(engine, "another customer")
    newer = engine.start_sync(FLOW, subject="this customer")
    counts = row_counts(database)

    def hook(tx: Transaction) -> None:
        tx.enqueue("notify", {})
        tx.fire(older.id, "replace")
        raise RuntimeError("side effect failed")

    with pytest.raises(RuntimeError, match="side effect failed"):
        engine.fire_sync(newer.id, "offer", params=OFFER, in_tx=hook)
    assert row_counts(database) == counts
    assert engine.read_sync(newer.id).state == "queued"
    assert engine.read_sync(older.id).state == "offered"


# -- bad input: a clear error from the tree, and nothing written -------------


def test_starting_an_unknown_flow_is_a_clear_error_and_writes_nothing(
    engine: Engine, database: Database
) -> None:
    """UnknownFlow names the flow; no attempt or event row appears."""
    counts = row_counts(database)
    with pytest.raises(UnknownFlow, match="unknown flow 'no_such_flow'") as error:
        engine.start_sync("no_such_flow", subject="s")
    assert isinstance(error.value, EngineError) and error.value.code == "unknown_flow"
    assert error.value.flow == "no_such_flow"
    assert row_counts(database) == counts


def test_firing_an_unknown_event_is_a_clear_error_and_writes_nothing(
    engine: Engine, database: Database
) -> None:
    """UnknownEvent names the flow and event; the attempt and its log are untouched."""
    attempt = offered(engine)
    counts = row_counts(database)
    with pytest.raises(UnknownEvent, match="has no event 'teleport'") as error:
        engine.fire_sync(attempt.id, "teleport")
    assert (error.value.flow, error.value.event, error.value.code) == (
        FLOW,
        "teleport",
        "unknown_event",
    )
    assert row_counts(database) == counts
    assert engine.read_sync(attempt.id) == attempt


def test_an_unknown_event_on_an_overdue_attempt_still_writes_nothing(
    engine: Engine, database: Database
) -> None:
    """Bad input is rejected before the overdue deadline would be applied."""
    with freeze_time(T0) as frozen:
        attempt = offered(engine)
        frozen.tick(timedelta(hours=2))
        counts = row_counts(database)
        with pytest.raises(UnknownEvent):
            engine.fire_sync(attempt.id, "teleport")
        assert row_counts(database) == counts
        assert engine.read_sync(attempt.id).state == "offered"


def test_a_stored_state_outside_the_flow_is_reported_and_nothing_is_written(
    engine: Engine, database: Database
) -> None:
    """A row whose state the flow lacks raises StoredStateInvalid on read and fire; no writes."""
    attempt = offered(engine)
    with database.transaction() as conn:
        conn.execute(
            update(Attempt.__table__).where(Attempt.__table__.c.id == attempt.id).values(state="x")
        )
    counts = row_counts(database)
    for call in (
        lambda: engine.read_sync(attempt.id),
        lambda: engine.get_sync(attempt.id),
        lambda: engine.fire_sync(attempt.id, "withdraw"),
    ):
        with pytest.raises(StoredStateInvalid, match="state 'x', which flow") as error:
            call()
        assert (error.value.state, error.value.attempt_id) == ("x", attempt.id)
    assert row_counts(database) == counts


MALFORMED_IDS = [
    "",
    "42",
    "not-a-uuid",
    "../../etc/passwd",
    "x" * 5000,
    "1234567-81234-1234-1234-123456789012",  # hyphens misplaced
    "{12345678-1234-1234-1234-123456789012}",
    "urn:uuid:12345678-1234-1234-1234-123456789012",
    "1234_678-1234-1234-1234-123456789012",  # uuid.UUID() would read another id
    "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668-1234-1234-1234-123456789012",
    "12345678-1234-1234-1234-123456789012\n",
]


def test_a_malformed_attempt_id_is_a_clear_error_and_writes_nothing(
    engine: Engine, database: Database
) -> None:
    """InvalidAttemptId for every operation and every malformed spelling; nothing echoed back."""
    engine.start_sync(FLOW)
    counts = row_counts(database)
    for bad_id in MALFORMED_IDS:
        for call, args in (
            (engine.fire_sync, (bad_id, "withdraw")),
            (engine.get_sync, (bad_id,)),
            (engine.read_sync, (bad_id,)),
            (engine.history_sync, (bad_id,)),
        ):
            with pytest.raises(InvalidAttemptId) as error:
                call(*args)
            assert str(error.value) == "malformed attempt id"
            assert error.value.code == "invalid_attempt_id"
    assert row_counts(database) == counts


def test_an_unknown_attempt_id_is_not_found_and_writes_nothing(
    engine: Engine, database: Database
) -> None:
    """A well-formed id that no attempt has raises NotFound carrying the id."""
    missing = uuid.uuid4()
    counts = row_counts(database)
    for call in (
        lambda: engine.fire_sync(missing, "withdraw"),
        lambda: engine.get_sync(missing),
        lambda: engine.history_sync(missing),
    ):
        with pytest.raises(NotFound) as error:
            call()
        assert error.value.attempt_id == missing
    assert row_counts(database) == counts


def test_attempt_ids_in_any_letter_case_name_the_same_attempt(engine: Engine) -> None:
    """The canonical form is accepted in upper case too (hex is case-blind)."""
    attempt = engine.start_sync(FLOW)
    assert engine.read_sync(str(attempt.id).upper()).id == attempt.id


def test_a_callers_detail_cannot_overwrite_the_recorded_refusal_reason(engine: Engine) -> None:
    """The log keeps the engine's reason even if the caller's detail carries a `reason` key."""
    attempt = engine.start_sync(FLOW)
    with pytest.raises(EventRefused):
        engine.fire_sync(attempt.id, "sit", detail={"reason": "all fine", "ua": "x"})
    last = engine.history_sync(attempt.id)[-1]
    assert last.detail == {"reason": "wrong_state", "ua": "x"}


def test_a_flow_tells_which_events_end_an_attempt_for_good(engine: Engine) -> None:
    """`ends`: every arrow of the event out of the state reaches a final state; one that
    may lead on (a guarded offer can reach `offered`), or no arrow at all, does not end it."""
    spec = engine.flows.get(FLOW)
    assert spec.ends("queued", "withdraw") and spec.ends("held", "lapse")
    assert not spec.ends("queued", "offer")  # waitlisted and refused end it, offered does not
    assert not spec.ends("offered", "hold")
    assert not spec.ends("seated", "withdraw")  # no arrow from there
