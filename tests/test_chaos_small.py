"""The chaos scenario of issue 7, smaller: faults on a multi-process deployment lose nothing.

`bench.chaos` with `Scenario.small()`: a real PostgreSQL, Redis and SMTP sink,
two `recovery serve --no-dispatcher` processes and two `recovery worker`
processes; 300 requests over HTTP while one dispatcher is SIGKILLed and
restarted, the SMTP sink is down for 3 seconds, and PostgreSQL restarts.
One run (about a minute) feeds every claim below.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from api.support.reference import support_reference
from bench.chaos import (
    USER_AGENT,
    Mail,
    Request,
    Scenario,
    Try,
    account_for,
    arrows,
    duplicate_causes,
    explain,
    healthy,
    run_chaos,
)
from flows import registry
from flows.password_recovery import NAME
from tests.support.tools import require


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The accounting of one small chaos run."""
    require("postgresql")
    require("redis")
    yield run_chaos(Scenario.small(), tmp_path_factory.mktemp("chaos"))


@pytest.mark.slow
def test_every_fault_happened_while_requests_were_flowing(report: dict[str, Any]) -> None:
    """The timeline shows the kill, the restart, the SMTP outage and the PostgreSQL restart
    before the last request was answered."""
    timeline = [entry["what"] for entry in report["details"]["faults"]]
    faults = [
        "dispatcher-1 SIGKILLed",
        "dispatcher-1 started again",
        "SMTP sink down",
        "SMTP sink up",
        "PostgreSQL restarting",
        "PostgreSQL up",
    ]
    assert [what for what in timeline if what in faults] == faults
    assert timeline.index("PostgreSQL up") < timeline.index("all requests answered")
    assert report["details"]["process_exit_statuses"]["dispatcher-1"][0] == -9


@pytest.mark.slow
def test_no_accepted_request_is_lost_stuck_or_mailed_to_a_wrong_address(
    report: dict[str, Any],
) -> None:
    """lost, stuck and wrong_recipient are 0, and the queue drained."""
    assert (report["lost"], report["stuck"], report["wrong_recipient"]) == (0, 0, 0)
    assert report["details"]["drained"]
    assert healthy(report)


@pytest.mark.slow
def test_every_accepted_request_has_exactly_one_attempt_explained_by_its_history(
    report: dict[str, Any],
) -> None:
    """Each 202 maps to one attempt, and every attempt's event log replays to its state."""
    details = report["details"]
    assert report["accepted"] == Scenario.small().requests
    assert details["accepted_without_attempt"] == 0
    assert details["accepted_with_several_attempts"] == 0
    assert details["unexplained_by_history"] == 0
    assert details["attempts_not_from_this_run"] == 0


@pytest.mark.slow
def test_requests_refused_during_the_postgres_restart_succeed_when_retried(
    report: dict[str, Any],
) -> None:
    """Some tries failed while PostgreSQL restarted, and every request was accepted on a retry."""
    requests = report["details"]["requests"]
    assert requests["retried_requests"] > 0
    assert requests["never_accepted"] == 0


@pytest.mark.slow
def test_known_addresses_are_emailed_and_unknown_ones_are_not(report: dict[str, Any]) -> None:
    """Accepted known addresses end emailed, unknown ones unknown_account, and every mail
    that arrived belongs to an attempt of this run."""
    details = report["details"]
    states = details["accepted_by_state"]
    # A try that failed after its attempt was stored makes the retry a duplicate request,
    # which the resend cooldown throttles: the only way anything ends throttled here.
    assert set(states) <= {"emailed", "unknown_account", "throttled"}
    assert states.get("throttled", 0) <= details["attempts_of_failed_tries"]
    assert states["emailed"] >= details["accepted_known_address"] - states.get("throttled", 0)
    assert details["emailed_without_mail"] == 0
    assert details["mails_without_a_known_reference"] == 0


@pytest.mark.slow
def test_mail_that_failed_during_the_smtp_outage_was_delivered_on_a_later_try(
    report: dict[str, Any],
) -> None:
    """The outage made some sends fail; they were retried, not bounced."""
    details = report["details"]
    assert details["mail_delivery"]["attempts_mailed_after_a_failed_try"] > 0
    assert details["undeliverable"] == 0


# -- the accounting itself, on hand-made outcomes (fast) ---------------------------


def _attempt(index: int, state: str, subject: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "state": state,
        "subject": subject,
        "data": {"user_agent": USER_AGENT.format(request=index, attempt=1)},
    }


