"""Leasing work: claiming attempts for a worker, and the outbox of after-commit side effects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time

from engine import Database, Engine, Transaction
from tests.engine.helpers import FLOW
from tests.engine.ticket import OFFER

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def test_claim_leases_oldest_first_and_releases_when_the_lease_runs_out(engine: Engine) -> None:
    """A claim takes the oldest waiting attempts; they stay hidden until the lease has passed."""
    with freeze_time(T0) as frozen:
        ids = []
        for i in range(5):
            ids.append(engine.start_sync(FLOW, subject=f"s{i}").id)
            frozen.tick(timedelta(seconds=1))
        claimed_at = T0 + timedelta(seconds=5)

        first = engine.claim_sync(FLOW, "queued", lease=LEASE, limit=3)
        assert [r.id for r in first] == ids[:3]
        assert all(r.lease_until == claimed_at + LEASE for r in first)
        assert [engine.read_sync(i).lease_until for i in ids[:3]] == [claimed_at + LEASE] * 3
        assert [r.id for r in engine.claim_sync(FLOW, "queued", lease=LEASE)] == ids[3:]
        assert engine.claim_sync(FLOW, "queued", lease=LEASE) == []

        frozen.move_to(claimed_at + LEASE)  # exactly at the end: still leased
        assert engine.claim_sync(FLOW, "queued", lease=LEASE) == []
        frozen.tick(timedelta(seconds=1))
        again = engine.claim_sync(FLOW, "queued", lease=LEASE, limit=10)
        assert [r.id for r in again] == ids


def test_claims_only_take_attempts_in_the_asked_state(engine: Engine) -> None:
    """An attempt that moved on is not claimed as waiting; a transition clears its lease."""
    waiting = engine.start_sync(FLOW, subject="a")
    moved = engine.start_sync(FLOW, subject="b")
    [claimed_moved] = [
        r for r in engine.claim_sync(FLOW, "queued", lease=LEASE, limit=10) if r.id == moved.id
    ]
    fired = engine.fire_sync(moved.id, "offer", params=OFFER)
    assert claimed_moved.lease_until is not None and fired.attempt.lease_until is None
    with freeze_time(datetime.now(UTC) + timedelta(minutes=5)):
        assert [r.id for r in engine.claim_sync(FLOW, "queued", lease=LEASE)] == [waiting.id]


def _queue(engine: Engine, kind: str, payload: dict[str, object]) -> None:
    attempt = engine.start_sync(FLOW)

    def hook(tx: Transaction) -> None:
        tx.enqueue(kind, payload)

    engine.fire_sync(attempt.id, "withdraw", in_tx=hook)


def test_outbox_items_are_claimed_once_per_lease_and_finished(
    engine: Engine, database: Database
) -> None:
    """A queued item is leased to one worker, comes back after the lease with its tries
    counted, and is gone once finished."""
    with freeze_time(T0) as frozen:
        _queue(engine, "notify", {"n": 1})
        _queue(engine, "other", {"n": 2})
        assert engine.outbox_pending_sync() == 2

        [item] = engine.outbox_claim_sync(["notify"], lease=LEASE)
        assert (item["kind"], item["payload"], item["tries"]) == ("notify", {"n": 1}, 0)
        assert engine.outbox_claim_sync(["notify"], lease=LEASE) == []

        frozen.tick(LEASE)  # exactly at the end of the lease the item is available again
        [again] = engine.outbox_claim_sync(["notify"], lease=LEASE)
        assert again["id"] == item["id"] and again["tries"] == 1

        engine.outbox_finish_sync(item["id"])
        frozen.tick(timedelta(hours=1))
        assert engine.outbox_claim_sync(["notify"], lease=LEASE) == []
        assert engine.outbox_pending_sync() == 1


def test_a_failed_outbox_item_waits_for_its_retry_time_or_is_given_up(engine: Engine) -> None:
    """An error with a retry time hides the item until then; an error without one ends it."""
    with freeze_time(T0) as frozen:
        _queue(engine, "notify", {})
        [item] = engine.outbox_claim_sync(["notify"], lease=LEASE)
        engine.outbox_finish_sync(item["id"], error="421 try later", retry_at=T0 + LEASE * 4)
        frozen.tick(LEASE * 4 - timedelta(seconds=1))
        assert engine.outbox_claim_sync(["notify"], lease=LEASE) == []
        frozen.tick(timedelta(seconds=1))
        [retry] = engine.outbox_claim_sync(["notify"], lease=LEASE)
        assert retry["last_error"] == "421 try later" and retry["tries"] == 1

        engine.outbox_finish_sync(item["id"], error="550 no such user " + "x" * 1000)
        assert engine.outbox_pending_sync() == 0
        frozen.tick(timedelta(days=1))
        assert engine.outbox_claim_sync(["notify"], lease=LEASE) == []


def test_a_claim_with_a_limit_or_lease_that_is_not_positive_is_refused_before_leasing(
    engine: Engine,
) -> None:
    """limit <= 0 (SQLite reads LIMIT -1 as "all") or lease <= 0 is a ValueError; nothing leased."""
    attempt = engine.start_sync(FLOW)
    for kwargs in (
        {"lease": LEASE, "limit": -1},
        {"lease": LEASE, "limit": 0},
        {"lease": timedelta(0), "limit": 1},
        {"lease": -LEASE, "limit": 1},
    ):
        with pytest.raises(ValueError, match="must be positive"):
            engine.claim_sync(FLOW, "queued", **kwargs)
        with pytest.raises(ValueError, match="must be positive"):
            engine.outbox_claim_sync(["notify"], **kwargs)
    assert engine.read_sync(attempt.id) == attempt
