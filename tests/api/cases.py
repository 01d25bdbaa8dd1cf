"""Helpers for the support-handled recovery tests: a case submitted over HTTP, and the code
and links read out of the emails the real worker sent (file transport or SMTP sink)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from email.message import EmailMessage
from typing import Any

from tests.api.conftest import TOKEN_IN_LINK, Api

FLOW = "assisted_recovery"
CONTACT = "jane.new@mail.example"
STATEMENT = "My old work mailbox was closed when I left the company; I still use the account."
CODE = re.compile(r"^\s*(\d{6})\s*$", re.MULTILINE)
CANCEL_LINK = re.compile(r"/assisted-recovery/cancel\?token=([A-Za-z0-9_-]+)")
ANSWER_LINK = re.compile(r"/assisted-recovery/answer\?token=([A-Za-z0-9_-]+)")
GRANT_LINK = TOKEN_IN_LINK
# Enough passes of the worker for a transition's queued work and what that work queues.
DRAIN_PASSES = 10


def case_body(**overrides: Any) -> dict[str, Any]:
    """A well-formed request for the account of the `api.account()` default."""
    body: dict[str, Any] = {
        "email": "jane.doe@example.com",
        "contact_email": CONTACT,
        "name": "Jane Doe",
        "statement": STATEMENT,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def drain(api: Api) -> int:
    """Run the application's worker until it finds nothing to do; how much it handled."""
    handled = 0
    for _ in range(DRAIN_PASSES):
        done = asyncio.run(api.services.worker.run_once())
        if done == 0:
            break
        handled += done
    return handled


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def mail_to(found: Iterable[EmailMessage], address: str) -> list[EmailMessage]:
    """The messages whose To header names `address` (case aside), in order."""
    return [m for m in found if address.lower() in str(m["To"]).lower()]


def messages(api: Api) -> list[EmailMessage]:
    """What the application sent: the real SMTP server's messages when the test gave it one
    (`api.sink`), else the file transport's."""
    sink = getattr(api, "sink", None)
    return list(sink.messages) if sink is not None else api.messages()


def code_in(message: EmailMessage) -> str:
    found = CODE.search(text_of(message))
    assert found, text_of(message)
    return found.group(1)


def token_in(message: EmailMessage, pattern: re.Pattern[str]) -> str:
    found = pattern.search(text_of(message))
    assert found, text_of(message)
    return found.group(1)


def submit(api: Api, **overrides: Any) -> Any:
    """POST the request; the answer."""
    return api.client.post("/api/assisted-recovery", json=case_body(**overrides))


def confirmed_case(api: Api, contact: str = CONTACT, **overrides: Any) -> str:
    """A case submitted, its code emailed and typed back; its id."""
    answer = submit(api, contact_email=contact, **overrides)
    assert answer.status_code == 202, answer.text
    drain(api)
    code = code_in(mail_to(messages(api), contact)[-1])
    confirmed = api.client.post(
        "/api/assisted-recovery/confirm", json={"contact_email": contact, "code": code}
    )
    assert confirmed.status_code == 200, confirmed.text
    drain(api)
    return str(newest_case(api).id)


def newest_case(api: Api) -> Any:
    found = [a for a in api.attempts() if a.flow == FLOW]
    assert found, "no case recorded"
    return max(found, key=lambda a: (a.created_at, str(a.id)))


def fire(api: Api, case_id: str, event: str, reason: str = "checked the details") -> Any:
    """Support fires an event at the case through the generic endpoint (role write)."""
    return api.client.post(
        f"/api/support/attempts/{case_id}/events/{event}",
        json={"reason": reason},
        headers=writer(api),
    )


def writer(api: Api) -> dict[str, str]:
    """One write key per application, made on first use."""
    headers = getattr(api, "_writer_headers", None)
    if headers is None:
        headers = api.support_headers("write", name="case-agent")
        api._writer_headers = headers  # type: ignore[attr-defined]
    return headers


def detail(api: Api, case_id: str) -> dict[str, Any]:
    answer = api.client.get(f"/api/support/attempts/{case_id}", headers=writer(api))
    assert answer.status_code == 200, answer.text
    return dict(answer.json())
