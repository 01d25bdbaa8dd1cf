"""A test-only flow for the engine's own tests: booking a seat.

It has the shapes the engine must carry, and nothing of any product flow:
guarded branches out of one event (`offer`), a self-transition (`hold`),
deadlines on three states (one not restarted), an exclusive group (one live
offer per customer: a newer one replaces the older), effects that write the
attempt's data and queue outbox work, an effect on a deadline transition,
and a version 2 whose offer lasts as long as the attempt's data says.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from statemachine import State, StateMachine

from engine import Deadline, Exclusive, FlowSpec, Job, OutboxHandler
from engine.worker import fire_claimed

NAME = "ticket"
GROUP = "seat"
RECEIPT = "receipt"
QUEUE_TTL = timedelta(hours=24)
OFFER_TTL = timedelta(minutes=60)

# Facts that take each event down its main arrow.
OFFER = {"full": False, "customer_known": True, "seat_free": True}
HOLD = {"code_ok": True}


class Ticket(StateMachine):
    """One booking."""

    queued = State(initial=True)
    offered = State()
    held = State()
    paid = State()
    seated = State(final=True)
    lapsed = State(final=True)
    withdrawn = State(final=True)
    replaced = State(final=True)
    refused = State(final=True)
    waitlisted = State(final=True)
    unreachable = State(final=True)

    offer = (
        queued.to(waitlisted, cond="full")
        | queued.to(refused, cond="unknown_customer")
        | queued.to(offered, cond="seat_free")
    )
    fail = queued.to(unreachable)
    hold = offered.to(held, cond="code_ok") | held.to.itself(cond="code_ok")
    pay = held.to(paid, cond=["code_ok", "card_ok"], on="charge")
    sit = paid.to(seated, cond="at_gate")
    lapse = queued.to(lapsed) | offered.to(lapsed) | held.to(lapsed, on="release_seat")
    withdraw = queued.to(withdrawn) | offered.to(withdrawn) | held.to(withdrawn)
    replace = offered.to(replaced) | held.to(replaced)

    # -- guards ----------------------------------------------------------
    def full(self, full: bool = False) -> bool:
        return full

    def unknown_customer(self, customer_known: bool = False) -> bool:
        return not customer_known

    def seat_free(self, seat_free: bool = False) -> bool:
        return seat_free

    def code_ok(self, code_ok: bool = False) -> bool:
        return code_ok

    def card_ok(self, card_ok: bool = False) -> bool:
        return card_ok

    def at_gate(self, at_gate: bool = False) -> bool:
        return at_gate

    # -- effects (in the transition's transaction) -----------------------
    def charge(self, tx: Any, amount: int = 0) -> None:
        if amount < 0:
            raise ValueError("a charge cannot be negative")
        tx.data["charged"] = amount
        tx.enqueue(RECEIPT, {"amount": amount})

    def release_seat(self, tx: Any) -> None:
        tx.data["seat_released"] = True


class TicketV2(Ticket):
    """Version 2: an offer lasts as many minutes as the booking's `offer_minutes` says."""


def _offer_lasts(attempt: Any) -> timedelta:
    return timedelta(minutes=int(attempt.data.get("offer_minutes", 60)))


# -- automatic work (a worker runs it; the context has `engine` and lists to record in) --


async def offer_seat(context: Any, attempt: Any) -> None:
    """A queued booking is offered a seat."""
    context.offered.append(attempt.subject)
    await fire_claimed(context.engine, attempt, "offer", params=OFFER)


async def send_receipt(context: Any, item: Any) -> None:
    """A receipt queued by `pay` is sent once its transition committed."""
    context.receipts.append(item["payload"])
    await context.engine.db.run(context.engine.outbox_finish_sync, item["id"])


def spec(version: int = 1) -> FlowSpec:
    """Version 1, or version 2 with an offer deadline computed per booking."""
    return FlowSpec(
        name=NAME,
        machine=Ticket if version == 1 else TicketV2,
        version=version,
        description="Book a seat: queue, offer, hold, pay, sit down.",
        deadlines={
            "queued": Deadline(QUEUE_TTL, "lapse"),
            "offered": Deadline(OFFER_TTL if version == 1 else _offer_lasts, "lapse"),
            # Holding the seat does not extend the offer.
            "held": Deadline(OFFER_TTL, "lapse", restart=False),
        },
        exclusive=Exclusive(GROUP, live=("offered", "held"), end_event="replace"),
        funnel=("queued", "offered", "held", "paid", "seated"),
        jobs=(Job("queued", offer_seat),),
        outbox=(OutboxHandler(RECEIPT, send_receipt),),
    )
