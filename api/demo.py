"""`recovery demo`: the five steps of a recovery, walked against a running server.

The demo creates its own account (directly in the configured database, as
`recovery accounts create` does), then drives the journey over HTTP like a
front end would: "Forgot password?", the email (read from the file
transport's directory), opening the link, choosing a new password, signing
in. After each step it reads the attempt's event log from the same database
and prints every state the attempt went through, so the output is the
persisted journey, not the demo's hopes:

    requested → emailed → link_opened → password_set → logged_in

With `--code` it types the email's one-time code (`POST /api/recovery/code`)
instead of opening the link, which it never touches: the same states, the
attempt opened by the code's token.

It never prints a token, a code, a password or a session token. It reads state from
the database rather than the support API so that it does not have to mint a
support key (a credential) as a side effect of a demonstration.
"""

from __future__ import annotations

import email.policy
import re
import secrets
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx

from api.accounts.addresses import normalise_email
from api.services import Services, build_services
from api.settings import Settings
from engine import Engine
from flows.password_recovery import NAME

JOURNEY = ("requested", "emailed", "link_opened", "password_set", "logged_in")
DEMO_NAME = "Demo Person"
POLL_SECONDS = 0.1
HTTP_TIMEOUT_SECONDS = 15.0
_LINK = re.compile(r"https?://\S+/recovery/reset\?token=[A-Za-z0-9_-]+")
# The code stands alone on its line in the plain-text part (flow version 2).
_CODE = re.compile(r"^(\d{6,12})\s*$", re.MULTILINE)

T = TypeVar("T")


class DemoFailed(Exception):
    """The demo could not complete a step; the message says which and why, in one line."""


def strong_password() -> str:
    """A random password that passes both policies (letters, digits, a special, 28 chars)."""
    return f"{secrets.token_urlsafe(18)}#7q"


