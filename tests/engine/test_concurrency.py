"""Concurrent writers on one attempt, with real threads and separate connections.

Each thread has its own `Database` (its own connection pool) and calls the
synchronous engine API, so on PostgreSQL the transactions truly overlap and on
SQLite they contend for the file's write lock as separate processes would.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from engine import ConflictError, Database, Engine, EventRefused, Fired, Transaction
from engine.models import Attempt
from tests.engine import ticket
from tests.engine.helpers import FLOW, offered, row_counts
from tests.engine.ticket import HOLD

# Every one of these leads out of `offered` into a final state, so after the
# winner's transition none of the others may apply.
FINAL_EVENTS = ("withdraw", "replace", "lapse")


def _run_together(db_url: str, jobs: list[Callable[[Engine], Any]]) -> list[Any]:
    """Run each job on its own thread and connection, released at the same instant."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)
    databases = [Database(db_url, pool_size=1) for _ in jobs]

    def worker(i: int) -> None:
        engine = Engine(databases[i], [ticket.spec()])
        barrier.wait()
        try:
            results[i] = jobs[i](engine)
        except Exception as exc:  # the outcome under test
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a writer hung"
    finally:
        for db in databases:
            db.close()
    return results


def _firing(attempt_id: uuid.UUID, event: str, actor: str) -> Callable[[Engine], Any]:
    return lambda engine: engine.fire_sync(attempt_id, event, actor=actor)


@pytest.mark.parametrize("writers", [2, 10])
def test_of_concurrent_transitions_exactly_one_wins_and_the_others_write_nothing(
    engine: Engine, database: Database, db_url: str, writers: int
) -> None:
    """N threads fire at one attempt at once: one transition happens; each loser either gets
    ConflictError (wrote nothing) or saw the new state and was refused (wrote only its refusal)."""
    attempt = offered(engine)
    counts = row_counts(database)
    jobs = [
        _firing(attempt.id, FINAL_EVENTS[i % len(FINAL_EVENTS)], f"desk:clerk{i}")
        for i in range(writers)
    ]
    results = _run_together(db_url, jobs)

    winners = [r for r in results if isinstance(r, Fired)]
    conflicts = [r for r in results if isinstance(r, ConflictError)]
    refused = [r for r in results if isinstance(r, EventRefused)]
    assert len(winners) == 1, results
    assert len(winners) + len(conflicts) + len(refused) == writers, results
    assert all(r.reason == "wrong_state" for r in refused)
    final = engine.read_sync(attempt.id)
    assert final.state == winners[0].attempt.state
    assert final.version == attempt.version + 1
    history = engine.history_sync(attempt.id)
    assert [e.event for e in history if e.accepted] == ["start", "offer", winners[0].event.event]
    assert sum(not e.accepted for e in history) == len(refused)
    assert row_counts(database) == {
        **counts,
        "attempt_event": counts["attempt_event"] + 1 + len(refused),
    }


def test_a_writer_that_read_before_another_committed_gets_conflict_or_sees_the_new_state(
    engine: Engine, database: Database, db_url: str, backend: str
) -> None:
    """While one transition is open, a second writer on PostgreSQL reads the old version and gets
    ConflictError at its update (nothing written); SQLite's single writer makes it wait and see
    the new state instead, so it is refused."""
    attempt = offered(engine)
    inside = threading.Event()

    def slow_hook(tx: Transaction) -> None:
        inside.set()
        # Hold the transaction open (row updated, not committed) while the other writer runs.
        time.sleep(0.5)

    first_db = Database(db_url, pool_size=1)
    first: list[Any] = []
    holder = threading.Thread(
        target=lambda: first.append(
            Engine(first_db, [ticket.spec()]).fire_sync(attempt.id, "withdraw", in_tx=slow_hook)
        )
    )
    holder.start()
    assert inside.wait(10)
    counts = row_counts(database)
    if backend == "postgresql":
        with pytest.raises(ConflictError) as error:
            engine.fire_sync(attempt.id, "replace")
        assert (error.value.attempt_id, error.value.event) == (attempt.id, "replace")
        assert error.value.code == "conflict"
        holder.join(10)
        assert row_counts(database) == {**counts, "attempt_event": counts["attempt_event"] + 1}
    else:
        with pytest.raises(EventRefused, match="wrong_state"):
            engine.fire_sync(attempt.id, "replace")
        holder.join(10)
    first_db.close()
    assert isinstance(first[0], Fired)
    assert engine.read_sync(attempt.id).state == "withdrawn"


def test_a_fire_expecting_a_stale_version_is_a_conflict_and_writes_nothing(
    engine: Engine, database: Database
) -> None:
    """A caller who read version v and fires after someone else moved the attempt is refused
    with ConflictError, and no row changes."""
    attempt = offered(engine)
    engine.fire_sync(attempt.id, "hold", params=HOLD)
    counts = row_counts(database)
    before = engine.read_sync(attempt.id)
    with pytest.raises(ConflictError):
        engine.fire_sync(attempt.id, "withdraw", expected_version=attempt.version)
    assert engine.read_sync(attempt.id) == before
    assert row_counts(database) == counts
    fired = engine.fire_sync(attempt.id, "withdraw", expected_version=before.version)
    assert fired.attempt.version == before.version + 1


def test_note_merges_facts_under_the_optimistic_lock(engine: Engine, database: Database) -> None:
    """note_sync adds data without a transition; with a stale version it is a conflict and
    changes nothing."""
    attempt = engine.start_sync(FLOW, data={"a": 1})
    noted = engine.note_sync(
        attempt.id, data={"b": 2}, lease_until=None, expected_version=attempt.version
    )
    assert noted.data == {"a": 1, "b": 2} and noted.version == attempt.version + 1
    assert engine.read_sync(attempt.id) == noted
    counts = row_counts(database)
    with pytest.raises(ConflictError):
        engine.note_sync(attempt.id, data={"c": 3}, lease_until=None, expected_version=1)
    assert engine.read_sync(attempt.id) == noted
    assert row_counts(database) == counts


def test_two_concurrent_claimers_get_disjoint_sets(
    engine: Engine, database: Database, db_url: str
) -> None:
    """Two workers claiming at the same instant never lease the same attempt."""
    ids = {engine.start_sync(FLOW, subject=f"s{i}").id for i in range(10)}
    results = _run_together(
        db_url,
        [
            lambda e: e.claim_sync(FLOW, "queued", lease=timedelta(minutes=1), limit=5)
            for _ in range(2)
        ],
    )
    first, second = ({r.id for r in claimed} for claimed in results)
    assert not first & second
    assert first | second == ids


def test_postgresql_claims_skip_rows_another_worker_holds(
    engine: Engine, database: Database, backend: str
) -> None:
    """On PostgreSQL a claim does not wait for rows locked by another worker: it takes the rest
    at once (FOR UPDATE SKIP LOCKED)."""
    if backend != "postgresql":
        pytest.skip("SQLite has a single writer; SKIP LOCKED is PostgreSQL's")
    ids = [engine.start_sync(FLOW, subject=f"s{i}").id for i in range(6)]
    other = Database(database.url, pool_size=1)
    try:
        with other.transaction() as conn:
            attempts = Attempt.__table__
            conn.execute(
                select(attempts.c.id).where(attempts.c.id.in_(ids[:2])).with_for_update()
            ).all()
            started = time.perf_counter()
            claimed = engine.claim_sync(FLOW, "queued", lease=timedelta(minutes=1), limit=10)
            waited = time.perf_counter() - started
    finally:
        other.close()
    assert {r.id for r in claimed} == set(ids[2:])
    assert waited < 2.0
