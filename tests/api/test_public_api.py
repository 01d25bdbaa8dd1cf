"""The public JSON API over HTTP, on SQLite and PostgreSQL: every status of SPEC §5,
the error shape, bad input, enumeration, sign-in slow-downs, tokens, Host forgery, and
secrets kept out of answers and logs.

Real parts throughout: a Litestar app from `create_app`, the engine on a real
database, the app's own worker writing .eml files (and a real SMTP server
on loopback where a refusal is needed), cheap-profile Argon2.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from api.accounts.models import Account, LoginSession, RecoveryToken
from api.accounts.tokens import token_hash
from api.mail.transports import transport_from_url
from engine.core import AttemptRecord, attempt_t
from tests.api.conftest import NEW_PASSWORD, OLD_PASSWORD, PUBLIC_BASE_URL, Api, assert_error
from tests.support.smtp import SmtpSink

T0 = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)
VOLATILE_HEADERS = {"date", "x-request-id"}


def _password_body(token: str, password: str = NEW_PASSWORD, confirm: str | None = None) -> dict:
    return {"token": token, "password": password, "password_confirm": confirm or password}


# -- POST /api/recovery -----------------------------------------------------------------


def test_forgot_password_answers_202_accepted_and_records_a_requested_attempt(api: Api) -> None:
    answer = api.client.post(
        "/api/recovery",
        json={"email": "Someone@Example.com"},
        headers={"User-Agent": "pytest-browser", "Accept-Language": "fr-CA,fr;q=0.9"},
    )
    assert answer.status_code == 202
    assert answer.content == b'{"status":"accepted"}'
    [attempt] = api.attempts()
    assert (attempt.state, attempt.subject, attempt.data["locale"]) == (
        "requested",
        "someone@example.com",
        "fr",
    )
    assert attempt.data["user_agent"] == "pytest-browser"
    assert attempt.data["client_ip"] == "testclient"


def test_lang_query_parameter_wins_over_accept_language(api: Api) -> None:
    api.client.post(
        "/api/recovery?lang=fr", json={"email": "a@example.com"}, headers={"Accept-Language": "en"}
    )
    [attempt] = api.attempts()
    assert attempt.data["locale"] == "fr"


def _comparable(answer: Any) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted((k, v) for k, v in answer.headers.multi_items() if k not in VOLATILE_HEADERS)
    return answer.status_code, answer.content, headers


def test_known_unknown_throttled_and_undeliverable_addresses_get_byte_identical_answers(
    api: Api, smtp_sink: SmtpSink
) -> None:
    api.account("known@example.com")
    api.account("busy@example.com")
    api.account("bounce@example.com")
    refusing = api.services.worker_with(transport_from_url(smtp_sink.url, timeout=5))
    with freeze_time(T0, real_asyncio=True) as clock:
        # Three emails to busy@ in the hour: the next request is throttled.
        for _ in range(3):
            api.client.post("/api/recovery", json={"email": "busy@example.com"})
            api.dispatch()
            clock.tick(61)
        answers = {}
        recorded = {}
        for address in ("known@example.com", "nobody@example.com", "busy@example.com"):
            answers[address] = api.client.post("/api/recovery", json={"email": address})
            recorded[address] = _newest(api, address)
            api.dispatch()
        smtp_sink.refuse(550)
        answers["bounce@example.com"] = api.client.post(
            "/api/recovery", json={"email": "bounce@example.com"}
        )
        recorded["bounce@example.com"] = _newest(api, "bounce@example.com")
        asyncio.run(refusing.run_once())

    latest = {address: _newest(api, address).state for address in answers}
    assert latest == {
        "known@example.com": "emailed",
        "nobody@example.com": "unknown_account",
        "busy@example.com": "throttled",
        "bounce@example.com": "undeliverable",
    }
    shapes = {address: _comparable(answer) for address, answer in answers.items()}
    first = shapes["known@example.com"]
    assert first[0] == 202
    assert all(shape == first for shape in shapes.values()), shapes
    # The request path did the same work: one requested attempt, the same facts recorded.
    assert {(r.state, tuple(sorted(r.data))) for r in recorded.values()} == {
        ("requested", ("client_ip", "delivery", "email_submitted", "locale", "user_agent"))
    }


def test_a_duplicate_request_inside_the_cooldown_sends_nothing_and_answers_the_same(
    api: Api,
) -> None:
    api.account("known@example.com")
    with freeze_time(T0, real_asyncio=True) as clock:
        first = api.client.post("/api/recovery", json={"email": "known@example.com"})
        api.dispatch()
        clock.tick(10)  # well inside the 60 s resend cooldown
        duplicate = api.client.post("/api/recovery", json={"email": "Known@Example.com"})
        api.dispatch()
    assert first.status_code == 202
    assert _comparable(duplicate) == _comparable(first)
    older, newer = api.attempts()
    assert (older.state, newer.state) == ("emailed", "throttled")
    assert api.services.engine.history_sync(newer.id)[-1].detail == {"reason": "resend_cooldown"}
    assert len(api.messages()) == 1


def _newest(api: Api, subject: str) -> AttemptRecord:
    return max((a for a in api.attempts() if a.subject == subject), key=lambda a: a.created_at)


BAD_BODIES: list[tuple[str, Any]] = [
    ("/api/recovery", {"email": ["a@example.com"]}),
    ("/api/recovery", {"email": ["a@example.com", "b@example.com"]}),
    ("/api/recovery", {"email": {"address": "a@example.com"}}),
    ("/api/recovery", {"email": 42}),
    ("/api/recovery", {"email": None}),
    ("/api/recovery", {"email": True}),
    ("/api/recovery", {"email": "a@example.com,b@example.com"}),
    ("/api/recovery", {"email": "a@example.com; b@example.com"}),
    ("/api/recovery", {"email": "a@example.com\r\nBcc: b@example.com"}),
    ("/api/recovery", {"email": "a@example.com\nb@example.com"}),
    ("/api/recovery", {"email": "not-an-address"}),
    ("/api/recovery", {"email": ""}),
    ("/api/recovery", {"email": "a@example.com", "extra": 1}),
    ("/api/recovery", {}),
    ("/api/recovery", []),
    ("/api/recovery", "a@example.com"),
    ("/api/recovery", b"{not json"),
    ("/api/recovery", b'{"email": "a@example.com"'),
    ("/api/recovery", b""),
    ("/api/recovery", b"email=a@example.com&email=b@example.com"),
    ("/api/recovery/verify", {"token": ["x" * 43]}),
    ("/api/recovery/verify", {"token": 7}),
    ("/api/recovery/verify", {}),
    ("/api/recovery/verify", {"token": "short"}),
    ("/api/recovery/verify", {"token": "x" * 43}),
    ("/api/recovery/verify", {"token": "../../etc/passwd" + "a" * 30}),
    ("/api/recovery/password", {"token": "x" * 43, "password": ["a"], "password_confirm": "a"}),
    ("/api/recovery/password", {"token": "x" * 43, "password": "Lilac-Umbrella-Sonata-97!"}),
    ("/api/recovery/password", {"token": {"t": 1}, "password": "p", "password_confirm": "p"}),
    ("/api/recovery/password", _password_body("x" * 43)),
    ("/api/recovery/cancel", {"token": {"a": 1}}),
    ("/api/recovery/cancel", {"token": "y" * 43}),
    ("/api/login", {"email": ["a@example.com"], "password": "x"}),
    ("/api/login", {"email": "a@example.com", "password": 5}),
    ("/api/login", {"email": "a@example.com"}),
    ("/api/login", {"email": "a@example.com", "password": "x" * 5000}),
]


@pytest.mark.parametrize("path", sorted({path for path, _ in BAD_BODIES}))
def test_malformed_input_is_a_400_in_the_error_shape_and_changes_nothing(
    api: Api, path: str
) -> None:
    """Each bad body of the table (one app per endpoint keeps the suite fast)."""
    for body_path, body in BAD_BODIES:
        if body_path != path:
            continue
        if isinstance(body, bytes):
            answer = api.client.post(
                path, content=body, headers={"Content-Type": "application/json"}
            )
        else:
            answer = api.client.post(path, json=body)
        assert answer.status_code == 400, (body, answer.text)
        error = assert_error(answer, 400)
        # One code for every kind of malformed input; an unknown token is its own kind.
        assert error["code"] in ("invalid_input", "unknown_token"), (body, error)
    assert api.attempts() == []


def test_a_repeated_form_field_is_refused_never_an_email_to_a_second_address(api: Api) -> None:
    """The JSON API takes no form at all (415); the pages' form refuses a repeated field
    with a 400 (tests/api/test_pages.py)."""
    answer = api.client.post(
        "/api/recovery",
        content=b"email=a@example.com&email=b@example.com",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(answer, 415, "unsupported_media_type")
    assert api.attempts() == []


PUBLIC_JSON_BODIES = {
    "/api/recovery": {"email": "jane.doe@example.com"},
    "/api/recovery/verify": {"token": "x" * 43},
    "/api/recovery/password": {"token": "x" * 43, "password": "p", "password_confirm": "p"},
    "/api/recovery/cancel": {"token": "x" * 43},
    "/api/login": {"email": "jane.doe@example.com", "password": "Correct-Horse-Battery-42"},
}


@pytest.mark.parametrize("path", list(PUBLIC_JSON_BODIES))
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json-seq",
        None,
    ],
)
def test_the_json_api_takes_json_bodies_only_as_application_json(
    api: Api, path: str, content_type: str | None
) -> None:
    """A third-party page can make a browser POST `text/plain` or a form without a CORS
    preflight; with any Content-Type but application/json the JSON API refuses (415) and
    does nothing, while the same body as application/json is served."""
    api.account()
    body = json.dumps(PUBLIC_JSON_BODIES[path]).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    refused = api.client.post(path, content=body, headers=headers)
    assert_error(refused, 415, "unsupported_media_type")
    assert api.attempts() == [] and api.count(LoginSession.__table__) == 0
    served = api.client.post(
        path, content=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert served.status_code != 415


def test_an_oversize_body_is_a_quick_413_on_every_public_post(api: Api) -> None:
    huge = "a" * (1024 * 1024)
    body = {"email": huge, "token": "t", "password": huge, "password_confirm": huge}
    for path in ("/api/recovery", "/api/recovery/verify", "/api/recovery/password", "/api/login"):
        assert_error(api.client.post(path, json=body), 413, "body_too_large")
    assert api.attempts() == []


# -- the link: verify, password, cancel --------------------------------------------------------


def test_verify_opens_the_link_without_consuming_it(api: Api) -> None:
    api.account()
    token = api.link_token()
    for _ in range(3):
        answer = api.client.post("/api/recovery/verify", json={"token": token})
        assert answer.status_code == 200
        body = answer.json()
        assert set(body) == {"attempt_id", "state", "expires_at"}
        assert body["state"] == "link_opened"
    # GET and HEAD on the API never do anything (405), and the token still works.
    assert_error(api.client.get("/api/recovery/verify"), 405, "method_not_allowed")
    assert api.client.head("/api/recovery/verify").status_code == 405
    answer = api.client.post("/api/recovery/password", json=_password_body(token))
    assert (answer.status_code, answer.json()) == (200, {"state": "password_set"})


def test_a_weak_password_is_a_422_listing_every_violation_in_the_requests_language(
    api: Api,
) -> None:
    api.account()
    token = api.link_token()
    english = api.client.post("/api/recovery/password", json=_password_body(token, "jane", "other"))
    error = assert_error(english, 422, "password_policy")
    codes = {d["code"] for d in error["details"]}
    assert {"too_short", "missing_digit", "missing_special", "confirmation_mismatch"} <= codes
    for detail in error["details"]:
        assert set(detail) == {"code", "field", "message"}
        assert detail["field"] in ("password", "password_confirm")
    french = api.client.post(
        "/api/recovery/password",
        json=_password_body(token, "jane", "other"),
        headers={"Accept-Language": "fr-FR,fr;q=0.9"},
    )
    french_error = assert_error(french, 422, "password_policy")
    assert [d["code"] for d in french_error["details"]] == [d["code"] for d in error["details"]]
    assert [d["message"] for d in french_error["details"]] != [
        d["message"] for d in error["details"]
    ]
    by_query = api.client.post(
        "/api/recovery/password?lang=fr", json=_password_body(token, "jane", "other")
    )
    assert by_query.json() == french.json()
    # Nothing was consumed: a good password still goes through.
    assert api.client.post("/api/recovery/password", json=_password_body(token)).status_code == 200


def test_a_used_link_is_409_on_the_password_and_410_on_verify(api: Api) -> None:
    api.account()
    token = api.link_token()
    assert api.client.post("/api/recovery/password", json=_password_body(token)).status_code == 200
    again = api.client.post(
        "/api/recovery/password", json=_password_body(token, "Another-Fine-Pass-2031!")
    )
    assert_error(again, 409, "link_used")
    assert_error(api.client.post("/api/recovery/verify", json={"token": token}), 410, "link_used")


def test_a_link_is_live_at_the_deadline_and_410_expired_one_second_later(api: Api) -> None:
    api.account()
    with freeze_time(T0, real_asyncio=True) as clock:
        token = api.link_token()
        clock.tick(timedelta(minutes=60))
        assert api.client.post("/api/recovery/verify", json={"token": token}).status_code == 200
        clock.tick(1)
        error = assert_error(
            api.client.post("/api/recovery/verify", json={"token": token}), 410, "link_expired"
        )
        assert error["details"] == [{"reason": "expired"}]
        assert_error(api.client.post("/api/recovery/password", json=_password_body(token)), 410)


def test_a_newer_email_makes_the_older_link_410_superseded(api: Api) -> None:
    api.account()
    with freeze_time(T0, real_asyncio=True) as clock:
        first = api.link_token()
        clock.tick(61)  # past the resend cooldown
        second = api.link_token()
        error = assert_error(api.client.post("/api/recovery/verify", json={"token": first}), 410)
        assert error["details"] == [{"reason": "superseded"}]
        assert api.client.post("/api/recovery/verify", json={"token": second}).status_code == 200


def test_this_was_not_me_cancels_and_the_link_is_then_410(api: Api) -> None:
    api.account()
    token = api.link_token()
    answer = api.client.post("/api/recovery/cancel", json={"token": token})
    assert (answer.status_code, answer.json()) == (200, {"state": "cancelled"})
    error = assert_error(api.client.post("/api/recovery/verify", json={"token": token}), 410)
    assert error["details"] == [{"reason": "cancelled"}]
    assert_error(api.client.post("/api/recovery/password", json=_password_body(token)), 410)
    assert_error(api.client.post("/api/recovery/cancel", json={"token": token}), 410)


def _dead_token(api: Api, how: str) -> str:
    """A link token killed the way `how` says (expired, superseded, cancelled, used)."""
    api.account()
    if how == "expired":
        with freeze_time(T0, real_asyncio=True) as clock:
            token = api.link_token()
            clock.tick(timedelta(minutes=60, seconds=1))
            api.services.engine.sweep_sync()
        return token
    token = api.link_token()
    if how == "superseded":
        with freeze_time(datetime.now(UTC) + timedelta(seconds=61), real_asyncio=True):
            api.link_token()
    elif how == "cancelled":
        assert api.client.post("/api/recovery/cancel", json={"token": token}).status_code == 200
    else:
        assert (
            api.client.post("/api/recovery/password", json=_password_body(token)).status_code == 200
        )
    return token


@pytest.mark.parametrize("how", ["expired", "superseded", "cancelled", "used"])
def test_each_way_a_link_dies_has_its_own_code_on_every_endpoint_that_takes_a_token(
    api: Api, how: str
) -> None:
    """verify, password and cancel all name why the link is dead: 410 link_<how>, bar a used link
    on the password endpoint (409, someone submitted first)."""
    token = _dead_token(api, how)
    code = f"link_{how}"
    for path, body in (
        ("/api/recovery/verify", {"token": token}),
        ("/api/recovery/password", _password_body(token, "Another-Fine-Pass-2031!")),
        ("/api/recovery/cancel", {"token": token}),
    ):
        status = 409 if (how, path) == ("used", "/api/recovery/password") else 410
        error = assert_error(api.client.post(path, json=body), status, code)
        assert error["details"] == [{"reason": how}]


def test_the_link_that_changed_the_password_is_used_up_for_every_route(api: Api) -> None:
    api.account()
    token = api.link_token()
    assert api.client.post("/api/recovery/password", json=_password_body(token)).status_code == 200
    with api.services.engine.db.transaction(write=False) as conn:
        row = conn.execute(
            select(RecoveryToken.__table__).where(
                RecoveryToken.__table__.c.token_hash == token_hash(token)
            )
        ).one()
    assert row.used_at is not None
    assert_error(api.client.post("/api/recovery/cancel", json={"token": token}), 410)


async def test_twenty_concurrent_password_submissions_with_one_token_one_200_the_rest_409(
    make_api: Callable[..., Api],
) -> None:
    api = make_api(public_rate_limit_per_minute=100)
    api.account()
    async with AsyncTestClient(api.app) as client:
        answer = await client.post("/api/recovery", json={"email": "jane.doe@example.com"})
        assert answer.status_code == 202
        await api.services.worker.run_once()
        [token] = api.tokens_sent()
        assert (await client.post("/api/recovery/verify", json={"token": token})).status_code == 200
        answers = await asyncio.gather(
            *(client.post("/api/recovery/password", json=_password_body(token)) for _ in range(20))
        )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [409] * 19, statuses
    for answer in answers:
        if answer.status_code == 409:
            assert answer.json()["error"]["code"] == "link_used"
    [attempt] = api.attempts()
    assert attempt.state == "password_set"


# -- sign-in and sessions ---------------------------------------------------------------------


def test_login_returns_a_session_that_session_and_logout_use(api: Api) -> None:
    """Sign-in answers who signed in; the session answers who and in which language."""
    account = api.account(locale="fr")
    answer = api.client.post(
        "/api/login", json={"email": "JANE.doe@example.com", "password": OLD_PASSWORD}
    )
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"session_token", "expires_at", "account_id"}
    assert body["account_id"] == str(account.id)
    bearer = {"Authorization": f"Bearer {body['session_token']}"}
    me = api.client.get("/api/session", headers=bearer)
    assert me.status_code == 200
    assert me.json() == {
        "email_masked": "j***e@e***e.com",
        "expires_at": body["expires_at"],
        "account_id": str(account.id),
        "locale": "fr",
        "notices": [],
    }
    logout = api.client.post("/api/logout", headers=bearer)
    assert (logout.status_code, logout.content) == (204, b"")
    assert_error(api.client.get("/api/session", headers=bearer), 401, "invalid_session")
    assert_error(api.client.post("/api/logout", headers=bearer), 401, "invalid_session")


def test_session_and_logout_without_a_live_bearer_session_are_401(api: Api) -> None:
    for headers in (
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer x"},
        {"Authorization": "Bearer " + "z" * 43},
    ):
        session = api.client.get("/api/session", headers=headers)
        error_session = assert_error(session, 401, "invalid_session")
        error_logout = assert_error(api.client.post("/api/logout", headers=headers), 401)
        assert error_session == error_logout
        assert session.headers["www-authenticate"] == "Bearer"


def test_unknown_address_and_wrong_password_get_the_identical_401(api: Api) -> None:
    api.account()
    wrong = api.client.post(
        "/api/login", json={"email": "jane.doe@example.com", "password": "Not-The-Password-1!"}
    )
    unknown = api.client.post(
        "/api/login", json={"email": "nobody@example.com", "password": "Not-The-Password-1!"}
    )
    assert_error(wrong, 401, "invalid_credentials")
    assert _comparable(wrong) == _comparable(unknown)


def test_login_slows_down_after_five_failures_and_a_reset_still_works_meanwhile(api: Api) -> None:
    api.account()
    with freeze_time(T0, real_asyncio=True) as clock:
        old_session = api.client.post(
            "/api/login", json={"email": "jane.doe@example.com", "password": OLD_PASSWORD}
        ).json()["session_token"]
        for _ in range(5):
            answer = api.client.post(
                "/api/login", json={"email": "jane.doe@example.com", "password": "Wrong-Pass-99!"}
            )
            assert_error(answer, 401)
        slowed = api.client.post(
            "/api/login", json={"email": "jane.doe@example.com", "password": OLD_PASSWORD}
        )
        assert_error(slowed, 429, "login_slowed_down")
        retry_after = int(slowed.headers["retry-after"])
        assert retry_after >= 1
        # The reset goes through while sign-in is slowed down...
        token = api.link_token()
        assert (
            api.client.post("/api/recovery/password", json=_password_body(token)).status_code == 200
        )
        # ...and it revoked the session opened before it.
        old = {"Authorization": f"Bearer {old_session}"}
        assert_error(api.client.get("/api/session", headers=old), 401, "invalid_session")
        clock.tick(retry_after)
        signed_in = api.client.post(
            "/api/login", json={"email": "jane.doe@example.com", "password": NEW_PASSWORD}
        )
        assert signed_in.status_code == 200
    [attempt] = api.attempts()
    assert attempt.state == "logged_in"


# -- requests that used to be 500s --------------------------------------------------------------

JSON_POSTS = [
    "/api/recovery",
    "/api/recovery/verify",
    "/api/recovery/password",
    "/api/recovery/cancel",
    "/api/login",
    "/api/support/attempts/00000000-0000-0000-0000-000000000000/cancel",
    "/api/support/attempts/00000000-0000-0000-0000-000000000000/resend",
]
DEEP_JSON = b"[" * 3000 + b"]" * 3000


def _one_line_each(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What was logged: nothing above INFO, no traceback, each record one line."""
    records = list(caplog.records)
    assert [r for r in records if r.levelno > logging.INFO] == []
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in records)
    return records


