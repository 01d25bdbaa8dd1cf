"""Describing a flow to the engine.

A flow is a strict python-statemachine `StateMachine` class. A `FlowSpec`
names it, versions it, and declares what the engine must know beyond the
machine:

- its deadlines per state: entering a state with a deadline stores
  `deadline_at` (a fixed duration, or one computed from the attempt), and once
  that time has passed the engine fires the deadline's event as the system;
- its place in a rule across flows (`Exclusive`): at most one live attempt per
  subject among the flows of one group, older ones ended by an event;
- its funnel (the main path, for statistics);
- its automatic work (`Job`: attempts waiting in a state, claimed by a worker;
  `OutboxHandler`: side effects queued by its transitions);
- its hooks: callables the application calls by name at moments of its own
  (the engine never calls them), so the code around the engine can iterate
  the registered flows instead of naming them.

What a transition does is the machine's business: a callback named on the
transition (`a.to(b, on="effect")`), or found by name (`on_<event>`), runs
inside the transition's database transaction and receives it as `tx`.

Several versions of one flow can be registered: an attempt keeps the
version it started on, new attempts start on the newest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Any

from statemachine import StateMachine

from engine.errors import UnknownEvent, UnknownFlow

# What a deadline's duration may be computed from: the attempt (an `AttemptRecord`).
DurationOf = Callable[[Any], timedelta]


@dataclass(frozen=True)
class Deadline:
    """Fire `event` once an attempt has sat in a state for `after`.

    `after` is a duration, or a function of the attempt that returns one (a
    waiting period that depends on the attempt's data). With `restart=False`,
    entering the state keeps a deadline that is already running (a link
    opened at minute 59 still dies at minute 60).
    """

    after: timedelta | DurationOf
    event: str
    restart: bool = True

    @property
    def fixed(self) -> timedelta | None:
        """The duration when it is the same for every attempt, else None."""
        return self.after if isinstance(self.after, timedelta) else None

    def duration(self, attempt: Any) -> timedelta:
        """How long `attempt` may stay in the state."""
        return self.after if isinstance(self.after, timedelta) else self.after(attempt)


@dataclass(frozen=True)
class Exclusive:
    """At most one live attempt per subject among the flows that share `group`.

    When an attempt of the group becomes live (enters one of its flow's
    `live` states), or when something ends every journey of a subject, the
    others still live are sent `end_event`.
    """

    group: str
    live: tuple[str, ...]
    end_event: str


Handler = Callable[[Any, Any], Awaitable[None]]


@dataclass(frozen=True)
class Job:
    """Automatic work: attempts waiting in `state` are claimed and handed to `run`.

    `run(context, attempt)` receives the application's context and the claimed
    attempt (an `AttemptRecord` whose lease is held); it fires the next event
    itself. An attempt it leaves unfinished is claimed again when the lease ends.

    With `together`, `run(context, attempts)` receives a list of claimed
    attempts at once, at most one per subject (a subject's later attempts come
    in the next list, once the earlier one is done), so it can look them up,
    decide and record their outcomes in a few round trips for all of them
    (`engine.worker.fire_claimed_many`) rather than a few each.
    """

    state: str
    run: Handler
    batch: int = 16
    together: bool = False


@dataclass(frozen=True)
class OutboxHandler:
    """A side effect a transition queued (`tx.enqueue(kind, ...)`), run after it committed.

    `run(context, item)` receives the application's context and the claimed
    `OutboxItem`; it reports the outcome with `Engine.outbox_finish_sync`.
    """

    kind: str
    run: Handler


@dataclass(frozen=True)
class Transition:
    """One arrow of a flow's diagram."""

    source: str
    event: str
    target: str
    guards: tuple[str, ...]
    effects: tuple[str, ...] = ()


@dataclass(frozen=True)
class FlowSpec:
    """A named, versioned flow definition and what the engine must know about it."""

    name: str
    machine: type[StateMachine]
    version: int = 1
    deadlines: Mapping[str, Deadline] = field(default_factory=dict)
    description: str = ""
    exclusive: Exclusive | None = None
    funnel: tuple[str, ...] = ()
    jobs: tuple[Job, ...] = ()
    outbox: tuple[OutboxHandler, ...] = ()
    hooks: Mapping[str, Callable[..., Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (isinstance(self.machine, type) and issubclass(self.machine, StateMachine)):
            raise TypeError(f"flow {self.name!r}: machine must be a StateMachine subclass")
        if self.machine.allow_event_without_transition or self.machine.catch_errors_as_events:
            raise TypeError(f"flow {self.name!r}: the machine must be strict")
        if self.version < 1:
            raise ValueError(f"flow {self.name!r}: version must be at least 1")
        for state, deadline in self.deadlines.items():
            if state not in self.states:
                raise ValueError(f"flow {self.name!r}: deadline on unknown state {state!r}")
            if self.target_of(state, deadline.event) is None:
                raise ValueError(
                    f"flow {self.name!r}: deadline event {deadline.event!r} has no "
                    f"unguarded transition out of {state!r}"
                )
        named = [
            *(self.exclusive.live if self.exclusive else ()),
            *self.funnel,
            *(job.state for job in self.jobs),
        ]
        for state in named:
            if state not in self.states:
                raise ValueError(f"flow {self.name!r}: unknown state {state!r}")
        if self.exclusive and self.exclusive.end_event not in self.events:
            raise ValueError(f"flow {self.name!r}: unknown event {self.exclusive.end_event!r}")

    # States are named by the value the attempt row stores (for a plain `State()` its
    # attribute name; for states made from an enum, the member's value). A spec is
    # frozen, so what it derives from its machine is computed once (every fire reads
    # some of it).

    @cached_property
    def states(self) -> list[str]:
        return [str(s.value) for s in self.machine.states]

    @cached_property
    def initial_state(self) -> str:
        return next(str(s.value) for s in self.machine.states if s.initial)

    @cached_property
    def final_states(self) -> list[str]:
        return [str(s.value) for s in self.machine.states if s.final]

    @property
    def live_states(self) -> tuple[str, ...]:
        """The states in which an attempt counts against its group's one-live rule."""
        return self.exclusive.live if self.exclusive else ()

    @cached_property
    def events(self) -> list[str]:
        return [e.id for e in self.machine.events]

    @cached_property
    def transitions(self) -> list[Transition]:
        found: list[Transition] = []
        for state in self.machine.states:
            for t in state.transitions:
                guards = tuple(str(spec) for spec in t.cond)
                for event in t.event.split():
                    effects = self._effects(state, t)
                    found.append(
                        Transition(str(state.value), event, str(t.target.value), guards, effects)
                    )
        return found

    def _effects(self, source: Any, transition: Any) -> tuple[str, ...]:
        """The callbacks that really exist for a transition (named, or found by name)."""
        names = [
            *(str(s) for s in source.exit),
            *(str(s) for s in transition.before),
            *(str(s) for s in transition.on),
            *(str(s) for s in transition.after),
            *(str(s) for s in transition.target.enter),
        ]
        return tuple(dict.fromkeys(n for n in names if callable(getattr(self.machine, n, None))))

    def target_of(self, state: str, event: str) -> str | None:
        """The target of the first unguarded transition for `event` out of `state`."""
        for t in self.transitions:
            if t.source == state and t.event == event and not t.guards:
                return t.target
        return None

    def effects_of(self, state: str, event: str) -> tuple[str, ...]:
        """The callbacks the first unguarded transition for `event` out of `state` runs."""
        for t in self.transitions:
            if t.source == state and t.event == event and not t.guards:
                return t.effects
        return ()

    def events_from(self, state: str) -> list[str]:
        """Events that have at least one transition out of `state`, in definition order."""
        seen: dict[str, None] = {}
        for t in self.transitions:
            if t.source == state:
                seen.setdefault(t.event)
        return list(seen)

    def ends(self, state: str, event: str) -> bool:
        """Whether `event` out of `state` can only lead to a final state (it ends the
        attempt: there is no coming back from it)."""
        final = set(self.final_states)
        targets = [t.target for t in self.transitions if t.source == state and t.event == event]
        return bool(targets) and all(target in final for target in targets)

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
                {"name": str(s.value), "final": bool(s.final), "initial": bool(s.initial)}
                for s in self.machine.states
            ],
            "events": self.events,
            "transitions": [
                {
                    "from": t.source,
                    "event": t.event,
                    "to": t.target,
                    "guards": list(t.guards),
                    "effects": list(t.effects),
                }
                for t in self.transitions
            ],
            "deadlines": [
                {
                    "state": state,
                    "after_seconds": int(d.fixed.total_seconds()) if d.fixed else None,
                    "computed": d.fixed is None,
                    "event": d.event,
                    "restart": d.restart,
                }
                for state, d in self.deadlines.items()
            ],
            "funnel": list(self.funnel),
            "live_states": list(self.live_states),
        }


class FlowRegistry:
    """The flows an engine knows, by name and version."""

    def __init__(self, specs: Iterable[FlowSpec] = ()) -> None:
        self._specs: dict[str, dict[int, FlowSpec]] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: FlowSpec) -> None:
        versions = self._specs.setdefault(spec.name, {})
        if spec.version in versions:
            raise ValueError(f"flow {spec.name!r} version {spec.version} registered twice")
        versions[spec.version] = spec

    def get(self, name: str, version: int | None = None) -> FlowSpec:
        """The flow's newest version, or the given one; `UnknownFlow` if it is not registered."""
        versions = self._specs.get(name)
        if not versions:
            raise UnknownFlow(name)
        if version is None:
            return versions[max(versions)]
        try:
            return versions[version]
        except KeyError:
            raise UnknownFlow(f"{name} version {version}") from None

    def versions(self, name: str) -> list[FlowSpec]:
        """Every registered version of a flow, oldest first."""
        return [spec for _, spec in sorted(self._specs.get(name, {}).items())]

    def all_versions(self) -> list[FlowSpec]:
        """Every registered version of every flow."""
        return [spec for name in self._specs for spec in self.versions(name)]

    def __iter__(self) -> Iterator[FlowSpec]:
        """The newest version of each flow, in registration order."""
        return iter([self.get(name) for name in self._specs])

    def names(self) -> list[str]:
        return list(self._specs)

    def hooked(self, hook: str) -> list[tuple[FlowSpec, Callable[..., Any]]]:
        """The newest version of each flow that has `hook`, with the hook."""
        return [(spec, spec.hooks[hook]) for spec in self if hook in spec.hooks]

    def group(self, group: str) -> list[FlowSpec]:
        """Every registered version of the flows in an exclusive group."""
        return [s for s in self.all_versions() if s.exclusive and s.exclusive.group == group]
