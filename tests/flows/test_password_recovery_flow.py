"""The password-recovery flow is exactly SPEC §3's machine, strict, and the engine keeps it so.

The property test drives a real `Engine` on SQLite and PostgreSQL with random
event sequences, random guard facts and random jumps of the clock, and checks
that nothing ever leaves the flow's definition and that the event log tells
the attempt's story exactly once, in order. The facts are real ones (a stored
link, live or revoked; an account; a new password's hash), because the
transitions' effects act on them.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert
from statemachine import StateMachine
from statemachine.exceptions import TransitionNotAllowed

import flows
from api.accounts import links
from api.accounts.codes import Verdict
from api.accounts.models import Account
from api.accounts.policy import Violation
from api.settings import Settings
from engine import Database, Engine, EventRefused, FlowSpec
from engine.core import EventRecord, Fired
from flows.password_recovery import PasswordRecovery

# SPEC §3, written out by hand: the contract the code is checked against.
SPEC_STATES = {
    "requested": False,
    "emailed": False,
    "link_opened": False,
    "password_set": False,
    "logged_in": True,
    "expired": True,
    "cancelled": True,
    "superseded": True,
    "unknown_account": True,
    "throttled": True,
    "undeliverable": True,
}  # state -> final
SPEC_TRANSITIONS = {
    ("requested", "dispatch", "emailed"),
    ("requested", "dispatch", "unknown_account"),
    ("requested", "dispatch", "throttled"),
    ("requested", "bounce", "undeliverable"),
    ("emailed", "open_link", "link_opened"),
    ("link_opened", "open_link", "link_opened"),
    ("link_opened", "set_password", "password_set"),
    ("password_set", "log_in", "logged_in"),
    ("requested", "expire", "expired"),
    ("emailed", "expire", "expired"),
    ("link_opened", "expire", "expired"),
    ("requested", "cancel", "cancelled"),
    ("emailed", "cancel", "cancelled"),
    ("link_opened", "cancel", "cancelled"),
    ("emailed", "supersede", "superseded"),
    ("link_opened", "supersede", "superseded"),
}
SPEC_EVENTS = {event for _, event, _ in SPEC_TRANSITIONS}
# Version 2 (SPEC §9): the code beside the link opens the attempt as the link does.
CODE_TRANSITIONS = {
    ("emailed", "enter_code", "link_opened"),
    ("link_opened", "enter_code", "link_opened"),
}
V2_TRANSITIONS = SPEC_TRANSITIONS | CODE_TRANSITIONS
V2_EVENTS = SPEC_EVENTS | {"enter_code"}
# The yes/no questions the guards decide on; `World.facts` turns them into real facts.
GUARD_FACTS = (
    "throttled",
    "account_exists",
    "mail_accepted",
    "token_valid",
    "password_accepted",
    "signed_in",
    "code_right",
)


def _flow_modules() -> list[Any]:
    return [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(flows.__path__, prefix="flows.")
    ]


def test_every_flow_module_imports_and_every_machine_is_strict() -> None:
    """Each module under flows/ imports, and each StateMachine and FlowSpec in them is strict."""
    machines: set[type[StateMachine]] = set()
    for module in _flow_modules():
        for _, value in inspect.getmembers(module):
            if (
                inspect.isclass(value)
                and issubclass(value, StateMachine)
                and value is not (StateMachine)
            ):
                machines.add(value)
            elif isinstance(value, FlowSpec):
                machines.add(value.machine)
    registered = {spec.machine for spec in flows.registry()}
    assert PasswordRecovery in machines
    assert registered <= machines
    for machine in machines:
        assert machine.allow_event_without_transition is False, machine.__name__
        assert machine.catch_errors_as_events is False, machine.__name__


def test_the_machine_raises_on_an_event_its_state_does_not_allow() -> None:
    """A strict machine refuses loudly rather than ignoring a disallowed event."""
    machine = PasswordRecovery()
    with pytest.raises(TransitionNotAllowed):
        machine.send("log_in", credential_version=1)
    assert machine.current_state_value == "requested"


@pytest.mark.parametrize(
    ("version", "events", "transitions"),
    [(1, SPEC_EVENTS, SPEC_TRANSITIONS), (2, V2_EVENTS, V2_TRANSITIONS)],
)
def test_states_events_and_transitions_are_exactly_spec_section_3(
    version: int, events: set[str], transitions: set[tuple[str, str, str]]
) -> None:
    """Version 1 defines SPEC §3's states (and final ones), events and arrows: no more, no
    fewer; version 2 the same states and arrows, and the code's two arrows besides."""
    spec = flows.registry().get("password_recovery", version)
    assert spec.initial_state == "requested"
    assert {s: s in spec.final_states for s in spec.states} == SPEC_STATES
    assert set(spec.events) == events
    arrows = [(t.source, t.event, t.target) for t in spec.transitions]
    assert len(arrows) == len(set(arrows)), "an arrow is defined twice"
    assert set(arrows) == transitions


