"""The worker runs every registered flow's automatic work: claimed attempts, then the outbox."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from engine import Engine
from engine.worker import Worker, fire_claimed
from tests.engine.helpers import FLOW, held
from tests.engine.ticket import HOLD, OFFER

LEASE = timedelta(seconds=30)


@dataclass
class Context:
    """What the ticket flow's handlers get: the engine, and where they record what they did."""

    engine: Engine
    offered: list[str] = field(default_factory=list)
    receipts: list[dict[str, Any]] = field(default_factory=list)


def _worker(engine: Engine) -> tuple[Worker, Context]:
    context = Context(engine)
    return Worker(engine, context, lease=LEASE, poll_seconds=0.01, max_concurrent=2), context


async def test_a_pass_runs_each_waiting_attempts_job_and_each_queued_side_effect(
    engine: Engine,
) -> None:
    """Queued bookings are offered (their job fires `offer`), and the receipt a payment queued
    is sent after its transition committed; a second pass finds nothing left."""
    worker, context = _worker(engine)
    queued = [engine.start_sync(FLOW, subject=f"c{i}") for i in range(3)]
    paying = held(engine, "payer")
    engine.fire_sync(paying.id, "pay", params={**HOLD, "card_ok": True, "amount": 9})
    assert worker.pending() == 4
    assert await worker.run_once() == 4
    assert sorted(context.offered) == ["c0", "c1", "c2"]
    assert {engine.read_sync(a.id).state for a in queued} == {"offered"}
    assert context.receipts == [{"amount": 9}]
    assert worker.pending() == 0
    assert await worker.run_once() == 0


async def test_attempts_of_one_subject_run_one_after_another_oldest_first(engine: Engine) -> None:
    """Two queued bookings of one customer: the older is offered first, then the newer replaces
    it (the one-live rule), so exactly one offer is live."""
    worker, _ = _worker(engine)
    older = engine.start_sync(FLOW, subject="same")
    newer = engine.start_sync(FLOW, subject="same")
    await worker.run_once()
    assert engine.read_sync(older.id).state == "replaced"
    assert engine.read_sync(newer.id).state == "offered"


async def test_a_claimed_attempt_that_moved_meanwhile_is_left_alone(engine: Engine) -> None:
    """`fire_claimed` expects the claim's version: a booking withdrawn after it was claimed is
    not offered, and nothing is raised."""
    attempt = engine.start_sync(FLOW, subject="c")
    [claim] = engine.claim_sync(FLOW, "queued", lease=LEASE)
    engine.fire_sync(attempt.id, "withdraw")
    assert await fire_claimed(engine, claim, "offer", params=OFFER) is False
    assert engine.read_sync(attempt.id).state == "withdrawn"


async def test_run_forever_works_until_stopped(engine: Engine) -> None:
    """The loop keeps handling work as it arrives and returns once stop is set."""
    worker, context = _worker(engine)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run_forever(stop))
    engine.start_sync(FLOW, subject="late")
    for _ in range(200):
        if context.offered:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert context.offered == ["late"]
