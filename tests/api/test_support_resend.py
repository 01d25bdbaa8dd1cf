"""The JSON support API's resend follows the console's rules (SQLite and PostgreSQL).

Inside the cooldown, or past the hourly limit, a resend is refused (429, the one error
shape, `Retry-After`, the rule and the moment it becomes possible), and goes through
exactly at that moment; an override with a reason resends anyway and the audit keeps
both; an override naming an email that is no longer the newest is refused; two calls a
second apart send one email.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from freezegun import freeze_time
from sqlalchemy import select

from api.support.models import AuditEntry
from flows import password_recovery
from tests.api.conftest import Api, assert_error

T0 = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)
ADDRESS = "jane.doe@example.com"


def _first_email(api: Api) -> str:
    """The person's own "Forgot password?", emailed now: its attempt id."""
    api.account()
    attempt = asyncio.run(
        password_recovery.request(
            api.services, ADDRESS, locale="en", client_ip="198.51.100.7", user_agent="agent/1"
        )
    )
    api.dispatch()
    return str(attempt.id)


def _resend(api: Api, attempt_id: str, headers: dict[str, str], **body: Any) -> Any:
    return api.client.post(
        f"/api/support/attempts/{attempt_id}/resend", json=body or None, headers=headers
    )


def _refusal(answer: Any) -> dict[str, Any]:
    error = assert_error(answer, 429, "resend_refused")
    [detail] = error["details"]
    return dict(detail)


def test_inside_the_cooldown_a_resend_is_refused_and_goes_exactly_at_its_end(
    api: Api,
) -> None:
    cooldown = timedelta(seconds=api.settings.resend_cooldown_seconds)
    writer = api.support_headers("write")
    with freeze_time(T0, real_asyncio=True) as clock:
        attempt_id = _first_email(api)
        clock.tick(cooldown - timedelta(seconds=1))
        refused = _resend(api, attempt_id, writer)
        assert refused.headers["retry-after"] == "1"
        detail = _refusal(refused)
        assert detail["rule"] == "resend_cooldown"
        assert datetime.fromisoformat(detail["possible_at"]) == T0 + cooldown
        assert detail["latest_attempt_id"] == attempt_id
        assert len(api.attempts()) == 1  # nothing was started
        clock.tick(timedelta(seconds=1))
        assert _resend(api, attempt_id, writer).status_code == 202


def test_past_the_hourly_limit_a_resend_waits_for_the_oldest_email_to_leave_the_hour(
    make_api: Callable[..., Api],
) -> None:
    api = make_api(resend_cooldown_seconds=0, emails_per_hour=2)
    writer = api.support_headers("write")
    with freeze_time(T0, real_asyncio=True) as clock:
        attempt_id = _first_email(api)
        clock.tick(10)
        assert _resend(api, attempt_id, writer).status_code == 202
        api.dispatch()
        clock.tick(timedelta(hours=1) - timedelta(seconds=11))  # one second before T0 + 1 h
        refused = _resend(api, attempt_id, writer)
        detail = _refusal(refused)
        assert detail["rule"] == "hourly_limit"
        assert datetime.fromisoformat(detail["possible_at"]) == T0 + timedelta(hours=1)
        assert refused.headers["retry-after"] == "1"
        clock.tick(1)  # the first email has left the hour
        assert _resend(api, attempt_id, writer).status_code == 202


def test_an_override_resends_anyway_and_the_audit_keeps_the_reason_and_the_rule(
    api: Api,
) -> None:
    writer = api.support_headers("write", name="writer-bo")
    with freeze_time(T0, real_asyncio=True) as clock:
        attempt_id = _first_email(api)
        clock.tick(1)
        # An override that names an older email than the newest is refused too.
        stale = _resend(api, attempt_id, writer, override_reason="deleted it", expected_latest="")
        assert _refusal(stale)["rule"] == "newer_email"
        done = _resend(
            api, attempt_id, writer, override_reason="deleted it", expected_latest=attempt_id
        )
        assert done.status_code == 202, done.text
    with api.services.engine.db.transaction(write=False) as conn:
        rows = conn.execute(
            select(AuditEntry.__table__)
            .where(AuditEntry.__table__.c.action == "resend")
            .order_by(AuditEntry.__table__.c.id)
        ).all()
    details = [(r.key_name, dict(r.detail)) for r in rows]
    assert [(name, d["outcome"]) for name, d in details] == [
        ("writer-bo", "resend_refused"),
        ("writer-bo", "ok"),
    ]
    assert details[1][1]["override_reason"] == "deleted it"
    assert details[1][1]["overridden"] == "resend_cooldown"


def test_two_resends_a_second_apart_send_one_email(api: Api) -> None:
    writer = api.support_headers("write")
    cooldown = api.settings.resend_cooldown_seconds
    with freeze_time(T0, real_asyncio=True) as clock:
        attempt_id = _first_email(api)
        clock.tick(cooldown)
        first = _resend(api, attempt_id, writer)
        clock.tick(1)
        second = _resend(api, attempt_id, writer)
        api.dispatch()
    assert first.status_code == 202
    assert _refusal(second)["rule"] == "resend_cooldown"
    assert len(api.tokens_sent()) == 2  # the person's email and one resend