def _event(attempt: dict[str, Any], seq: int, event: str, frm: str | None, to: str | None) -> dict:
    return {
        "attempt_id": attempt["id"],
        "seq": seq,
        "event": event,
        "from_state": frm,
        "to_state": to,
        "accepted": to is not None,
    }


def _accepted(index: int, address: str, known: bool) -> Request:
    return Request(index, address, known, [Try(1, 0, "202", 0.01, 0.0)])


SPEC = registry().get(NAME)


def test_a_history_explains_its_state_only_through_transitions_the_flow_defines() -> None:
    """Replaying start, a refused event and dispatch reaches `emailed`; a jump or a
    different stored state is unexplained."""
    a = _attempt(0, "emailed", "x@example.com")
    moves = arrows(SPEC)
    good = [
        _event(a, 1, "start", None, "requested"),
        _event(a, 2, "open_link", "requested", None),
        _event(a, 3, "dispatch", "requested", "emailed"),
    ]
    assert explain(SPEC, moves, "emailed", good) == (True, ["requested", "emailed"])
    assert explain(SPEC, moves, "superseded", good)[0] is False
    jump = [
        _event(a, 1, "start", None, "requested"),
        _event(a, 2, "log_in", "requested", "logged_in"),
    ]
    assert explain(SPEC, moves, "logged_in", jump)[0] is False
    gap = [good[0], {**good[2], "seq": 3}]
    assert explain(SPEC, moves, "emailed", gap)[0] is False


def test_the_accounting_counts_lost_stuck_duplicated_and_misdirected_requests() -> None:
    """A 202 without an attempt is lost, an emailed attempt without mail is lost, a
    `requested` one is stuck, a second copy is a duplicate, mail to a stranger is misdirected."""
    known = {f"p{i}@example.com": f"p{i}@example.com" for i in range(4)}
    requests = [_accepted(i, f"p{i}@example.com", True) for i in range(5)]
    emailed = [_attempt(i, "emailed", f"p{i}@example.com") for i in range(3)]
    stuck = _attempt(3, "requested", "p3@example.com")
    events = [_event(stuck, 1, "start", None, "requested")]
    for a in emailed:
        events += [
            _event(a, 1, "start", None, "requested"),
            _event(a, 2, "dispatch", "requested", "emailed"),
        ]
    ref = [support_reference(a["id"]) for a in emailed]
    mails = [
        Mail(("p0@example.com",), (ref[0],), ()),
        Mail(("p0@example.com",), (ref[0],), ()),  # a duplicate
        Mail(("stranger@example.com",), (ref[1],), ()),  # misdirected
        # request 2's mail never arrived; request 4 has no attempt at all
    ]
    report = account_for(requests, [*emailed, stuck], events, known, mails, SPEC)
    assert report["accepted"] == 5
    assert report["attempts"] == 4
    assert report["stuck"] == 1
    assert report["duplicates"] == 1
    assert report["wrong_recipient"] == 1
    assert report["details"]["accepted_without_attempt"] == 1
    assert report["details"]["emailed_without_mail"] == 1
    assert report["lost"] == 2


def test_each_repeated_email_is_put_down_to_the_fault_its_first_copy_met() -> None:
    """A killed dispatcher's claim, a first copy sent during the PostgreSQL restart, and one
    sent at a quiet moment are told apart."""
    attempts = [_attempt(i, "emailed", f"p{i}@example.com") for i in range(3)]
    ids = [str(a["id"]) for a in attempts]
    at = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    walls = {
        "PostgreSQL restarting": at,
        "PostgreSQL up": at + timedelta(seconds=2),
        "SMTP sink down": at - timedelta(seconds=60),
        "SMTP sink up": at - timedelta(seconds=50),
    }
    refs = [support_reference(a["id"]) for a in attempts]
    mails = [
        Mail(("p1@example.com",), (refs[1],), (), at + timedelta(seconds=1)),
        Mail(("p1@example.com",), (refs[1],), (), at + timedelta(seconds=20)),
        Mail(("p2@example.com",), (refs[2],), (), at - timedelta(seconds=30)),
        Mail(("p2@example.com",), (refs[2],), (), at - timedelta(seconds=10)),
    ]
    causes = duplicate_causes(ids, attempts, mails, walls, killed_claims={ids[0]})
    assert causes == {"dispatcher_kill": 1, "other": 1, "postgres_restart": 1}