@pytest.mark.parametrize("path", JSON_POSTS)
def test_json_nested_a_thousand_deep_is_a_400_logged_in_one_line(
    api: Api, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    headers = {"Content-Type": "application/json", **api.support_headers("write")}
    answer = api.client.post(path, content=DEEP_JSON, headers=headers)
    assert_error(answer, 400, "invalid_input")
    access = [r for r in _one_line_each(caplog) if r.name == "recovery.access"]
    assert [r.getMessage().split()[:3] for r in access] == [["POST", path, "400"]]


@pytest.mark.parametrize("host", ["127.0.0.1:evil", "localhost:99999", "accounts.example.test:x"])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/recovery"),
        ("POST", "/api/login"),
        ("GET", "/api/flows"),
        ("GET", "/login"),
        ("POST", "/login"),
        ("GET", "/recovery"),
        ("GET", "/recovery/reset"),
        ("POST", "/recovery/reset"),
    ],
)
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_host_header_with_a_bad_port_is_a_400_and_records_nothing(
    api: Api, host: str, method: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"json": {"email": "jane.doe@example.com", "password": "x"}} if method == "POST" else {}
    answer = api.client.request(method, path, headers={"Host": host}, **body)
    assert answer.status_code == 400
    if path.startswith("/api"):
        assert_error(answer, 400, "invalid_host")
    else:
        assert answer.headers["content-type"].startswith("text/html")
    _one_line_each(caplog)
    assert api.attempts() == []


