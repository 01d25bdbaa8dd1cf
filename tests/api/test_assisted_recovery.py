"""Support-handled recovery ("I can't access this email") over HTTP, on SQLite and PostgreSQL.

Each test builds the real application on a fresh database, with the real
worker sending the emails (the file transport, or a real SMTP server on
loopback for the whole case), real Argon2 (the cheap test profile), and the
support API with real keys. Time travels with freezegun (`real_asyncio=True`,
so the event loop and SMTP keep real time): nothing sleeps.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from api.accounts.models import Account, NoticeToken
from api.mail.messages import format_time
from api.support.models import AuditEntry
from engine.core import attempt_t
from tests.api.cases import (
    ANSWER_LINK,
    CANCEL_LINK,
    CONTACT,
    FLOW,
    GRANT_LINK,
    STATEMENT,
    case_body,
    code_in,
    confirmed_case,
    detail,
    drain,
    fire,
    mail_to,
    newest_case,
    submit,
    text_of,
    token_in,
    writer,
)
from tests.api.conftest import NEW_PASSWORD, OLD_PASSWORD, PUBLIC_BASE_URL, Api, assert_error
from tests.support.smtp import SmtpSink

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
OWNER = "Jane.Doe@Example.com"
WAIT = timedelta(minutes=4320)
DAY = timedelta(hours=24)
VOLATILE_HEADERS = {"date", "x-request-id"}
REFERENCE = re.compile(r"\b[A-Z2-7]{4}-[A-Z2-7]{4}\b")


def _comparable(answer: Any) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted((k, v) for k, v in answer.headers.multi_items() if k not in VOLATILE_HEADERS)
    return answer.status_code, answer.content, headers


def _login(api: Api, email: str, password: str) -> Any:
    return api.client.post("/api/login", json={"email": email, "password": password})


def _session(api: Api, token: str) -> Any:
    return api.client.get("/api/session", headers={"Authorization": f"Bearer {token}"})


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _state(api: Api, case_id: str) -> str:
    return str(detail(api, case_id)["state"])


# -- the whole case ----------------------------------------------------------------------------


def test_the_whole_case_over_http_with_real_smtp_ends_signed_in_at_the_new_address(
    make_api: Callable[..., Api], smtp_sink: SmtpSink
) -> None:
    """Submit, confirm the contact address, review (with match signals), approve, travel
    through the waiting period, receive the grant link, set the password, and sign in with
    the new address; the old address hears of each step, and its sessions end."""
    api = make_api(mail_url=smtp_sink.url)
    api.account(OWNER)
    old_session = _login(api, OWNER, OLD_PASSWORD).json()["session_token"]
    with freeze_time(T0, real_asyncio=True) as clock:
        answer = submit(api, birth_date="1985-03-14", account_created="2026-11")
        assert (answer.status_code, answer.json()) == (202, {"status": "accepted"})
        drain(api)
        [code_mail] = smtp_sink.to(CONTACT)
        assert code_mail["Subject"] == "Your confirmation code"
        confirmed = api.client.post(
            "/api/assisted-recovery/confirm",
            json={"contact_email": CONTACT, "code": code_in(code_mail)},
        )
        assert (confirmed.status_code, confirmed.json()) == (200, {"status": "confirmed"})
        drain(api)
        [notice] = smtp_sink.to(OWNER)
        assert notice["Subject"] == "Someone asked to move your account to a new address"
        assert "j***w@m***l.example" in text_of(notice)
        assert CONTACT not in text_of(notice)
        [seen] = _session(api, old_session).json()["notices"]
        assert (seen["flow"], seen["state"], seen["effective_at"]) == (FLOW, "in_review", None)

        queue = api.client.get(
            "/api/support/attempts",
            params={"flow": FLOW, "state": "in_review"},
            headers=writer(api),
        ).json()["items"]
        [case_id] = [item["id"] for item in queue]
        case = detail(api, case_id)["flow_detail"]
        assert case["account"] == "found" and case["statement"] == STATEMENT
        # No birth date on file; the name matches; the account was made this month.
        assert case["matches"] == {
            "name": "match",
            "birth_date": "not_on_file",
            "account_created": "match",
        }
        approved = fire(api, case_id, "approve", "statement and details check out")
        assert (approved.status_code, approved.json()) == (200, {"state": "waiting"})
        drain(api)
        second = smtp_sink.to(OWNER)[-1]
        assert second["Subject"] == "Your account will move to a new address"
        assert format_time(T0 + WAIT, "en") in text_of(second)
        [seen] = _session(api, old_session).json()["notices"]
        assert (seen["state"], _at(seen["effective_at"])) == ("waiting", T0 + WAIT)

        clock.tick(WAIT)
        drain(api)
        assert _state(api, case_id) == "waiting"
        assert len(smtp_sink.to(CONTACT)) == 1  # no grant a moment early
        clock.tick(1)
        drain(api)
        grant = smtp_sink.to(CONTACT)[-1]
        assert grant["Subject"] == "Choose a new password"
        link = re.search(r"\S+/recovery/reset\?token=\S+", text_of(grant))
        assert link and link.group(0).startswith(f"{PUBLIC_BASE_URL}/recovery/reset?token=")
        token = token_in(grant, GRANT_LINK)
        verified = api.client.post("/api/recovery/verify", json={"token": token})
        assert verified.status_code == 200, verified.text
        assert verified.json()["state"] == "link_opened"
        password = api.client.post(
            "/api/recovery/password",
            json={"token": token, "password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD},
        )
        assert (password.status_code, password.json()) == (200, {"state": "password_set"})
        drain(api)

    moved = smtp_sink.to(OWNER)[-1]
    assert moved["Subject"] == "Your account's address was changed"
    assert _session(api, old_session).status_code == 401
    assert _login(api, OWNER, NEW_PASSWORD).status_code == 401
    assert _login(api, CONTACT, OLD_PASSWORD).status_code == 401
    signed_in = _login(api, CONTACT, NEW_PASSWORD)
    assert signed_in.status_code == 200
    assert _session(api, signed_in.json()["session_token"]).json()["notices"] == []
    final = detail(api, case_id)
    assert final["state"] == "logged_in"
    path = [(e["event"], e["to"]) for e in final["timeline"] if e["accepted"]]
    assert path == [
        ("start", "submitted"),
        ("send_code", "confirming"),
        ("confirm", "in_review"),
        ("approve", "waiting"),
        ("end_wait", "granted"),
        ("open_link", "link_opened"),
        ("set_password", "password_set"),
        ("log_in", "logged_in"),
    ]
    with api.services.engine.db.transaction(write=False) as conn:
        row = conn.execute(select(Account.__table__)).one()
    assert (row.email, row.email_normalized) == (CONTACT, CONTACT)


def test_the_owner_cancels_the_case_at_once_with_the_old_addresss_link(
    make_api: Callable[..., Api], smtp_sink: SmtpSink
) -> None:
    """Over HTTP with real SMTP: both notices to the account's address carry a "this wasn't
    me" link; either cancels the case at once, the person is told "we could not verify",
    and nothing changes after."""
    api = make_api(mail_url=smtp_sink.url)
    api.sink = smtp_sink  # type: ignore[attr-defined]
    api.account(OWNER)
    case_id = confirmed_case(api)
    assert fire(api, case_id, "approve").status_code == 200
    drain(api)
    first, second = smtp_sink.to(OWNER)
    cancel_token = token_in(first, CANCEL_LINK)
    assert token_in(second, CANCEL_LINK) != cancel_token
    assert "lang=en" in text_of(first)

    answer = api.client.post("/api/assisted-recovery/cancel", json={"token": cancel_token})
    assert (answer.status_code, answer.json()) == (200, {"state": "cancelled"})
    assert _state(api, case_id) == "cancelled"
    assert detail(api, case_id)["timeline"][-1]["detail"] == {"via": "not_me_link"}
    drain(api)
    closed = smtp_sink.to(CONTACT)[-1]
    assert closed["Subject"] == "We could not verify your request"
    # The second notice's link, and the first again, now say the case is over.
    for token in (token_in(second, CANCEL_LINK), cancel_token):
        again = api.client.post("/api/assisted-recovery/cancel", json={"token": token})
        assert assert_error(again, 410, "link_cancelled")["details"] == [{"reason": "cancelled"}]
    assert_error(fire(api, case_id, "approve"), 409)
    assert len(smtp_sink.to(CONTACT)) == 2  # the code, then "could not verify"
    assert _login(api, OWNER, OLD_PASSWORD).status_code == 200
    assert_error(api.client.post("/api/assisted-recovery/cancel", json={"token": "x" * 43}), 400)


# -- the same answers with or without an account ---------------------------------------------------


def _normalised(text: str) -> str:
    text = re.sub(r"^\s*\d{6}\s*$", "CODE", text, flags=re.MULTILINE)
    text = REFERENCE.sub("REF", text)
    # A moment as the emails say it: "Friday, December 4, 2026 at 9:30 AM (UTC)".
    return re.sub(r"\w+, \w+ \d+, \d{4} at \d+:\d{2}\s[AP]M \(UTC\)", "TIME", text)


def test_every_step_a_requester_sees_is_the_same_with_or_without_an_account(api: Api) -> None:
    """The request, the code email, a wrong code, the right code and the closing email are
    the same for an address with an account and one without; support sees which is which,
    and a case for an unknown address cannot be approved."""
    api.account("known@example.com")
    requests: dict[str, Any] = {}
    rows: dict[str, Any] = {}
    for address, contact in (
        ("known@example.com", "c1@mail.example"),
        ("nobody@example.com", "c2@mail.example"),
    ):
        requests[address] = submit(api, email=address, contact_email=contact)
        rows[address] = newest_case(api)
    assert _comparable(requests["known@example.com"]) == _comparable(requests["nobody@example.com"])
    assert {(r.state, tuple(sorted(r.data))) for r in rows.values()} == {
        (
            "submitted",
            (
                "account_created",
                "birth_date",
                "client_ip",
                "contact_email",
                "contact_normalized",
                "delivery",
                "email_submitted",
                "locale",
                "name",
                "statement",
                "user_agent",
            ),
        )
    }
    drain(api)
    [code1] = mail_to(api.messages(), "c1@mail.example")
    [code2] = mail_to(api.messages(), "c2@mail.example")
    assert _normalised(text_of(code1)) == _normalised(text_of(code2))
    assert code1["Subject"] == code2["Subject"]

    def confirm(contact: str, code: str) -> Any:
        return api.client.post(
            "/api/assisted-recovery/confirm", json={"contact_email": contact, "code": code}
        )

    wrong = {
        c: confirm(c, "999999" if code_in(m) != "999999" else "999998")
        for c, m in (("c1@mail.example", code1), ("c2@mail.example", code2))
    }
    assert _comparable(wrong["c1@mail.example"]) == _comparable(wrong["c2@mail.example"])
    assert_error(wrong["c1@mail.example"], 400, "invalid_code")
    nobody = confirm("never-asked@mail.example", "123456")
    assert _comparable(nobody) == _comparable(wrong["c1@mail.example"])
    right1 = confirm("c1@mail.example", code_in(code1))
    right2 = confirm("c2@mail.example", code_in(code2))
    assert _comparable(right1) == _comparable(right2)
    assert right1.json() == {"status": "confirmed"}
    drain(api)

    known_id = str(rows["known@example.com"].id)
    unknown_id = str(rows["nobody@example.com"].id)
    unknown = detail(api, unknown_id)
    assert unknown["state"] == "in_review"
    assert unknown["flow_detail"]["account"] == "not_found"
    assert unknown["flow_detail"]["matches"] == {"name": "not_on_file"}
    assert detail(api, known_id)["flow_detail"]["account"] == "found"
    refused = assert_error(fire(api, unknown_id, "approve"), 409)
    assert refused["details"][0]["reason"] == "guard_failed"
    for case_id in (known_id, unknown_id):
        assert fire(api, case_id, "deny", "could not verify the details").json() == {
            "state": "denied"
        }
    drain(api)
    closed1 = mail_to(api.messages(), "c1@mail.example")[-1]
    closed2 = mail_to(api.messages(), "c2@mail.example")[-1]
    assert closed1["Subject"] == closed2["Subject"] == "We could not verify your request"
    assert _normalised(text_of(closed1)) == _normalised(text_of(closed2))
    # Only the account's address heard of the case: nothing went anywhere else.
    recipients = sorted(m["To"].addresses[0].addr_spec.lower() for m in api.messages())
    assert recipients == [
        "c1@mail.example",
        "c1@mail.example",
        "c2@mail.example",
        "c2@mail.example",
        "known@example.com",
    ]


# -- deadlines, each exactly at the edge and one second after ----------------------------------


def test_the_code_works_for_24_hours_and_is_refused_one_second_later(api: Api) -> None:
    api.account(OWNER)
    api.account("other@example.com", name="Jane Doe")
    with freeze_time(T0, real_asyncio=True) as clock:
        submit(api, contact_email="edge@mail.example")
        submit(api, email="other@example.com", contact_email="late@mail.example")
        drain(api)
        on_time = code_in(mail_to(api.messages(), "edge@mail.example")[0])
        late = code_in(mail_to(api.messages(), "late@mail.example")[0])
        clock.tick(DAY)
        answer = api.client.post(
            "/api/assisted-recovery/confirm",
            json={"contact_email": "edge@mail.example", "code": on_time},
        )
        assert answer.status_code == 200, answer.text
        clock.tick(1)
        refused = api.client.post(
            "/api/assisted-recovery/confirm",
            json={"contact_email": "late@mail.example", "code": late},
        )
        assert_error(refused, 400, "invalid_code")
    states = {a.subject: a.state for a in api.attempts()}
    assert states == {"jane.doe@example.com": "in_review", "other@example.com": "expired"}


def test_an_unreviewed_case_is_flagged_overdue_after_three_days_and_stays_in_the_queue(
    api: Api,
) -> None:
    api.account(OWNER)
    with freeze_time(T0, real_asyncio=True) as clock:
        case_id = confirmed_case(api)
        clock.tick(timedelta(days=3))
        assert _state(api, case_id) == "in_review"
        clock.tick(1)
        overdue = api.client.get(
            "/api/support/attempts",
            params={"flow": FLOW, "state": "review_overdue"},
            headers=writer(api),
        ).json()["items"]
        assert [item["id"] for item in overdue] == [case_id]
        found = detail(api, case_id)
        assert found["flow_detail"]["review_overdue"] is True
        assert found["timeline"][-1]["event"] == "flag_overdue"
        assert found["support_events"] == ["approve", "deny", "request_info", "cancel"]
        assert fire(api, case_id, "approve").json() == {"state": "waiting"}


def test_the_grant_goes_out_when_the_waiting_period_ends_and_not_a_second_before(api: Api) -> None:
    api.account(OWNER)
    with freeze_time(T0, real_asyncio=True) as clock:
        case_id = confirmed_case(api)
        clock.tick(3600)
        approved_at = T0 + timedelta(seconds=3600)
        assert fire(api, case_id, "approve").status_code == 200
        assert _at(detail(api, case_id)["deadline_at"]) == approved_at + WAIT
        drain(api)
        clock.tick(WAIT)
        drain(api)
        assert _state(api, case_id) == "waiting"
        assert not [m for m in mail_to(api.messages(), CONTACT) if GRANT_LINK.search(text_of(m))]
        # Nor does the sweep move it at the edge.
        assert api.services.engine.sweep_sync() == 0
        clock.tick(1)
        drain(api)
        assert _state(api, case_id) == "granted"
        grants = [m for m in mail_to(api.messages(), CONTACT) if GRANT_LINK.search(text_of(m))]
        assert len(grants) == 1


def test_the_waiting_period_is_ended_by_the_sweep_too(api: Api) -> None:
    """Whoever notices first (the wake-up, a read, or `recovery sweep`), the wait ends once
    and the grant goes out once."""
    api.account(OWNER)
    with freeze_time(T0, real_asyncio=True) as clock:
        case_id = confirmed_case(api)
        fire(api, case_id, "approve")
        clock.tick(WAIT + timedelta(seconds=1))
        assert api.services.engine.sweep_sync() == 1
        drain(api)
    assert _state(api, case_id) == "granted"
    grants = [m for m in mail_to(api.messages(), CONTACT) if GRANT_LINK.search(text_of(m))]
    assert len(grants) == 1


def test_the_grant_link_works_for_24_hours_and_is_410_one_second_later(api: Api) -> None:
    api.account(OWNER)
    with freeze_time(T0, real_asyncio=True) as clock:
        case_id = confirmed_case(api)
        fire(api, case_id, "approve")
        clock.tick(WAIT + timedelta(seconds=1))
        drain(api)
        token = token_in(mail_to(api.messages(), CONTACT)[-1], GRANT_LINK)
        clock.tick(DAY)
        assert api.client.post("/api/recovery/verify", json={"token": token}).status_code == 200
        clock.tick(1)
        late = api.client.post("/api/recovery/verify", json={"token": token})
        assert assert_error(late, 410, "link_expired")["details"] == [{"reason": "expired"}]
        body = {"token": token, "password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}
        assert_error(api.client.post("/api/recovery/password", json=body), 410, "link_expired")
    assert _state(api, case_id) == "expired"
    assert _login(api, OWNER, OLD_PASSWORD).status_code == 200


# -- one open case per address, and the email route's throttles --------------------------------


def test_a_request_while_a_case_is_open_sends_nothing_and_answers_the_same(api: Api) -> None:
    api.account(OWNER)
    with freeze_time(T0, real_asyncio=True) as clock:
        first_id = confirmed_case(api)
        clock.tick(120)
        first_answer = submit(api, contact_email="another@mail.example")
        drain(api)
    assert first_answer.status_code == 202
    newest = newest_case(api)
    assert newest.state == "throttled"
    assert api.services.engine.history_sync(newest.id)[-1].detail == {"reason": "case_open"}
    assert mail_to(api.messages(), "another@mail.example") == []
    assert _state(api, first_id) == "in_review"


def test_a_newer_request_replaces_one_whose_code_was_never_confirmed(api: Api) -> None:
    """A mistyped contact address is fixed by asking again: the older case gives way."""
    api.account(OWNER)
    with freeze_time(T0, real_asyncio=True) as clock:
        submit(api, contact_email="typo@mial.example")
        drain(api)
        old_code = code_in(mail_to(api.messages(), "typo@mial.example")[0])
        older = newest_case(api)
        clock.tick(61)
        submit(api)
        drain(api)
    assert api.services.engine.get_sync(older.id).state == "superseded"
    assert newest_case(api).state == "confirming"
    refused = api.client.post(
        "/api/assisted-recovery/confirm",
        json={"contact_email": "typo@mial.example", "code": old_code},
    )
    assert_error(refused, 400, "invalid_code")
    assert mail_to(api.messages(), "typo@mial.example")[-1]["Subject"] == "Your confirmation code"


def test_requests_share_the_email_routes_limits_per_address_and_per_contact_address(
    make_api: Callable[..., Api],
) -> None:
    api = make_api(emails_per_hour=2)
    api.account(OWNER)
    with freeze_time(T0, real_asyncio=True) as clock:
        submit(api, contact_email="one@mail.example")
        clock.tick(10)  # inside the resend cooldown
        submit(api, contact_email="one@mail.example")
        drain(api)
        reasons = [api.services.engine.history_sync(a.id)[-1].detail for a in api.attempts()]
        assert reasons[-1] == {"reason": "resend_cooldown"}
        for contact in ("two@mail.example", "three@mail.example"):
            clock.tick(61)
            submit(api, contact_email=contact)
            drain(api)
        assert api.services.engine.history_sync(newest_case(api).id)[-1].detail == {
            "reason": "hourly_limit"
        }
        # The contact address is counted too, whatever account is asked for.
        for address in ("a@example.com", "b@example.com", "c@example.com"):
            clock.tick(61)
            submit(api, email=address, contact_email="shared@mail.example")
            drain(api)
        assert api.services.engine.history_sync(newest_case(api).id)[-1].detail == {
            "reason": "contact_hourly_limit"
        }
    assert len(mail_to(api.messages(), "shared@mail.example")) == 2
    assert len(mail_to(api.messages(), "three@mail.example")) == 0


def test_each_endpoint_is_limited_per_client_ip(make_api: Callable[..., Api]) -> None:
    api = make_api(public_rate_limit_per_minute=2)
    with freeze_time(T0, real_asyncio=True):
        answers = [submit(api, email=f"p{i}@example.com").status_code for i in range(3)]
        confirms = [
            api.client.post(
                "/api/assisted-recovery/confirm", json={"contact_email": CONTACT, "code": "1"}
            )
            for _ in range(3)
        ]
    assert answers == [202, 202, 429]
    assert [c.status_code for c in confirms] == [400, 400, 429]
    assert "Retry-After" in confirms[-1].headers


# -- more information --------------------------------------------------------------------------


def test_support_asks_for_more_information_and_the_answer_puts_the_case_back_in_the_queue(
    api: Api,
) -> None:
    api.account(OWNER)
    case_id = confirmed_case(api)
    question = "Which city did you last sign in from?"
    asked = fire(api, case_id, "request_info", question)
    assert asked.json() == {"state": "info_requested"}
    drain(api)
    mail = mail_to(api.messages(), CONTACT)[-1]
    assert mail["Subject"] == "We need more information about your request"
    assert question in text_of(mail)
    token = token_in(mail, ANSWER_LINK)
    reply = "Lyon, on my phone, in May."
    answer = api.client.post(
        "/api/assisted-recovery/answer", json={"token": token, "answer": reply}
    )
    assert (answer.status_code, answer.json()) == (200, {"status": "answered"})
    found = detail(api, case_id)
    assert found["state"] == "in_review"
    [exchange] = found["flow_detail"]["exchanges"]
    assert (exchange["question"], exchange["answer"]) == (question, reply)
    assert all(reply not in str(e["detail"]) for e in found["timeline"])
    again = api.client.post("/api/assisted-recovery/answer", json={"token": token, "answer": "x"})
    assert_error(again, 409, "link_used")
    assert_error(
        api.client.post("/api/assisted-recovery/answer", json={"token": token, "answer": " "}),
        400,
    )
    # A second question retires nothing answered and sends a new link.
    fire(api, case_id, "request_info", "And the month you opened the account?")
    drain(api)
    second = token_in(mail_to(api.messages(), CONTACT)[-1], ANSWER_LINK)
    fire(api, case_id, "deny", "no")
    late = api.client.post(
        "/api/assisted-recovery/answer", json={"token": second, "answer": "2019"}
    )
    assert_error(late, 410)


# -- personal data -----------------------------------------------------------------------------


def test_the_statement_and_details_are_shown_whole_only_in_the_cases_detail_and_never_logged(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api.account(OWNER)
    statement = "Unique-statement-7f3c: my old mailbox at work was closed."
    case_id = confirmed_case(api, statement=statement, birth_date="1985-03-14")
    fire(api, case_id, "request_info", "Anything else?")
    drain(api)
    token = token_in(mail_to(api.messages(), CONTACT)[-1], ANSWER_LINK)
    api.client.post(
        "/api/assisted-recovery/answer", json={"token": token, "answer": "Unique-reply-9b1d"}
    )
    listing = api.client.get("/api/support/attempts", params={"flow": FLOW}, headers=writer(api))
    assert listing.status_code == 200
    assert statement not in listing.text and "1985-03-14" not in listing.text
    assert "Unique-reply-9b1d" not in listing.text
    whole = detail(api, case_id)["flow_detail"]
    assert whole["statement"] == statement
    assert whole["details"]["birth_date"] == "1985-03-14"
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert logged  # the application did log
    for secret in (statement, "1985-03-14", "Unique-reply-9b1d", CONTACT):
        assert secret not in logged
    history = api.services.engine.history_sync(case_id)
    assert all(statement not in str(e.detail) for e in history)
    with api.services.engine.db.transaction(write=False) as conn:
        audit = [str(r.detail) for r in conn.execute(select(AuditEntry.__table__))]
    assert all(statement not in entry for entry in audit)


def test_match_signals_tell_match_no_match_or_not_on_file_never_the_stored_value(api: Api) -> None:
    api.services.accounts.create_sync(
        email=OWNER, name="Jane Doe", password=OLD_PASSWORD, birth_date=date(1985, 3, 14)
    )
    case_id = confirmed_case(api, name="jane  DOE", birth_date="1985-03-15", account_created="2019")
    case = detail(api, case_id)["flow_detail"]
    assert case["matches"] == {
        "name": "match",
        "birth_date": "no_match",
        "account_created": "no_match",
    }
    assert "1985-03-14" not in str(detail(api, case_id))


def test_an_address_another_account_holds_cannot_be_approved(api: Api) -> None:
    api.account(OWNER)
    case_id = confirmed_case(api)
    api.account(CONTACT, name="Someone Else")
    assert detail(api, case_id)["flow_detail"]["contact_in_use"] is True
    assert assert_error(fire(api, case_id, "approve"), 409)["details"][0]["state"] == "in_review"


# -- the one-live group ------------------------------------------------------------------------


def test_a_forgot_password_email_leaves_an_open_case_but_a_completed_reset_supersedes_it(
    api: Api,
) -> None:
    """Anyone can ask for a reset email, so that alone ends nothing; the owner changing the
    password (they still hold the mailbox) ends the case, and the person is told."""
    api.account(OWNER)
    case_id = confirmed_case(api)
    token = api.link_token()
    assert _state(api, case_id) == "in_review"
    refused = detail(api, case_id)["timeline"][-1]
    assert (refused["event"], refused["accepted"]) == ("supersede", False)
    body = {"token": token, "password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}
    assert api.client.post("/api/recovery/password", json=body).status_code == 200
    ended = detail(api, case_id)
    assert ended["state"] == "superseded"
    assert ended["timeline"][-1]["detail"] == {"reason": "password_changed"}
    drain(api)
    assert mail_to(api.messages(), CONTACT)[-1]["Subject"] == "We could not verify your request"


def test_a_completed_case_ends_the_accounts_other_live_journeys(api: Api) -> None:
    api.account(OWNER)
    with freeze_time(T0, real_asyncio=True) as clock:
        case_id = confirmed_case(api)
        fire(api, case_id, "approve")
        clock.tick(WAIT + timedelta(seconds=1))
        drain(api)
        grant = token_in(mail_to(api.messages(), CONTACT)[-1], GRANT_LINK)
        reset_link = api.link_token()  # the owner's mailbox still gets "Forgot password?"
        assert _state(api, case_id) == "granted"
        body = {"token": grant, "password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}
        assert api.client.post("/api/recovery/password", json=body).status_code == 200
    [reset] = [a for a in api.attempts() if a.flow == "password_recovery"]
    assert api.services.engine.get_sync(reset.id).state == "superseded"
    dead = api.client.post("/api/recovery/verify", json={"token": reset_link})
    assert_error(dead, 410, "link_superseded")


# -- refusals ----------------------------------------------------------------------------------

BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    (case_body(email=["a@example.com"]), "email"),
    (case_body(email="a@example.com, b@example.com"), "email"),
    (case_body(email="a@example.com\r\nBcc: x@example.com"), "email"),
    (case_body(contact_email="Jane.Doe@Example.COM"), "contact_email"),
    (case_body(contact_email=None), "contact_email"),
    (case_body(name="   "), "name"),
    (case_body(name="x" * 201), "name"),
    (case_body(statement=""), "statement"),
    (case_body(statement="nul \x00 inside"), "statement"),
    (case_body(name="Jane\nDoe"), "name"),
    (case_body(statement="x" * 4001), "statement"),
    (case_body(birth_date="14/03/1985"), "birth_date"),
    (case_body(birth_date="2999-01-01"), "birth_date"),
    (case_body(account_created="2019-13"), "account_created"),
    (case_body(account_created="19"), "account_created"),
    ({**case_body(), "phone": "+33 6"}, "phone"),
]


@pytest.mark.parametrize(("body", "field"), BAD_REQUESTS)
def test_a_malformed_request_is_a_400_naming_the_field_and_records_nothing(
    api: Api, body: dict[str, Any], field: str
) -> None:
    error = assert_error(api.client.post("/api/assisted-recovery", json=body), 400)
    assert field in {d.get("field") for d in error["details"]}, error
    assert api.attempts() == []


def test_every_bad_field_is_reported_at_once(api: Api) -> None:
    body = case_body(email="nope", name="", birth_date="tomorrow")
    error = assert_error(api.client.post("/api/assisted-recovery", json=body), 400)
    assert [d["field"] for d in error["details"]] == ["email", "name", "birth_date"]


def test_support_decisions_need_a_reason_a_write_key_and_are_audited(api: Api) -> None:
    api.account(OWNER)
    case_id = confirmed_case(api)
    reader = api.support_headers("read", name="reader")
    base = f"/api/support/attempts/{case_id}/events"
    assert_error(api.client.post(f"{base}/approve", json={"reason": "x"}, headers=reader), 403)
    assert_error(api.client.post(f"{base}/approve", json={"reason": ""}, headers=writer(api)), 400)
    assert_error(fire(api, case_id, "end_wait"), 400)
    assert _state(api, case_id) == "in_review"
    assert fire(api, case_id, "approve", "details match").status_code == 200
    with api.services.engine.db.transaction(write=False) as conn:
        rows = conn.execute(
            select(AuditEntry.__table__).where(AuditEntry.__table__.c.action == "approve")
        ).all()
    assert [(r.key_name, r.detail["reason"]) for r in rows] == [("case-agent", "details match")]
    approve = [e for e in detail(api, case_id)["timeline"] if e["event"] == "approve"][-1]
    assert approve["actor"] == "support:case-agent"
    assert approve["detail"] == {"reason": "details match", "via": "support"}
    # No event shortens the wait: support may only cancel now.
    assert detail(api, case_id)["support_events"] == ["cancel"]


def test_notice_tokens_are_stored_as_digests_only(api: Api) -> None:
    api.account(OWNER)
    confirmed_case(api)
    token = token_in(mail_to(api.messages(), OWNER)[0], CANCEL_LINK)
    with api.services.engine.db.transaction(write=False) as conn:
        rows = conn.execute(select(NoticeToken.__table__)).all()
        data = [str(r.data) for r in conn.execute(select(attempt_t))]
    assert len(rows) == 1 and token not in str(rows[0]) and rows[0].purpose == "cancel"
    assert all(token not in d for d in data)


# -- sessions and flows ------------------------------------------------------------------------


def test_every_signed_in_session_of_the_account_sees_the_notice_in_its_language(api: Api) -> None:
    api.account(OWNER, locale="fr")
    sessions = [_login(api, OWNER, OLD_PASSWORD).json()["session_token"] for _ in range(2)]
    assert [_session(api, s).json()["notices"] for s in sessions] == [[], []]
    case_id = confirmed_case(api)
    for token in sessions:
        [notice] = _session(api, token).json()["notices"]
        assert notice["reference"] == detail(api, case_id)["reference"]
        assert "j***w@m***l.example" in notice["message"]
        assert notice["message"].startswith("Quelqu’un a demandé")
    drain(api)
    french = mail_to(api.messages(), OWNER)[0]
    assert (
        french["Subject"]
        == "Quelqu’un a demandé à transférer votre compte vers une nouvelle adresse"
    )
    api.client.post("/api/assisted-recovery/cancel", json={"token": token_in(french, CANCEL_LINK)})
    assert _session(api, sessions[0]).json()["notices"] == []


def test_the_flows_api_lists_and_draws_both_flows(api: Api) -> None:
    names = [f["name"] for f in api.client.get("/api/flows").json()["items"]]
    assert names == ["password_recovery", "assisted_recovery"]
    described = api.client.get(f"/api/flows/{FLOW}").json()
    deadlines = {d["state"]: (d["event"], d["after_seconds"]) for d in described["deadlines"]}
    assert deadlines == {
        "submitted": ("expire", 86400),
        "confirming": ("expire", 86400),
        "in_review": ("flag_overdue", 3 * 86400),
        "waiting": ("end_wait", 4320 * 60),
        "granted": ("expire", 86400),
        "link_opened": ("expire", 86400),
    }
    diagram = api.client.get(f"/api/flows/{FLOW}/diagram?format=mermaid")
    assert diagram.status_code == 200
    assert "waiting --> granted : end_wait / send_the_grant (after 3d)" in diagram.text


def test_the_waiting_period_and_review_deadline_follow_the_settings(
    make_api: Callable[..., Api],
) -> None:
    api = make_api(assisted_wait_minutes=90, assisted_review_days=1)
    api.account(OWNER)
    with freeze_time(T0, real_asyncio=True) as clock:
        case_id = confirmed_case(api)
        assert _at(detail(api, case_id)["deadline_at"]) == T0 + timedelta(days=1)
        fire(api, case_id, "approve")
        assert _at(detail(api, case_id)["deadline_at"]) == T0 + timedelta(minutes=90)
        assert detail(api, case_id)["flow_detail"]["wait_minutes"] == 90
        clock.tick(timedelta(minutes=90, seconds=1))
        drain(api)
        # Read at the frozen time: the grant expires a day after it is given, and read in
        # real time (days after T0) it would be expired by then.
        assert _state(api, case_id) == "granted"


def test_the_stored_rows_hold_no_code(api: Api) -> None:
    api.account(OWNER)
    submit(api)
    drain(api)
    code = code_in(mail_to(api.messages(), CONTACT)[0])
    case = newest_case(api)
    assert code not in str(case.data)
    assert all(code not in str(e.detail) for e in api.services.engine.history_sync(case.id))
