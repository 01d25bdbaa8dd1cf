"""The machines the engine keeps between fires decide as new ones would."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from statemachine import State, StateMachine

from engine import Engine
from engine.machines import Machines
from engine.records import AttemptRecord
from tests.engine.helpers import FLOW
from tests.engine.ticket import OFFER, Ticket

T0 = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)


class Door(StateMachine):
    """A door that opens for the key its row holds, and can be bricked up for good."""

    shut = State(initial=True)
    open = State()
    bricked = State(final=True)

    turn = shut.to(open, cond="right_key") | open.to(shut, cond="right_key")
    brick = shut.to(bricked, on="lay_bricks")
    knock = shut.to.itself(on="answer")

    def right_key(self, typed: str = "") -> bool:
        return typed == self.model.data["key"]

    def lay_bricks(self, trouble: bool = False, also: Any = None) -> None:
        if trouble:
            raise RuntimeError("the mortar ran out")
        if also is not None:
            also()

    def answer(self, also: Any = None) -> None:
        if also is not None:
            also()


def _row(state: str = "shut", key: str = "k1", subject: str = "front") -> AttemptRecord:
    return AttemptRecord(
        id=uuid.uuid4(),
        flow="door",
        flow_version=1,
        subject=subject,
        state=state,
        version=1,
        created_at=T0,
        updated_at=T0,
        deadline_at=None,
        lease_until=None,
        data={"key": key},
    )


def test_a_kept_machine_decides_from_the_row_it_is_given_not_the_last_one() -> None:
    """One machine serves fire after fire, each time in the new row's state and with its
    data, and a refusal leaves it as good as new."""
    machines = Machines()
    assert machines.decide(Door, _row(key="k1"), T0, "turn", {"typed": "k1"}) == "open"
    assert machines.kept(Door) == 1
    # Another row, in another state, with another key: the last row's answers do not count.
    assert (
        machines.decide(Door, _row(state="open", key="k2"), T0, "turn", {"typed": "k2"}) == "shut"
    )
    assert machines.decide(Door, _row(key="k3"), T0, "turn", {"typed": "k1"}) is None
    assert machines.decide(Door, _row(key="k3"), T0, "turn", {"typed": "k3"}) == "open"
    assert machines.decide(Door, _row(state="open"), T0, "brick", {}) is None
    assert machines.kept(Door) == 1


def test_a_machine_that_stopped_or_whose_effect_raised_is_not_kept() -> None:
    """A machine that entered a final state takes no more events, and one whose effect
    raised may be half way: neither serves another fire."""
    machines = Machines()
    assert machines.decide(Door, _row(), T0, "brick", {}) == "bricked"
    assert machines.kept(Door) == 0
    with pytest.raises(RuntimeError):
        machines.decide(Door, _row(), T0, "brick", {"trouble": True})
    assert machines.kept(Door) == 0
    assert machines.decide(Door, _row(), T0, "turn", {"typed": "k1"}) == "open"
    assert machines.kept(Door) == 1


def test_a_fire_inside_an_effect_takes_a_machine_of_its_own() -> None:
    """An effect that fires on another row (a journey ending others) never borrows the
    machine that is running it."""
    machines = Machines()
    machines.decide(Door, _row(), T0, "turn", {"typed": "k1"})
    inner: list[str | None] = []

    def also() -> None:
        inner.append(machines.decide(Door, _row(key="k9"), T0, "turn", {"typed": "k9"}))

    assert machines.decide(Door, _row(), T0, "brick", {"also": also}) == "bricked"
    assert inner == ["open"]
    # The outer machine stopped (bricked); the one the inner fire built was kept.
    assert machines.kept(Door) == 1


def test_threads_sharing_the_machines_each_get_their_own_answers() -> None:
    """Four threads deciding at once, each on rows of its own keys, get exactly the answers
    a new machine per fire would give."""
    machines = Machines()
    wrong: list[tuple[int, int]] = []
    start = threading.Barrier(4)

    def work(n: int) -> None:
        start.wait()
        for i in range(300):
            key = f"{n}-{i}"
            typed = key if i % 3 else "nope"
            expected = "open" if i % 3 else None
            if machines.decide(Door, _row(key=key), T0, "turn", {"typed": typed}) != expected:
                wrong.append((n, i))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    assert 1 <= machines.kept(Door) <= 4


def test_no_more_machines_are_kept_than_the_limit() -> None:
    """Four fires nested in each other's effects need four machines; two are kept."""
    machines = Machines(keep=2)
    answered: list[str | None] = []

    def knock(depth: int) -> None:
        also = (lambda: knock(depth - 1)) if depth else None
        answered.append(machines.decide(Door, _row(), T0, "knock", {"also": also}))

    knock(3)
    assert answered == ["shut"] * 4
    assert machines.kept(Door) == 2


def test_the_engine_keeps_its_machines_between_fires(engine: Engine) -> None:
    """Fire after fire on the engine reuses one machine per flow version, and each
    attempt still moves by its own facts."""
    first = engine.start_sync(FLOW, subject="a")
    second = engine.start_sync(FLOW, subject="b")
    assert engine.fire_sync(first.id, "offer", params=OFFER).attempt.state == "offered"
    assert engine.machines.kept(Ticket) == 1
    full = {**OFFER, "full": True}
    assert engine.fire_sync(second.id, "offer", params=full).attempt.state == "waitlisted"
    # The waitlisted machine stopped; the next fire builds one and keeps it.
    assert engine.machines.kept(Ticket) == 0
    assert engine.fire_sync(first.id, "hold", params={"code_ok": True}).attempt.state == "held"
    assert engine.machines.kept(Ticket) == 1
