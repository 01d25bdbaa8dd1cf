"""Describing a flow to the engine.

A flow is a strict python-statemachine `StateMachine` class. A `FlowSpec`
names it, versions it, and declares its deadlines per state: when an attempt
enters a state with a deadline, the engine stores `deadline_at`, and once
that time has passed it fires the deadline's event as the system.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from statemachine import StateMachine

from engine.errors import UnknownEvent, UnknownFlow


@dataclass(frozen=True)
class Deadline:
    """Fire `event` once an attempt has sat in a state for `after`.

    With `restart=False`, entering the state keeps a deadline that is already
    running (a link opened at minute 59 still dies at minute 60).
    """

    after: timedelta
    event: str
    restart: bool = True


@dataclass(frozen=True)
class Transition:
    """One arrow of a flow's diagram."""

    source: str
    event: str
    target: str
    guards: tuple[str, ...]


@dataclass(frozen=True)
class FlowSpec:
    """A named, versioned flow definition and its deadlines."""

    name: str
    machine: type[StateMachine]
    version: int = 1
    deadlines: Mapping[str, Deadline] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.machine, type) and issubclass(self.machine, StateMachine)):
            raise TypeError(f"flow {self.name!r}: machine must be a StateMachine subclass")
        if self.machine.allow_event_without_transition or self.machine.catch_errors_as_events:
            raise TypeError(f"flow {self.name!r}: the machine must be strict")
        for state, deadline in self.deadlines.items():
            if state not in self.states:
                raise ValueError(f"flow {self.name!r}: deadline on unknown state {state!r}")
            if self.target_of(state, deadline.event) is None:
                raise ValueError(
                    f"flow {self.name!r}: deadline event {deadline.event!r} has no "
                    f"unguarded transition out of {state!r}"
                )

    @property
    def states(self) -> list[str]:
        return [s.id for s in self.machine.states]

    @property
    def initial_state(self) -> str:
        return next(s.id for s in self.machine.states if s.initial)

    @property
    def final_states(self) -> list[str]:
        return [s.id for s in self.machine.states if s.final]

    @property
    def events(self) -> list[str]:
        return [e.id for e in self.machine.events]

    @property
    def transitions(self) -> list[Transition]:
        found: list[Transition] = []
        for state in self.machine.states:
            for t in state.transitions:
                guards = tuple(str(spec) for spec in t.cond)
                for event in t.event.split():
                    found.append(Transition(state.id, event, t.target.id, guards))
        return found

    def target_of(self, state: str, event: str) -> str | None:
        """The target of the first unguarded transition for `event` out of `state`."""
        for t in self.transitions:
            if t.source == state and t.event == event and not t.guards:
                return t.target
        return None

    def events_from(self, state: str) -> list[str]:
        """Events that have at least one transition out of `state`, in definition order."""
        seen: dict[str, None] = {}
        for t in self.transitions:
            if t.source == state:
                seen.setdefault(t.event)
        return list(seen)

    def check_event(self, event: str) -> None:
        if event not in self.events:
            raise UnknownEvent(self.name, event)

    def describe(self) -> dict[str, Any]:
        """The flow as plain JSON-ready data."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "initial_state": self.initial_state,
            "states": [
                {"name": s.id, "final": bool(s.final), "initial": bool(s.initial)}
                for s in self.machine.states
            ],
            "events": self.events,
            "transitions": [
                {"from": t.source, "event": t.event, "to": t.target, "guards": list(t.guards)}
                for t in self.transitions
            ],
            "deadlines": [
                {
                    "state": state,
                    "after_seconds": int(d.after.total_seconds()),
                    "event": d.event,
                    "restart": d.restart,
                }
                for state, d in self.deadlines.items()
            ],
        }


class FlowRegistry:
    """The flows an engine knows, by name."""

    def __init__(self, specs: Iterable[FlowSpec] = ()) -> None:
        self._specs: dict[str, FlowSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: FlowSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"flow {spec.name!r} registered twice")
        self._specs[spec.name] = spec

    def get(self, name: str) -> FlowSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownFlow(name) from None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._specs.values())

    def names(self) -> list[str]:
        return list(self._specs)