def test_link_deadline_is_sixty_minutes_from_sending_and_opening_does_not_extend_it() -> None:
    """SPEC §3: the link expires 60 minutes after it is emailed; opening it keeps that deadline."""
    spec = flows.registry().get("password_recovery")
    emailed, opened = spec.deadlines["emailed"], spec.deadlines["link_opened"]
    assert (emailed.after, emailed.event) == (timedelta(minutes=60), "expire")
    assert (opened.after, opened.event, opened.restart) == (timedelta(minutes=60), "expire", False)
    shorter = flows.registry(Settings.model_construct(link_ttl_minutes=15))
    assert shorter.get("password_recovery").deadlines["emailed"].after == timedelta(minutes=15)


class SteppedClock:
    """A clock the test moves by hand (the engine's time seam, not a mock of it)."""

    def __init__(self, start: datetime) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current


def _facts(**true: bool) -> dict[str, bool]:
    """Guard answers, all no except those named."""
    return {fact: true.get(fact, False) for fact in GUARD_FACTS}


class World:
    """An account and an attempt with its stored link: what the effects act on."""

    def __init__(self, engine: Engine, database: Database) -> None:
        now = engine.clock.now()
        self.account = Account(
            email="someone@example.com",
            email_normalized=f"s-{uuid.uuid4().hex[:8]}@example.com",
            name="Some One",
            password_hash="$argon2id$old",
            password_history=["$argon2id$old"],
            created_at=now,
            password_changed_at=now,
        )
        with database.transaction() as conn:
            conn.execute(insert(Account.__table__).values(**self.account.model_dump()))
        self.attempt = engine.start_sync("password_recovery", subject=self.account.email_normalized)
        # Examples share the database: each world's link is its own.
        self.digest = secrets.token_hex(32)
        links.store(database, self.attempt.id, self.account.id, self.digest, uuid.uuid4().hex, now)
        self.now = now

    def facts(self, event: str, answers: dict[str, bool]) -> dict[str, Any]:
        """Real facts that make each guard of `event` answer as `answers` says."""
        link = links.Link(
            token_hash=self.digest,
            cancel_hash=None,
            attempt_id=self.attempt.id,
            account_id=self.account.id,
            created_at=self.now,
            used_at=None,
            revoked_at=None if answers["token_valid"] else self.now,
        )
        code = Verdict.right if answers["code_right"] else Verdict.wrong
        return {
            "throttle": "hourly_limit" if answers["throttled"] else None,
            # `dispatch` asks whether there is an account; a reset is always for one.
            "account": self.account
            if answers["account_exists"] or event == "set_password"
            else None,
            "sent": answers["mail_accepted"],
            "link_digest": self.digest,
            "link": link,
            "violations": [] if answers["password_accepted"] else [Violation("too_short")],
            "new_hash": "$argon2id$new",
            # A reset raises the account's credential version from 0 to 1.
            "credential_version": 1 if answers["signed_in"] else None,
            "verdict": code,
            "code_token_digest": secrets.token_hex(32),
        }