@pytest.mark.parametrize("path", ["/static/%00", "/static/pages%00.css", "/static/%0d%0a"])
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_static_file_name_with_a_control_character_is_a_404_logged_in_one_line(
    api: Api, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert_error(api.client.get(path), 404, "not_found")
    _one_line_each(caplog)
    assert api.client.get("/static/pages.css").status_code == 200


# -- Host headers ---------------------------------------------------------------------------------


def test_links_come_from_public_base_url_never_from_forged_host_headers(api: Api) -> None:
    api.account()
    api.link_token(**{"X-Forwarded-Host": "evil.example", "Forwarded": "host=evil.example"})
    [message] = api.messages()
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content()
    assert f"{PUBLIC_BASE_URL}/recovery/reset?token=" in text
    assert "evil.example" not in message.as_string()


def test_a_foreign_host_header_is_refused_and_records_nothing(api: Api) -> None:
    answer = api.client.post(
        "/api/recovery", json={"email": "a@example.com"}, headers={"Host": "evil.example"}
    )
    assert_error(answer, 400, "invalid_host")
    assert api.attempts() == []
    ok = api.client.post(
        "/api/recovery",
        json={"email": "a@example.com"},
        headers={"Host": "accounts.example.test:443"},
    )
    assert ok.status_code == 202


# -- secrets -------------------------------------------------------------------------------


def test_no_token_password_hash_or_session_token_reaches_a_log_or_a_wrong_answer(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api.account()
    answers = []
    token = api.link_token()
    answers.append(api.client.post("/api/recovery/verify", json={"token": token}))
    answers.append(
        api.client.post("/api/recovery/password", json=_password_body(token, "short1!", "short1!"))
    )
    answers.append(api.client.post("/api/recovery/password", json=_password_body(token)))
    answers.append(
        api.client.post("/api/recovery/password", json=_password_body(token, NEW_PASSWORD + "x"))
    )
    answers.append(
        api.client.post("/api/login", json={"email": "jane.doe@example.com", "password": "nope"})
    )
    login = api.client.post(
        "/api/login", json={"email": "jane.doe@example.com", "password": NEW_PASSWORD}
    )
    session_token = login.json()["session_token"]
    bearer = {"Authorization": f"Bearer {session_token}"}
    answers.append(api.client.get("/api/session", headers=bearer))
    answers.append(api.client.post("/api/logout", headers=bearer))
    answers.append(api.client.get("/api/session", headers=bearer))
    api.dispatch()  # the "password changed" notification

    with api.services.engine.db.transaction(write=False) as conn:
        account = conn.execute(select(Account.__table__)).one()
        session_hashes = list(conn.execute(select(LoginSession.__table__.c.token_hash)).scalars())
    secrets_ = [
        token,
        token_hash(token),
        NEW_PASSWORD,
        OLD_PASSWORD,
        "short1!",
        session_token,
        *session_hashes,
        *account.password_history,
    ]
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert any(r.name == "recovery.access" for r in caplog.records), "access log was active"
    for secret in secrets_:
        assert secret not in logged
        for answer in answers:
            assert secret not in answer.text
    assert token_hash(session_token) in session_hashes


def test_the_attempt_rows_hold_no_token_or_password(api: Api) -> None:
    api.account()
    token = api.link_token()
    api.client.post("/api/recovery/password", json=_password_body(token))
    with api.services.engine.db.transaction(write=False) as conn:
        stored = " ".join(str(tuple(r)) for r in conn.execute(select(attempt_t)))
    assert token not in stored and NEW_PASSWORD not in stored
