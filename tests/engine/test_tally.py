"""The flows' running totals equal what counting the tables gives, after every kind of
write the engine makes, on SQLite and PostgreSQL, concurrent writers included."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import case, func, select

from engine import Database, Engine, EventRefused
from engine.models import Attempt, AttemptEvent, FlowTally
from tests.engine.helpers import FLOW, held, offered
from tests.engine.ticket import HOLD, OFFER

attempt_t = Attempt.__table__
event_t = AttemptEvent.__table__


def _counted(database: Database) -> dict[tuple[str, str, str], int]:
    """The totals the slow way: the attempt table and the whole event log, grouped."""
    kind = case((event_t.c.accepted, "accepted"), else_="refused")
    with database.transaction(write=False) as conn:
        states = conn.execute(
            select(attempt_t.c.flow, attempt_t.c.state, func.count()).group_by(
                attempt_t.c.flow, attempt_t.c.state
            )
        ).all()
        events = conn.execute(
            select(attempt_t.c.flow, kind, event_t.c.event, func.count())
            .select_from(event_t.join(attempt_t, attempt_t.c.id == event_t.c.attempt_id))
            .group_by(attempt_t.c.flow, kind, event_t.c.event)
        ).all()
    found = {(flow, "attempts", state): n for flow, state, n in states}
    found.update({(flow, k, event): n for flow, k, event, n in events})
    return found


def _nonzero(totals: dict[tuple[str, str, str], int]) -> dict[tuple[str, str, str], int]:
    return {key: value for key, value in totals.items() if value}


def test_the_totals_follow_every_kind_of_write(engine: Engine, database: Database) -> None:
    """Starts, transitions, refusals, self-transitions, fires inside another's transaction,
    deadlines applied lazily on read and on fire, and the bulk sweep all keep the totals
    equal to the counts."""
    with freeze_time("2026-11-30 09:00:00") as clock:
        opened = held(engine, "a")
        engine.fire_sync(opened.id, "hold", params=HOLD)  # held -> itself
        refused = engine.start_sync(FLOW, subject="b")
        with pytest.raises(EventRefused):
            engine.fire_sync(refused.id, "hold", params=HOLD)  # wrong state
        older = offered(engine, "c")
        newer = engine.start_sync(FLOW, subject="c")
        engine.fire_sync(newer.id, "offer", params=OFFER)  # the group rule replaces the older
        assert engine.read_sync(older.id).state == "replaced"
        for subject in ("d", "e", "f"):
            offered(engine, subject)
        lazily = offered(engine, "g")
        on_fire = offered(engine, "h")
        clock.tick(timedelta(hours=2))
        engine.get_sync(lazily.id)  # read: the deadline is applied
        with pytest.raises(EventRefused):
            engine.fire_sync(on_fire.id, "hold", params=HOLD)  # expired, then refused
        assert engine.sweep_sync(batch_size=2) >= 3
    totals = engine.totals_sync()
    assert _nonzero(totals) == _nonzero(_counted(database))
    assert totals[(FLOW, "accepted", "start")] == 9
    assert totals[(FLOW, "refused", "hold")] == 2


def test_concurrent_writers_keep_the_totals_exact(engine: Engine, database: Database) -> None:
    """Sixteen threads moving their own attempts at once (PostgreSQL: each transaction adds
    to the same total rows) neither deadlock nor lose an update."""
    records = [engine.start_sync(FLOW, subject=f"s{i}") for i in range(48)]

    def walk(record_id: object) -> Counter[str]:
        engine.fire_sync(record_id, "offer", params=OFFER)  # type: ignore[arg-type]
        engine.fire_sync(record_id, "hold", params=HOLD)  # type: ignore[arg-type]
        return Counter(done=1)

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(walk, r.id) for r in records]
        done = sum((f.result() for f in futures), Counter())
    assert done["done"] == 48
    totals = engine.totals_sync()
    assert _nonzero(totals) == _nonzero(_counted(database))
    assert totals[(FLOW, "attempts", "held")] == 48
    with database.transaction(write=False) as conn:
        shards = set(conn.execute(select(FlowTally.__table__.c.shard)).scalars())
    # PostgreSQL: the threads added to rows of their own (no queue on one row's lock);
    # SQLite, one writer at a time: one row per total.
    assert len(shards) > 1 if not database.is_sqlite else shards == {0}
