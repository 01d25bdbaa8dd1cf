"""One loop for every flow's automatic work: claimed attempts and queued side effects.

Each registered flow declares its `Job`s (attempts waiting in a state) and its
`OutboxHandler`s (side effects its transitions queued). The worker claims
both with a lease, hands each to its handler with the application's context,
and loops until told to stop. A worker that dies leaves its claims to the
others once the lease runs out, so accepted work is never lost; a handler
that fails is logged (its type only: messages can quote stored values) and
its item is claimed again later.

Attempts of one subject run one after another, oldest first, so a handler
sees what its predecessor did; different subjects run side by side, at most
`max_concurrent` at once.

A job that takes its attempts `together` gets them as lists: the first
attempt of each subject, then the second of each, and so on.

`fire_claimed` is what a job uses to record its outcome: it expects the
claim's version (nothing is written if the attempt moved meanwhile), and it
rides out a short database outage within the lease, so work already done
(a message sent) is recorded rather than done again. `fire_claimed_many`
records the outcomes of many claimed attempts in one transaction, with the
same promises for each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError

from engine.core import AttemptRecord, Engine, Fire, InTx
from engine.errors import ConflictError, EngineError, EventRefused
from engine.flow import Handler, Job, OutboxHandler
from engine.tally import ATTEMPTS

log = logging.getLogger(__name__)

MAX_CONCURRENT = 4
# A transition that lost a race to another attempt's writer is tried again this often.
FIRE_RETRIES = 3
# Recording an outcome through a database outage: pauses 0.2 s, 0.4 s, ... up to 2 s.
OUTAGE_FIRST_PAUSE = 0.2
OUTAGE_MAX_PAUSE = 2.0
OUTAGE_MARGIN_SECONDS = 2.0


def describe(exc: BaseException) -> str:
    """A loggable description of an error that cannot carry a stored value."""
    if isinstance(exc, EngineError) or getattr(exc, "safe_to_log", False):
        return f"{type(exc).__name__}: {exc}"
    orig = getattr(exc, "orig", None)
    return f"{type(exc).__name__}({type(orig).__name__})" if orig else type(exc).__name__


def log_failure(what: str, exc: BaseException) -> None:
    log.error("%s failed: %s", what, describe(exc))
    # Where it failed (frames only, never the message): enough to debug.
    log.debug("%s failed at:\n%s", what, "".join(traceback.format_tb(exc.__traceback__)))


def _outage_deadline(engine: Engine, records: Sequence[AttemptRecord]) -> float:
    """Until when (monotonic) recording may be retried: no longer than the shortest of
    the claims lasts (less a margin), so no other worker can claim an attempt meanwhile."""
    now = engine.clock.now()
    held = min(((r.lease_until or now) - now for r in records), default=timedelta())
    return time.monotonic() + held.total_seconds() - OUTAGE_MARGIN_SECONDS


async def fire_claimed(
    engine: Engine,
    record: AttemptRecord,
    event: str,
    *,
    params: Mapping[str, Any] | None = None,
    detail: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    in_tx: InTx | None = None,
) -> bool:
    """Fire on a claimed attempt; whether it was recorded. Never raises a refusal or a lost race.

    The claim's version is expected: if someone else moved the attempt (a
    support agent cancelled it, another worker re-claimed it after our lease
    ran out), nothing is written. A conflict caused by another attempt (one
    being ended in the same transaction) leaves ours untouched and is retried.
    """
    conflicts = 0
    outage_until = _outage_deadline(engine, [record])
    pause = OUTAGE_FIRST_PAUSE
    while conflicts < FIRE_RETRIES:
        try:
            await engine.fire(
                record.id,
                event,
                params=params,
                detail=detail,
                data=data,
                in_tx=in_tx,
                expected_version=record.version,
            )
            log.info("attempt %s: %s", record.id, event)
            return True
        except DBAPIError as exc:
            # The work may be done already (a message sent): recording it must
            # outlast a short outage (a restart), or it is done again once the
            # lease runs out.
            if not exc.connection_invalidated and not isinstance(exc, OperationalError):
                raise
            if time.monotonic() + pause > outage_until:
                raise
            log.warning("attempt %s: database unreachable, %s retried", record.id, event)
            await asyncio.sleep(pause)
            pause = min(pause * 2, OUTAGE_MAX_PAUSE)
        except EventRefused as exc:
            log.info("attempt %s: %s refused in state %s", record.id, event, exc.state)
            return False
        except ConflictError:
            conflicts += 1
            current = await engine.db.run(engine.read_sync, record.id, write=False)
            if current.state != record.state or current.version != record.version:
                log.info("attempt %s changed meanwhile; %s skipped", record.id, event)
                return False
    log.warning("attempt %s: %s kept conflicting; left for the next pass", record.id, event)
    return False


@dataclass(frozen=True)
class Decision:
    """What a job decided for one claimed attempt: the event to record, with its
    params, detail and data (as `fire_claimed` takes them)."""

    record: AttemptRecord
    event: str
    params: Mapping[str, Any] | None = None
    detail: Mapping[str, Any] | None = None
    data: Mapping[str, Any] | None = None


async def fire_claimed_many(engine: Engine, decisions: Sequence[Decision]) -> list[bool]:
    """`fire_claimed` for many claimed attempts in one transaction; whether each was recorded.

    They are fired in the order of their subjects, so two workers firing at
    overlapping subjects take the subjects' locks in one order. A refusal is
    logged and skipped; an attempt that conflicted is fired again alone
    (`fire_claimed`, which tells a lost race from an attempt that moved).
    """
    if not decisions:
        return []
    order = sorted(range(len(decisions)), key=lambda i: decisions[i].record.subject)
    fires = [
        Fire(
            d.record.id,
            d.event,
            params=d.params,
            detail=d.detail,
            data=d.data,
            expected_version=d.record.version,
        )
        for d in (decisions[i] for i in order)
    ]
    outage_until = _outage_deadline(engine, [d.record for d in decisions])
    pause = OUTAGE_FIRST_PAUSE
    while True:
        try:
            outcomes = await engine.db.run(engine.fire_many_sync, fires)
            break
        except DBAPIError as exc:
            if not exc.connection_invalidated and not isinstance(exc, OperationalError):
                raise
            if time.monotonic() + pause > outage_until:
                raise
            log.warning("database unreachable, %d outcomes retried", len(fires))
            await asyncio.sleep(pause)
            pause = min(pause * 2, OUTAGE_MAX_PAUSE)
    recorded = [False] * len(decisions)
    for i, outcome in zip(order, outcomes, strict=True):
        decision = decisions[i]
        record = decision.record
        if isinstance(outcome, ConflictError):
            recorded[i] = await fire_claimed(
                engine,
                record,
                decision.event,
                params=decision.params,
                detail=decision.detail,
                data=decision.data,
            )
        elif isinstance(outcome, EventRefused):
            log.info("attempt %s: %s refused in state %s", record.id, decision.event, outcome.state)
        elif isinstance(outcome, EngineError):
            log.info("attempt %s is gone; %s skipped", record.id, decision.event)
        else:
            log.info("attempt %s: %s", record.id, decision.event)
            recorded[i] = True
    return recorded


def waves(records: Sequence[AttemptRecord]) -> list[list[AttemptRecord]]:
    """Claimed attempts as lists holding at most one per subject, in claim order: the
    first of each subject, then the second of each, and so on."""
    found: list[list[AttemptRecord]] = []
    seen: dict[str, int] = {}
    for record in records:
        n = seen.get(record.subject, 0)
        seen[record.subject] = n + 1
        if n == len(found):
            found.append([])
        found[n].append(record)
    return found


class Worker:
    """Runs the automatic work of every registered flow against one engine."""

    def __init__(
        self,
        engine: Engine,
        context: Any,
        *,
        lease: timedelta,
        poll_seconds: float,
        max_concurrent: int = MAX_CONCURRENT,
        outbox_batch: int = 16,
        batch: int | None = None,
        outbox: Sequence[OutboxHandler] = (),
    ) -> None:
        if max_concurrent < 1 or outbox_batch < 1 or (batch is not None and batch < 1):
            raise ValueError("max_concurrent, outbox_batch and batch must be at least 1")
        self.engine = engine
        self.context = context
        self.lease = lease
        self.poll_seconds = poll_seconds
        self.max_concurrent = max_concurrent
        self.outbox_batch = outbox_batch
        # Claims per pass of each job, when not the batch each job asks for.
        self.batch = batch
        # The application's own side effects (queued with `engine.core.enqueue`), run
        # beside the flows' outbox handlers.
        self.outbox = tuple(outbox)

    def _jobs(self) -> dict[tuple[str, str], int]:
        """(flow, state) to claim in, with the largest batch any version asks for."""
        found: dict[tuple[str, str], int] = {}
        for spec in self.engine.flows.all_versions():
            for job in spec.jobs:
                key = (spec.name, job.state)
                found[key] = max(found.get(key, 0), self.batch or job.batch)
        return found

    def _job_for(self, record: AttemptRecord) -> Job | None:
        spec = self.engine.spec_of(record)
        return next((job for job in spec.jobs if job.state == record.state), None)

    def _outbox_handlers(self) -> dict[str, Handler]:
        """Each outbox kind's handler (the newest version's, where versions differ), and the
        application's own."""
        found = {h.kind: h.run for spec in self.engine.flows.all_versions() for h in spec.outbox}
        found.update({h.kind: h.run for h in self.outbox})
        return found

    # -- the loop ------------------------------------------------------------

    async def run_once(self) -> int:
        """One pass over every job and the outbox; how many items were handled."""
        handled = 0
        for (flow, state), batch in self._jobs().items():
            handled += await self._claimed_batch(flow, state, batch)
        handled += await self._outbox_batch()
        return handled

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set; when idle, wait `poll_seconds`; never crash."""
        while not stop.is_set():
            try:
                handled = await self.run_once()
            except Exception as exc:
                log_failure("work pass", exc)
                handled = 0
            if handled == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_seconds)

    def pending(self) -> int:
        """Attempts waiting in a state with a job (from the running totals: a few rows),
        plus queued side effects not yet done (the outbox's pending index)."""
        totals = self.engine.totals_sync()
        waiting = sum(totals.get((flow, ATTEMPTS, state), 0) for flow, state in self._jobs())
        return waiting + self.engine.queries.outbox_pending_sync(list(self._outbox_handlers()))

    # -- claimed attempts ------------------------------------------------------

    async def _claimed_batch(self, flow: str, state: str, batch: int) -> int:
        claimed = await self.engine.db.run(
            self.engine.claim_sync, flow, state, lease=self.lease, limit=batch
        )
        if not claimed:
            return 0
        together: dict[Job, list[AttemptRecord]] = {}
        alone: list[AttemptRecord] = []
        for record in claimed:
            job = self._job_for(record)
            if job is not None and job.together:
                together.setdefault(job, []).append(record)
            else:
                alone.append(record)
        for job, records in together.items():
            for wave in waves(records):
                try:
                    await job.run(self.context, wave)
                except Exception as exc:
                    # Their leases run out and another pass retries them: nothing is lost.
                    log_failure(f"work on {len(wave)} attempts", exc)
        by_subject: dict[str, list[AttemptRecord]] = {}
        for record in alone:
            by_subject.setdefault(record.subject, []).append(record)
        slots = asyncio.Semaphore(self.max_concurrent)

        async def run(records: list[AttemptRecord]) -> None:
            for record in records:
                async with slots:
                    await self._run_job(record)

        await asyncio.gather(*(run(records) for records in by_subject.values()))
        return len(claimed)

    async def _run_job(self, record: AttemptRecord) -> None:
        job = self._job_for(record)
        if job is None:
            return
        try:
            await job.run(self.context, record)
        except Exception as exc:
            # The lease runs out and another pass retries it: nothing is lost.
            log_failure(f"work on attempt {record.id}", exc)

    # -- the outbox ----------------------------------------------------------------

    async def _outbox_batch(self) -> int:
        handlers = self._outbox_handlers()
        if not handlers:
            return 0
        items = await self.engine.db.run(
            self.engine.outbox_claim_sync,
            list(handlers),
            lease=self.lease,
            limit=self.outbox_batch,
        )
        if not items:
            return 0
        slots = asyncio.Semaphore(self.max_concurrent)

        async def run(item: dict[str, Any]) -> None:
            async with slots:
                try:
                    await handlers[item["kind"]](self.context, item)
                except Exception as exc:
                    log_failure(f"outbox item {item['id']}", exc)

        await asyncio.gather(*(run(item) for item in items))
        return len(items)
