"""The machines the engine decides with, kept from one fire to the next.

Building a python-statemachine machine resolves every callback its class
names, one by one (about 0.6 ms for a flow of a dozen arrows, twice what
taking the event then costs). A machine is bound to its model object for
life, so `Machines` keeps each machine with its own model: a fire loads the
attempt's row into the model, the machine takes the event, and the pair is
kept for the next fire of the same flow version.

A machine is kept only when it is known to be as a new one would be: it took
the event or refused it (python-statemachine empties its queues either way),
and it is still running (one that entered a top-level final state takes no
more events). A machine whose callback raised is dropped. A fire made from
inside another's effect (a journey ending others) takes another machine, so
a machine is never used by two fires at once, on one thread or several.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from statemachine import StateMachine
from statemachine.exceptions import TransitionNotAllowed

from engine.records import AttemptRecord

# Machines kept per machine class: the database threads times the depth of nested fires.
KEPT_PER_CLASS = 8


class Model:
    """The object a machine is bound to: a copy of the row the flow may read."""

    def __init__(self, record: AttemptRecord, now: datetime) -> None:
        self.load(record, now)

    def load(self, record: AttemptRecord, now: datetime) -> None:
        """Become a copy of a row (the machine bound to it then stands in its state)."""
        self.id: uuid.UUID = record.id
        self.state: str = record.state
        self.subject: str = record.subject
        self.created_at: datetime = record.created_at
        self.deadline_at: datetime | None = record.deadline_at
        self.now: datetime = now
        self.data: dict[str, Any] = dict(record.data)


class Machines:
    """Machines and their models, kept by machine class; safe to share between threads."""

    def __init__(self, keep: int = KEPT_PER_CLASS) -> None:
        self.keep = keep
        self._kept: dict[type[StateMachine], list[tuple[StateMachine, Model]]] = {}

    def decide(
        self,
        machine_class: type[StateMachine],
        record: AttemptRecord,
        now: datetime,
        event: str,
        params: Mapping[str, Any],
    ) -> str | None:
        """Let a machine standing in the row's state take `event` (its callbacks run now);
        the state it reached, or None if it refused. A callback's exception propagates."""
        kept = self._kept.setdefault(machine_class, [])
        try:
            # list.pop and list.append are atomic: two threads never get one machine.
            machine, model = kept.pop()
        except IndexError:
            model = Model(record, now)
            machine = machine_class(model=model, state_field="state")
        else:
            model.load(record, now)
        try:
            machine.send(event, **params)
        except TransitionNotAllowed:
            target = None
        else:
            target = model.state
        if not machine.is_terminated and len(kept) < self.keep:
            kept.append((machine, model))
        return target

    def kept(self, machine_class: type[StateMachine]) -> int:
        """How many machines of the class wait for a fire."""
        return len(self._kept.get(machine_class, ()))
