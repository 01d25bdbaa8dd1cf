"""What a flow declares beyond its machine: effects, one live attempt per group, versions,
deadlines computed per attempt, and effects on deadline transitions (read or swept alike)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from engine import Database, Engine, NewAttempt, UnknownFlow
from engine.models import Outbox
from tests.engine import ticket
from tests.engine.helpers import FLOW, held, offered, row_counts
from tests.engine.ticket import HOLD, OFFER, RECEIPT

T0 = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def _paid(engine: Engine, amount: int, subject: str = "customer-1") -> None:
    attempt = held(engine, subject)
    engine.fire_sync(attempt.id, "pay", params={**HOLD, "card_ok": True, "amount": amount})


def test_a_transitions_effect_runs_in_its_transaction_with_the_callers_facts(
    engine: Engine, database: Database
) -> None:
    """`pay` runs its effect: the amount (a fact passed by name) is merged into the attempt's
    data and a receipt is queued for after the commit, bound to the attempt."""
    attempt = held(engine)
    fired = engine.fire_sync(attempt.id, "pay", params={**HOLD, "card_ok": True, "amount": 42})
    assert fired.attempt.state == "paid"
    assert fired.attempt.data["charged"] == 42
    assert engine.read_sync(attempt.id).data["charged"] == 42
    with database.transaction(write=False) as conn:
        [item] = conn.execute(select(Outbox)).all()
    assert (item.kind, item.attempt_id, item.payload) == (RECEIPT, attempt.id, {"amount": 42})


def test_a_failing_effect_rolls_the_whole_transition_back(
    engine: Engine, database: Database
) -> None:
    """An effect that raises leaves the state, the event log and the outbox as they were."""
    attempt = held(engine)
    counts = row_counts(database)
    with pytest.raises(ValueError, match="negative"):
        engine.fire_sync(attempt.id, "pay", params={**HOLD, "card_ok": True, "amount": -1})
    assert row_counts(database) == counts
    assert engine.read_sync(attempt.id).state == "held"


def test_a_refused_event_runs_no_effect(engine: Engine, database: Database) -> None:
    """A guard that fails refuses the event before any effect runs."""
    attempt = held(engine)
    with pytest.raises(Exception, match="refused"):
        engine.fire_sync(attempt.id, "pay", params={**HOLD, "card_ok": False, "amount": 5})
    assert "charged" not in engine.read_sync(attempt.id).data
    assert row_counts(database)["outbox"] == 0


def test_flows_describe_the_effects_of_each_transition() -> None:
    """The spec lists each transition's effects: what the flow file names on it."""
    spec = ticket.spec()
    effects = {(t.source, t.event, t.target): t.effects for t in spec.transitions}
    assert effects[("held", "pay", "paid")] == ("charge",)
    assert effects[("held", "lapse", "lapsed")] == ("release_seat",)
    assert effects[("offered", "lapse", "lapsed")] == ()
    assert spec.describe()["funnel"] == ["queued", "offered", "held", "paid", "seated"]


def test_becoming_live_ends_the_subjects_other_live_attempt_in_the_group(
    engine: Engine,
) -> None:
    """A second offer to the same customer replaces the first one, in the same transaction;
    other customers' offers are untouched."""
    first = offered(engine, "customer-1")
    other = offered(engine, "customer-2")
    second = offered(engine, "customer-1")
    assert engine.read_sync(first.id).state == "replaced"
    last = engine.history_sync(first.id)[-1]
    assert (last.event, last.detail) == ("replace", {"superseded_by": str(second.id)})
    assert engine.read_sync(second.id).state == "offered"
    assert engine.read_sync(other.id).state == "offered"
    [live] = engine.queries.live_sync(ticket.GROUP, "customer-1")
    assert live.id == second.id


def test_an_effect_can_end_every_other_journey_of_the_subject(engine: Engine) -> None:
    """`tx.end_journeys` ends each live attempt of the subject in the group but the firing one."""
    first = held(engine, "customer-1")
    queued = engine.start_sync(FLOW, subject="customer-1")

    def end_others(tx: object) -> None:
        assert tx.end_journeys(detail={"reason": "sold out"}) == [first.id]  # type: ignore[attr-defined]

    engine.fire_sync(queued.id, "withdraw", in_tx=end_others)
    assert engine.read_sync(first.id).state == "replaced"
    assert engine.history_sync(first.id)[-1].detail == {"reason": "sold out"}


