"""What the engine offers the application around the flows: queuing its own after-commit
work outside any transition, handlers for it in the worker, and rewriting a subject's
attempts so that what identified the subject is gone while their shape stays."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from engine import Engine, OutboxHandler
from engine.core import enqueue
from engine.worker import Worker
from tests.engine.helpers import FLOW, held
from tests.engine.ticket import HOLD

LEASE = timedelta(seconds=30)
NOTE = "app_note"


@dataclass
class Context:
    engine: Engine
    offered: list[str] = field(default_factory=list)
    receipts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)


async def _take_note(context: Context, item: dict[str, Any]) -> None:
    context.notes.append(item["payload"])
    await context.engine.db.run(context.engine.outbox_finish_sync, item["id"])


async def test_work_queued_outside_a_transition_runs_after_commit_with_an_extra_handler(
    engine: Engine,
) -> None:
    """`enqueue` on the application's own transaction queues work for an extra
    `OutboxHandler` given to the worker; a rolled-back transaction queues nothing."""
    now = engine.clock.now()
    with engine.db.transaction() as conn:
        enqueue(conn, NOTE, {"n": 1}, now=now)
    with pytest.raises(RuntimeError), engine.db.transaction() as conn:
        enqueue(conn, NOTE, {"n": 2}, now=now)
        raise RuntimeError("rolled back")
    context = Context(engine)
    plain = Worker(engine, context, lease=LEASE, poll_seconds=0.01)
    assert await plain.run_once() == 0  # nobody handles the kind: left waiting
    assert plain.pending() == 0
    worker = Worker(
        engine, context, lease=LEASE, poll_seconds=0.01, outbox=[OutboxHandler(NOTE, _take_note)]
    )
    assert worker.pending() == 1
    assert await worker.run_once() == 1
    assert context.notes == [{"n": 1}]
    assert await worker.run_once() == 0


def test_rewriting_a_subject_blanks_what_identified_it_and_keeps_the_shape(
    engine: Engine,
) -> None:
    """Every attempt of the subject gets the new subject, the named data and detail keys
    become None, states and events stay (counts unchanged), other subjects are untouched,
    and the version moves on."""
    first = engine.start_sync(
        FLOW, subject="ada", data={"name": "Ada", "seat": 3}, detail={"name": "Ada", "ip": "x"}
    )
    second = held(engine, "ada")
    engine.fire_sync(second.id, "pay", params={**HOLD, "card_ok": True, "amount": 5})
    other = engine.start_sync(FLOW, subject="bob", data={"name": "Bob"}, detail={"name": "Bob"})
    counts = engine.queries.counts_sync()
    before = {a: len(engine.history_sync(a)) for a in (first.id, second.id)}

    rewritten = engine.rewrite_subject_sync(
        "ada", "gone-1", data_keys={FLOW: ["name"]}, detail_keys={FLOW: ["name", "ip"]}
    )

    assert rewritten == 2
    ada = engine.read_sync(first.id)
    assert (ada.subject, dict(ada.data), ada.version) == (
        "gone-1",
        {"name": None, "seat": 3},
        first.version + 1,
    )
    assert engine.history_sync(first.id)[0].detail == {"name": None, "ip": None}
    assert engine.read_sync(second.id).subject == "gone-1"
    assert engine.read_sync(second.id).state == "paid"
    assert {a: len(engine.history_sync(a)) for a in (first.id, second.id)} == before
    assert engine.queries.counts_sync() == counts
    assert engine.queries.page_sync(subject="ada").items == []
    bob = engine.read_sync(other.id)
    assert (bob.subject, dict(bob.data)) == ("bob", {"name": "Bob"})
    assert engine.history_sync(other.id)[0].detail == {"name": "Bob"}