def _wait(what: str, timeout: float, probe: Callable[[], T | None]) -> T:
    """Poll `probe` until it returns something, or fail saying what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise DemoFailed(f"{what} within {timeout:g} s")
        time.sleep(POLL_SECONDS)


@dataclass
class _Journey:
    """The attempt under way and the states already printed."""

    engine: Engine
    attempt_id: uuid.UUID
    timeout: float
    printed: list[str] = field(default_factory=list)

    def states(self) -> list[str]:
        """Every state the attempt entered, in order (repeated opens counted once)."""
        states: list[str] = []
        for event in self.engine.history_sync(self.attempt_id):
            if event.accepted and event.to_state and (not states or states[-1] != event.to_state):
                states.append(event.to_state)
        return states

    def reach(self, state: str, note: str) -> None:
        """Wait until the attempt is in `state` or past it, then print the states up to it.

        The server moves on by itself (the dispatcher may email the link before
        the demo looks), so "past it" counts; what is printed comes from the log.
        """
        target = JOURNEY.index(state)

        def probe() -> str | None:
            current = self.engine.read_sync(self.attempt_id).state
            if current not in JOURNEY:
                raise DemoFailed(_why_off_path(current))
            return current if JOURNEY.index(current) >= target else None

        _wait(f"the attempt did not reach {state}", self.timeout, probe)
        for seen in self.states()[len(self.printed) :]:
            if seen not in JOURNEY or JOURNEY.index(seen) > target:
                break
            self.printed.append(seen)
            print(f"{seen:<13} {note if seen == state else ''}".rstrip(), flush=True)


def _why_off_path(state: str) -> str:
    hints = {
        "unknown_account": "the server found no account for the demo address: is it using "
        "the same RECOVERY_DATABASE_URL as this command?",
        "throttled": "the server throttled the request (too many recent requests for it)",
        "undeliverable": "the server's mail transport refused the email",
        "expired": "the link expired before the demo could use it",
    }
    return f"the attempt went to {state}: {hints.get(state, 'the journey was interrupted')}"


def _message_to(path: Path, address: str) -> EmailMessage | None:
    try:
        message = BytesParser(policy=email.policy.default).parsebytes(path.read_bytes())
    except OSError:
        return None
    assert isinstance(message, EmailMessage)
    recipients = [addr.casefold() for _n, addr in getaddresses(message.get_all("To") or [])]
    return message if address.casefold() in recipients else None


@dataclass(frozen=True)
class Emailed:
    """The newest recovery email to the demo's address: its file, its link's token, and
    its one-time code (None in an email of version 1, which carries none)."""

    path: Path
    token: str
    code: str | None


def find_link(mailbox: Path, address: str) -> Emailed | None:
    """The newest recovery email to `address` in `mailbox`, if any."""
    if not mailbox.is_dir():
        return None
    for path in sorted(mailbox.glob("*.eml"), reverse=True):
        message = _message_to(path, address)
        if message is None:
            continue
        body = message.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
        match = _LINK.search(text)
        if match:
            token = parse_qs(urlsplit(match.group(0)).query).get("token", [""])[0]
            code = _CODE.search(text)
            if token:
                return Emailed(path, token, code.group(1) if code else None)
    return None


class _Server:
    """The HTTP side: the calls a front end makes, each checked for the status it expects."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT_SECONDS)

    def check_reachable(self) -> None:
        try:
            response = self.http.get("/health")
        except httpx.HTTPError as exc:
            raise DemoFailed(
                f"cannot reach the server at {self.base_url} ({type(exc).__name__}): "
                "is `recovery serve` running there?"
            ) from None
        if response.status_code != 200:
            raise DemoFailed(f"GET {self.base_url}/health answered {response.status_code}")

    def call(self, method: str, path: str, expect: int, **kw: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise DemoFailed(f"{method} {path} failed: {type(exc).__name__}") from None
        if response.status_code != expect:
            raise DemoFailed(
                f"{method} {path} answered {response.status_code}, expected {expect}: "
                f"{_error_of(response)}"
            )
        return response

    def close(self) -> None:
        self.http.close()


def _error_of(response: httpx.Response) -> str:
    """The error code and message of a JSON error answer (they never carry secrets)."""
    try:
        error = response.json().get("error", {})
        return f"{error.get('code')}: {error.get('message')}"
    except (ValueError, AttributeError):
        return response.reason_phrase


def _latest_attempt(engine: Engine, subject: str) -> uuid.UUID | None:
    latest = engine.queries.latest_sync(subject, NAME)
    return latest.id if latest else None


def run_demo(
    settings: Settings, *, base_url: str, mailbox: Path, timeout: float, code: bool = False
) -> None:
    """Walk the journey (by the link, or by the code) and print each state; `DemoFailed`
    says which step went wrong."""
    # Print the arrows even where standard output cannot encode them.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")
    server = _Server(base_url)
    try:
        server.check_reachable()
        services = build_services(settings)
        try:
            _walk(services, server, mailbox, timeout, by_code=code)
        finally:
            services.close()
    finally:
        server.close()


def _walk(
    services: Services, server: _Server, mailbox: Path, timeout: float, *, by_code: bool
) -> None:
    engine = services.engine
    address = f"demo.{secrets.token_hex(4)}@example.com"
    services.accounts.create_sync(email=address, name=DEMO_NAME, password=strong_password())
    print(f"demo account {address} created; server {server.base_url}; mailbox {mailbox}")

    server.call("POST", "/api/recovery", 202, json={"email": address})
    attempt_id = _latest_attempt(engine, normalise_email(address))
    if attempt_id is None:
        raise DemoFailed(
            "the server accepted the request but no attempt is in this database: "
            "is it using the same RECOVERY_DATABASE_URL as this command?"
        )
    journey = _Journey(engine, attempt_id, timeout)
    journey.reach("requested", f"POST /api/recovery -> 202 (attempt {attempt_id})")

    def mail_or_stop() -> Emailed | None:
        state = engine.read_sync(attempt_id).state
        if state not in JOURNEY:
            raise DemoFailed(_why_off_path(state))
        return find_link(mailbox, address)

    mail = _wait(f"no recovery email to {address} arrived in {mailbox}", timeout, mail_or_stop)
    token = mail.token
    if not by_code:
        journey.reach("emailed", f"email {mail.path.name} holds the link")
        opened = server.call("POST", "/api/recovery/verify", 200, json={"token": token}).json()
        journey.reach(
            "link_opened", f"POST /api/recovery/verify -> 200, expires {opened.get('expires_at')}"
        )
    else:
        if mail.code is None:
            raise DemoFailed(f"email {mail.path.name} carries no code (a version 1 attempt?)")
        journey.reach("emailed", f"email {mail.path.name} holds the link and a code")
        opened = server.call(
            "POST", "/api/recovery/code", 200, json={"email": address, "code": mail.code}
        ).json()
        # From here on the code's token does what the link's would; the link is never used.
        token = opened["token"]
        journey.reach(
            "link_opened",
            f"POST /api/recovery/code -> 200, expires {opened.get('expires_at')} (link unopened)",
        )

    new_password = strong_password()
    server.call(
        "POST",
        "/api/recovery/password",
        200,
        json={"token": token, "password": new_password, "password_confirm": new_password},
    )
    journey.reach("password_set", "POST /api/recovery/password -> 200")

    session = server.call(
        "POST", "/api/login", 200, json={"email": address, "password": new_password}
    ).json()
    bearer = {"Authorization": f"Bearer {session['session_token']}"}
    who = server.call("GET", "/api/session", 200, headers=bearer).json()
    server.call("POST", "/api/logout", 204, headers=bearer)
    journey.reach("logged_in", f"POST /api/login -> 200, signed in as {who.get('email_masked')}")

    if journey.printed != list(JOURNEY):
        raise DemoFailed(f"unexpected journey: {' → '.join(journey.printed)}")
    route = engine.read_sync(attempt_id).data.get("route")
    print(f"journey: {' → '.join(journey.printed)}" + (f" (by the {route})" if by_code else ""))