def test_many_attempts_start_in_one_transaction_ending_their_subjects_live_journeys(
    engine: Engine, database: Database
) -> None:
    """`start_many_sync` creates each attempt as `start_sync` would (logged, counted),
    ends the live attempts of those subjects alone, and runs the caller's writes in the
    same transaction: when those fail, nothing at all is written."""
    live = held(engine, "customer-1")
    other = held(engine, "customer-9")
    counts = row_counts(database)

    def refuse(conn: object, now: datetime) -> None:
        raise ValueError("refused")

    batch = [NewAttempt("customer-1", {"n": 1}, {"why": "batch"}), NewAttempt("customer-2")]
    with pytest.raises(ValueError, match="refused"):
        engine.start_many_sync(FLOW, batch, end_journeys={"reason": "r"}, in_tx=refuse)
    assert row_counts(database) == counts

    seen: list[datetime] = []
    made = engine.start_many_sync(
        FLOW, batch, end_journeys={"reason": "r"}, in_tx=lambda _c, now: seen.append(now)
    )
    assert [(a.subject, a.state, a.data) for a in made] == [
        ("customer-1", "queued", {"n": 1}),
        ("customer-2", "queued", {}),
    ]
    assert len(seen) == 1
    assert [(e.event, e.detail) for e in engine.history_sync(made[0].id)] == [
        ("start", {"why": "batch"})
    ]
    assert engine.read_sync(live.id).state == "replaced"
    assert engine.history_sync(live.id)[-1].detail == {"reason": "r"}
    assert engine.read_sync(other.id).state == "held"
    assert engine.queries.waiting_sync(FLOW, "queued") == 2
    assert engine.start_many_sync(FLOW, [], in_tx=lambda _c, now: seen.append(now)) == []
    assert len(seen) == 2


def test_an_attempt_finishes_on_the_version_it_started_on(database: Database) -> None:
    """Begun on version 1, an attempt keeps version 1's fixed deadline after version 2 (which
    computes it) is registered; new attempts start on version 2."""
    with freeze_time(T0) as clock:
        old = Engine(database, [ticket.spec(1)]).start_sync(FLOW, subject="old", data={})
        both = Engine(database, [ticket.spec(1), ticket.spec(2)])
        new = both.start_sync(FLOW, subject="new", data={"offer_minutes": 5})
        assert (old.flow_version, new.flow_version) == (1, 2)
        old_offer = both.fire_sync(old.id, "offer", params=OFFER).attempt
        new_offer = both.fire_sync(new.id, "offer", params=OFFER).attempt
        assert old_offer.deadline_at == T0 + ticket.OFFER_TTL
        assert new_offer.deadline_at == T0 + timedelta(minutes=5)
        assert both.read_sync(old.id).flow_version == 1
        clock.tick(timedelta(minutes=5))
        assert both.get_sync(new.id).state == "offered"  # exactly at its deadline: still live
        clock.tick(SECOND)
        assert both.get_sync(new.id).state == "lapsed"
        assert both.get_sync(old.id).state == "offered"
    with pytest.raises(UnknownFlow):
        Engine(database, [ticket.spec(2)]).read_sync(old.id)


@pytest.mark.parametrize("how", ["read", "sweep"])
def test_a_deadline_transition_runs_its_effect_whether_read_or_swept(
    engine: Engine, how: str
) -> None:
    """`lapse` out of `held` releases the seat, and records the deadline it applied, the same
    way when a read applies it as when the sweep does."""
    with freeze_time(T0) as clock:
        attempt = held(engine)
        clock.tick(ticket.OFFER_TTL + SECOND)
        if how == "read":
            record = engine.get_sync(attempt.id)
        else:
            assert engine.sweep_sync() == 1
            record = engine.read_sync(attempt.id)
    assert record.state == "lapsed" and record.data["seat_released"] is True
    last = engine.history_sync(attempt.id)[-1]
    deadline = (T0 + ticket.OFFER_TTL).isoformat(timespec="microseconds")
    assert (last.event, last.actor, last.detail) == ("lapse", "system", {"deadline_at": deadline})


def test_the_sweep_records_the_same_detail_set_based_as_one_by_one(engine: Engine) -> None:
    """A set-based sweep (offered: no effect) and a one-by-one one (held: an effect) write the
    same detail as a read: the deadline that was applied."""
    with freeze_time(T0) as clock:
        set_based = offered(engine, "customer-1")
        one_by_one = held(engine, "customer-2")
        clock.tick(ticket.OFFER_TTL + SECOND)
        assert engine.sweep_sync() == 2
    details = {engine.history_sync(a.id)[-1].detail["deadline_at"] for a in (set_based, one_by_one)}
    assert details == {(T0 + ticket.OFFER_TTL).isoformat(timespec="microseconds")}


def test_a_deadline_computed_from_the_attempt_holds_at_both_edges_on_the_sweep(
    database: Database,
) -> None:
    """Version 2's offer lasts the attempt's own number of minutes: the sweep leaves it at its
    deadline and lapses it one second later."""
    engine = Engine(database, [ticket.spec(2)])
    with freeze_time(T0) as clock:
        attempt = engine.start_sync(FLOW, subject="c", data={"offer_minutes": 7})
        engine.fire_sync(attempt.id, "offer", params=OFFER)
        clock.tick(timedelta(minutes=7))
        assert engine.sweep_sync() == 0
        clock.tick(SECOND)
        assert engine.sweep_sync() == 1
    assert engine.read_sync(attempt.id).state == "lapsed"
