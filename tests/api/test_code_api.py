"""POST /api/recovery/code over HTTP, on SQLite and PostgreSQL (SPEC §9).

The code beside the link: 200 with a fresh token that works on
POST /api/recovery/password; one byte-identical 400 for a wrong code, an
address without an account, and a code past its limits; 410 with the dead-link
codes for a right code whose attempt is over; malformed bodies refused before
anything is recorded; the code and its token never in a log or another answer.
Real parts: the app from `create_app`, the engine on a real database, the app's
own worker writing .eml files, cheap-profile Argon2, freezegun for time.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time

from api.accounts.models import RecoveryCodeFailures
from tests.api.conftest import NEW_PASSWORD, Api, assert_error
from tests.support.service import run_recovery

T0 = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)
VOLATILE_HEADERS = {"date", "x-request-id"}
CODE_IN_MAIL = re.compile(r"^(\d{6,12})\s*$", re.MULTILINE)
TOKEN_IN_MAIL = re.compile(r"/recovery/reset\?token=([A-Za-z0-9_-]+)")
ADDRESS = "jane.doe@example.com"


def emailed(api: Api, address: str = ADDRESS) -> tuple[str, str]:
    """Ask over HTTP, let the worker send, and read the newest email's link token and code."""
    assert api.client.post("/api/recovery", json={"email": address}).status_code == 202
    api.dispatch()
    for message in reversed(api.messages()):
        body = message.get_body(preferencelist=("plain",))
        assert body is not None
        text = body.get_content()
        if TOKEN_IN_MAIL.search(text):
            return TOKEN_IN_MAIL.findall(text)[0], CODE_IN_MAIL.findall(text)[0]
    raise AssertionError("no recovery email was sent")


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10 ** len(code):0{len(code)}d}"


def _comparable(answer: Any) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted((k, v) for k, v in answer.headers.multi_items() if k not in VOLATILE_HEADERS)
    return answer.status_code, answer.content, headers


def _password(token: str) -> dict[str, str]:
    return {"token": token, "password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}


def test_a_right_code_answers_a_token_that_sets_the_password_exactly_once(api: Api) -> None:
    api.account()
    _, code = emailed(api)
    answer = api.client.post(
        "/api/recovery/code", json={"email": "Jane.Doe@Example.com", "code": code}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"attempt_id", "state", "expires_at", "token"}
    [attempt] = api.attempts()
    assert (body["attempt_id"], body["state"]) == (str(attempt.id), "link_opened")
    assert datetime.fromisoformat(body["expires_at"]) == attempt.deadline_at
    assert api.client.post("/api/recovery/password", json=_password(body["token"])).json() == {
        "state": "password_set"
    }
    # Used once: the password endpoint says someone already did; the code is dead too.
    assert_error(api.client.post("/api/recovery/password", json=_password(body["token"])), 409)
    assert_error(
        api.client.post("/api/recovery/code", json={"email": ADDRESS, "code": code}),
        410,
        "link_used",
    )
    assert (
        api.client.post("/api/login", json={"email": ADDRESS, "password": NEW_PASSWORD}).status_code
        == 200
    )


def test_forgot_password_keeps_its_answer(api: Api) -> None:
    """SPEC §9: POST /api/recovery answers exactly as before the code existed."""
    api.account()
    answer = api.client.post("/api/recovery", json={"email": ADDRESS})
    assert (answer.status_code, answer.content) == (202, b'{"status":"accepted"}')


def test_wrong_codes_unknown_addresses_and_codes_past_a_limit_get_byte_identical_400s(
    make_api: Any,
) -> None:
    """One error code, one body, the same headers for: a wrong code; an address without an
    account (asked for, or never); the right code after five wrong ones; the right code
    of an address past its cap across attempts."""
    api = make_api(code_max_wrong_per_account=10, resend_cooldown_seconds=0, emails_per_hour=50)
    api.account()
    api.account("capped@example.com")
    answers: dict[str, Any] = {}
    with freeze_time(T0, real_asyncio=True) as clock:
        _, code = emailed(api)
        answers["wrong code"] = api.client.post(
            "/api/recovery/code", json={"email": ADDRESS, "code": wrong(code)}
        )
        assert (
            api.client.post("/api/recovery", json={"email": "nobody@example.com"}).status_code
            == 202
        )
        api.dispatch()
        answers["no account"] = api.client.post(
            "/api/recovery/code", json={"email": "nobody@example.com", "code": code}
        )
        answers["never asked"] = api.client.post(
            "/api/recovery/code", json={"email": "never@example.com", "code": code}
        )
        for _ in range(4):
            api.client.post("/api/recovery/code", json={"email": ADDRESS, "code": wrong(code)})
        answers["right, after five wrong"] = api.client.post(
            "/api/recovery/code", json={"email": ADDRESS, "code": code}
        )
        for _ in range(2):
            clock.tick(timedelta(minutes=2))
            _, capped_code = emailed(api, "capped@example.com")
            for _ in range(5):
                api.client.post(
                    "/api/recovery/code",
                    json={"email": "capped@example.com", "code": wrong(capped_code)},
                )
        clock.tick(timedelta(minutes=2))
        _, capped_code = emailed(api, "capped@example.com")
        answers["right, address capped"] = api.client.post(
            "/api/recovery/code", json={"email": "capped@example.com", "code": capped_code}
        )
    shapes = {why: _comparable(answer) for why, answer in answers.items()}
    first = shapes["wrong code"]
    assert all(shape == first for shape in shapes.values()), shapes
    assert_error(answers["wrong code"], 400, "invalid_code")


@pytest.mark.parametrize("how", ["expired", "superseded", "cancelled", "used"])
def test_a_right_code_for_a_dead_attempt_is_410_with_the_dead_link_code(api: Api, how: str) -> None:
    api.account()
    with freeze_time(T0, real_asyncio=True) as clock:
        token, code = emailed(api)
        if how == "expired":
            clock.tick(timedelta(minutes=60, seconds=1))
        elif how == "superseded":
            clock.tick(timedelta(minutes=2))
            emailed(api)
        elif how == "cancelled":
            assert api.client.post("/api/recovery/cancel", json={"token": token}).status_code == 200
        else:
            assert (
                api.client.post("/api/recovery/password", json=_password(token)).status_code == 200
            )
        error = assert_error(
            api.client.post("/api/recovery/code", json={"email": ADDRESS, "code": code}),
            410,
            f"link_{how}",
        )
        assert error["details"] == [{"reason": how}]
        # A wrong code for the same dead attempt tells nothing.
        assert_error(
            api.client.post("/api/recovery/code", json={"email": ADDRESS, "code": wrong(code)}),
            400,
            "invalid_code",
        )


@pytest.mark.parametrize(("after", "status"), [(timedelta(0), 200), (timedelta(seconds=1), 410)])
def test_the_code_is_live_at_the_link_deadline_and_410_expired_one_second_later(
    api: Api, after: timedelta, status: int
) -> None:
    api.account()
    with freeze_time(T0, real_asyncio=True) as clock:
        _, code = emailed(api)
        clock.tick(timedelta(minutes=60) + after)
        answer = api.client.post("/api/recovery/code", json={"email": ADDRESS, "code": code})
    assert answer.status_code == status, answer.text
    if status == 410:
        assert_error(answer, 410, "link_expired")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"email": ADDRESS, "code": "12345"}, 400, "invalid_input"),
        ({"email": ADDRESS, "code": "12345a"}, 400, "invalid_input"),
        ({"email": ADDRESS, "code": 123456}, 400, "invalid_input"),
        ({"email": ADDRESS, "code": ["123456"]}, 400, "invalid_input"),
        ({"email": [ADDRESS], "code": "123456"}, 400, "invalid_input"),
        ({"email": "not an address", "code": "123456"}, 400, "invalid_input"),
        ({"email": ADDRESS}, 400, "invalid_input"),
        ({"email": ADDRESS, "code": "123456", "extra": 1}, 400, "invalid_input"),
        ({"email": ADDRESS, "code": "1" * 65}, 400, "invalid_input"),
    ],
)
def test_a_malformed_body_is_a_400_and_records_nothing(
    api: Api, body: dict[str, Any], status: int, code: str
) -> None:
    api.account()
    emailed(api)
    before = api.services.engine.history_sync(api.attempts()[0].id)
    assert_error(api.client.post("/api/recovery/code", json=body), status, code)
    assert api.services.engine.history_sync(api.attempts()[0].id) == before
    assert api.count(RecoveryCodeFailures.__table__) == 0