fire_step = st.tuples(
    st.just("fire"),
    st.sampled_from(sorted(V2_EVENTS)),
    st.fixed_dictionaries({fact: st.booleans() for fact in GUARD_FACTS}),
)
wait_step = st.tuples(st.just("wait"), st.sampled_from([0, 1, 59, 60, 61, 24 * 60 + 1]))
read_step = st.tuples(st.just("get"))
steps = st.lists(st.one_of(fire_step, fire_step, fire_step, wait_step, read_step), max_size=14)


def _check_log(
    history: list[EventRecord], fired: list[Fired], final_state: str, final_version: int
) -> None:
    assert [e.seq for e in history] == list(range(1, len(history) + 1))
    start, *rest = history
    assert (start.event, start.from_state, start.to_state, start.accepted) == (
        "start",
        None,
        "requested",
        True,
    )
    state = "requested"
    accepted = 0
    for entry in rest:
        assert entry.from_state == state, f"seq {entry.seq} does not start where the last ended"
        if entry.accepted:
            assert (entry.from_state, entry.event, entry.to_state) in V2_TRANSITIONS
            state = entry.to_state
            accepted += 1
        else:
            assert entry.to_state is None
            assert entry.detail.get("reason") in ("wrong_state", "guard_failed", "expired")
    assert state == final_state
    assert final_version == 1 + accepted
    by_seq = {e.seq: e for e in history}
    assert len({f.event.seq for f in fired}) == len(fired)
    for f in fired:
        assert by_seq[f.event.seq] == f.event, "a reported transition is missing from the log"
    reported = {f.event.seq for f in fired}
    for entry in rest:
        if entry.accepted and entry.seq not in reported:
            # Only a deadline moves an attempt without the caller firing it.
            assert (entry.event, entry.actor, entry.to_state) == ("expire", "system", "expired")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=steps)
@example(
    plan=[
        ("fire", "dispatch", _facts(account_exists=True, mail_accepted=True)),
        ("fire", "open_link", _facts(token_valid=True)),
        ("fire", "open_link", _facts(token_valid=True)),
        ("fire", "set_password", _facts(token_valid=True, password_accepted=True)),
        ("fire", "log_in", _facts(signed_in=True)),
        ("fire", "cancel", _facts()),
    ]
)
@example(
    plan=[
        ("fire", "dispatch", _facts(account_exists=True, mail_accepted=True)),
        ("wait", 59),
        ("fire", "open_link", _facts(token_valid=True)),
        ("wait", 1),
        ("get",),
        ("wait", 1),
        ("fire", "set_password", _facts(token_valid=True, password_accepted=True)),
        ("get",),
    ]
)
def test_random_event_sequences_stay_inside_the_flow_and_are_logged_once_in_order(
    database: Database, plan: list[tuple[Any, ...]]
) -> None:
    """Whatever events, guard facts and clock jumps arrive, the attempt stays in the flow's
    states, takes only the flow's transitions, and logs each transition exactly once, in order."""
    clock = SteppedClock(datetime(2026, 1, 5, 9, 0, tzinfo=UTC))
    engine = Engine(database, flows.registry(), clock)
    spec = engine.flows.get("password_recovery")
    world = World(engine, database)
    attempt = world.attempt
    fired: list[Fired] = []
    for step in plan:
        if step[0] == "wait":
            clock.current += timedelta(minutes=step[1])
            continue
        if step[0] == "get":
            assert engine.get_sync(attempt.id).state in spec.states
            continue
        _, event, facts = step
        before = engine.read_sync(attempt.id)
        try:
            outcome = engine.fire_sync(attempt.id, event, params=world.facts(event, facts))
        except EventRefused as refused:
            after = engine.read_sync(attempt.id)
            assert refused.event == event
            if refused.reason != "expired":
                assert (after.state, after.version, after.data) == (
                    before.state,
                    before.version,
                    before.data,
                )
            continue
        fired.append(outcome)
        assert outcome.attempt.state in spec.states
        assert (outcome.previous_state, event, outcome.attempt.state) in V2_TRANSITIONS
    final = engine.read_sync(attempt.id)
    assert final.state in SPEC_STATES
    _check_log(engine.history_sync(attempt.id), fired, final.state, final.version)
