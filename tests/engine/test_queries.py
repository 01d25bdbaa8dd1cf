"""The engine's read API: pages, counts, event-log windows, duplicates and the funnel."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time

from engine import Engine
from tests.engine.helpers import FLOW, held, offered
from tests.engine.ticket import HOLD, OFFER

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def test_pages_walk_every_attempt_once_newest_first_with_filters(engine: Engine) -> None:
    """Keyset pages cover each matching attempt exactly once, newest first; each filter holds."""
    made = []
    with freeze_time(T0) as clock:
        for i in range(7):
            made.append(engine.start_sync(FLOW, subject=f"c{i % 2}"))
            clock.tick(1)
        engine.fire_sync(made[0].id, "withdraw")
    seen, key = [], None
    while True:
        page = engine.queries.page_sync(limit=3, after=key)
        seen += [a.id for a in page.items]
        key = page.next_key
        if key is None:
            break
    assert seen == [a.id for a in reversed(made)]
    only_c1 = engine.queries.page_sync(subject="c1", limit=50).items
    assert {a.subject for a in only_c1} == {"c1"} and len(only_c1) == 3
    window = engine.queries.page_sync(
        created_since=T0 + timedelta(seconds=2), created_until=T0 + timedelta(seconds=4)
    ).items
    assert [a.id for a in window] == [made[3].id, made[2].id]
    assert [a.id for a in engine.queries.page_sync(states=["withdrawn"]).items] == [made[0].id]
    assert engine.queries.page_sync(flows=["another"]).items == []
    target = made[4].id
    assert [a.id for a in engine.queries.page_sync(id_between=(target, target)).items] == [target]


async def test_the_async_page_awaits_the_same_query(engine: Engine) -> None:
    """`await queries.page(...)` answers what `page_sync` does."""
    attempt = engine.start_sync(FLOW, subject="c")
    page = await engine.queries.page(subject="c")
    assert [a.id for a in page.items] == [attempt.id] and page.next_key is None


def test_a_page_limit_that_is_not_positive_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="limit"):
        engine.queries.page_sync(limit=0)


def test_counts_are_per_flow_and_state_in_a_creation_window(engine: Engine) -> None:
    with freeze_time(T0) as clock:
        offered(engine, "a")
        held(engine, "b")
        clock.tick(timedelta(hours=1))
        engine.start_sync(FLOW, subject="c")
    assert engine.queries.counts_sync() == {
        (FLOW, "offered"): 1,
        (FLOW, "held"): 1,
        (FLOW, "queued"): 1,
    }
    assert engine.queries.counts_sync(until=T0 + timedelta(minutes=1)) == {
        (FLOW, "offered"): 1,
        (FLOW, "held"): 1,
    }
    assert engine.queries.waiting_sync(FLOW, "queued") == 1


def test_event_windows_count_a_subjects_accepted_events_since_a_time(engine: Engine) -> None:
    """What a throttle counts: accepted `offer`s into given states, fired after `since`."""
    with freeze_time(T0) as clock:
        first = offered(engine, "a")
        clock.tick(timedelta(minutes=30))
        second = engine.start_sync(FLOW, subject="a")
        engine.fire_sync(second.id, "offer", params={**OFFER, "full": True})
        offered(engine, "b")

        def count(**kw: object) -> int:
            base = {
                "flow": FLOW,
                "subject": "a",
                "event": "offer",
                "to_states": ["offered", "waitlisted"],
                "since": T0 - timedelta(minutes=1),
            }
            return engine.queries.count_events_sync(**{**base, **kw})  # type: ignore[arg-type]

        assert count() == 2
        assert count(to_states=["offered"]) == 1
        assert count(since=T0 + timedelta(minutes=1)) == 1
        assert count(exclude=first.id) == 1
        assert count(created_since=T0 + timedelta(minutes=1)) == 1
        assert count(subject="nobody") == 0


def test_a_predecessor_is_another_attempt_started_shortly_before(engine: Engine) -> None:
    """Within the window before it, the second of a subject's attempts has a predecessor and
    the first has none; of two started in the same instant, exactly one has."""
    with freeze_time(T0) as clock:
        first = engine.start_sync(FLOW, subject="a")
        clock.tick(10)
        second = engine.start_sync(FLOW, subject="a")
        clock.tick(100)
        third = engine.start_sync(FLOW, subject="a")
        twins = [engine.start_sync(FLOW, subject="b", attempt_id=uuid.UUID(int=n)) for n in (2, 1)]
    within = timedelta(seconds=60)
    assert not engine.queries.has_predecessor_sync(first, within)
    assert engine.queries.has_predecessor_sync(second, within)
    assert not engine.queries.has_predecessor_sync(third, within)
    assert [engine.queries.has_predecessor_sync(t, within) for t in twins] == [True, False]


def test_the_funnel_counts_each_step_reached_and_the_median_time_between(
    engine: Engine,
) -> None:
    with freeze_time(T0) as clock:
        a = engine.start_sync(FLOW, subject="a")
        b = engine.start_sync(FLOW, subject="b")
        engine.start_sync(FLOW, subject="c")
        clock.tick(10)
        engine.fire_sync(a.id, "offer", params=OFFER)
        engine.fire_sync(b.id, "offer", params=OFFER)
        clock.tick(30)
        engine.fire_sync(a.id, "hold", params=HOLD)
    steps = engine.queries.funnel_sync(
        FLOW, ("queued", "offered", "held"), T0 - timedelta(hours=1), T0 + timedelta(hours=1)
    )
    assert [(s.step, s.count, s.conversion, s.median_seconds) for s in steps] == [
        ("queued", 3, None, None),
        ("offered", 2, 0.6667, 10.0),
        ("held", 1, 0.5, 30.0),
    ]


def test_transition_counts_are_per_flow_event_and_outcome(engine: Engine) -> None:
    attempt = offered(engine)
    with pytest.raises(Exception, match="refused"):
        engine.fire_sync(attempt.id, "sit")
    counts = {(f, e, ok): n for f, e, ok, n in engine.queries.transition_counts_sync()}
    assert counts == {(FLOW, "start", True): 1, (FLOW, "offer", True): 1, (FLOW, "sit", False): 1}