def test_the_code_and_its_token_never_reach_a_log_or_another_answer(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api.account()
    _, code = emailed(api)
    answers = [api.client.post("/api/recovery/code", json={"email": ADDRESS, "code": wrong(code)})]
    opened = api.client.post("/api/recovery/code", json={"email": ADDRESS, "code": code})
    token = opened.json()["token"]
    answers.append(api.client.post("/api/recovery/verify", json={"token": token}))
    answers.append(api.client.post("/api/recovery/password", json=_password(token)))
    reader = api.support_headers("read")
    [attempt] = api.attempts()
    view = api.client.get(f"/api/support/attempts/{attempt.id}", headers=reader)
    answers.append(view)
    assert view.json()["route"] == "code"
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert any(r.name == "recovery.access" for r in caplog.records), "access log was active"
    for secret in (code, wrong(code), token):
        assert secret not in logged
        for answer in answers:
            assert secret not in answer.text


def test_support_sees_the_route_in_the_api_and_in_attempts_show(api: Api, tmp_path: Any) -> None:
    """An attempt opened by its code says `code`, one opened by its link `link`; so does
    `recovery attempts show` (a subprocess on the same database)."""
    api.account()
    api.account("other@example.com")
    _, code = emailed(api)
    token = api.client.post("/api/recovery/code", json={"email": ADDRESS, "code": code}).json()[
        "token"
    ]
    api.client.post("/api/recovery/password", json=_password(token))
    link_token, _ = emailed(api, "other@example.com")
    api.client.post("/api/recovery/verify", json={"token": link_token})
    reader = api.support_headers("read")
    routes = {}
    for attempt in api.attempts():
        view = api.client.get(f"/api/support/attempts/{attempt.id}", headers=reader).json()
        routes[attempt.subject] = (view["route"], view["flow_version"])
    assert routes == {ADDRESS: ("code", 2), "other@example.com": ("link", 2)}
    by_code = next(a for a in api.attempts() if a.subject == ADDRESS)
    shown = run_recovery(
        "attempts",
        "show",
        str(by_code.id),
        env={"RECOVERY_DATABASE_URL": api.settings.database_url},
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    assert "route      code" in shown.stdout.splitlines()
    assert "flow       password_recovery (version 2)" in shown.stdout.splitlines()
    assert code not in shown.stdout and token not in shown.stdout
