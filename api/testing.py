"""A test kit for the applications that use the service: the whole service in your test.

Installing the package registers this module as a pytest plugin (the `pytest11`
entry point `recovery`), which gives every test the `recovery` fixture: the real
application, started in the test's process on a throwaway SQLite file (migrated
like production), its mail captured in memory instead of sent, its worker run
when you read the mailbox, and its clock the system clock, which freezegun (or
time-machine) moves. A test can ask for a reset, read the email, jump past a
deadline and see the attempt expire in a few lines (the README shows one).

    def test_...(recovery):
        recovery.create_account("ada@example.com", "Ada Lovelace", "Copper-Meadow-58-Quartz!")
        recovery.client.post("/api/recovery", json={"email": "ada@example.com"})
        email = recovery.mailbox.last(to="ada@example.com")   # runs the worker first
        email.token, email.link, email.subject, email.text

`recovery.client` is a Litestar `TestClient` on the app; `recovery.admin_headers()`
gives an `Authorization` header with a key of role `admin`; `recovery.latest_attempt`
reads an address's newest attempt as support would (an overdue deadline applied).
Argon2 runs with its cheap test profile, so tests stay fast. `make_recovery(**settings)`
builds another with other settings (e.g. `link_ttl_minutes=15`).
"""

from __future__ import annotations

import asyncio
import email.policy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from api import migrate
from api.accounts.addresses import normalise_email
from api.accounts.models import Account
from api.accounts.passwords import Argon2Hasher
from api.services import Services, build_services
from api.settings import Settings
from api.web.app import create_app
from engine import AttemptRecord

__all__ = ["CapturedEmail", "Mailbox", "RecoveryKit", "make_recovery", "recovery"]

BASE_URL = "http://testserver.local"
LINK = re.compile(r"https?://[^\s\"'<>]+/recovery/reset\?token=([A-Za-z0-9_-]+)")
DEFAULT_FLOW = "password_recovery"


@dataclass(frozen=True)
class CapturedEmail:
    """One email the service sent, as its recipient would read it."""

    message: EmailMessage

    @property
    def to(self) -> str:
        return str(self.message["To"].addresses[0].addr_spec)

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        return str(part.get_content()) if part is not None else ""  # type: ignore[attr-defined]

    @property
    def html(self) -> str:
        part = self.message.get_body(preferencelist=("html",))
        return str(part.get_content()) if part is not None else ""  # type: ignore[attr-defined]

    @property
    def link(self) -> str:
        """The reset link in it (AssertionError if there is none)."""
        found = LINK.search(self.text)
        assert found, f"no reset link in the email {self.subject!r}"
        return found.group(0)

    @property
    def token(self) -> str:
        """The token of its reset link: what POST /api/recovery/verify and /password take."""
        found = LINK.search(self.text)
        assert found, f"no reset link in the email {self.subject!r}"
        return found.group(1)


class Mailbox:
    """The service's mail transport in a test: every message kept, none sent."""

    def __init__(self) -> None:
        self.sent: list[CapturedEmail] = []
        self._before_reading: Callable[[], object] = lambda: None

    async def send(self, message: EmailMessage) -> None:
        # A copy through the wire format, as a recipient would receive it.
        data = message.as_bytes(policy=email.policy.SMTPUTF8)
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        self.sent.append(CapturedEmail(parsed))  # type: ignore[arg-type]

    def messages(self, to: str | None = None) -> list[CapturedEmail]:
        """Every email sent so far (to one address, if given), after the worker ran."""
        self._before_reading()
        if to is None:
            return list(self.sent)
        wanted = normalise_email(to)
        return [m for m in self.sent if normalise_email(m.to) == wanted]

    def last(self, to: str | None = None) -> CapturedEmail:
        """The newest email (to one address); AssertionError if there is none."""
        found = self.messages(to)
        assert found, f"no email was sent{f' to {to}' if to else ''}"
        return found[-1]

    def __repr__(self) -> str:
        return f"Mailbox({len(self.sent)} sent)"


class RecoveryKit:
    """The service running in a test (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        migrate.upgrade(settings.database_url)
        self.settings = settings
        self.mailbox = Mailbox()
        self.services: Services = build_services(
            settings, hasher=Argon2Hasher.for_tests(), transport=self.mailbox
        )
        self.mailbox._before_reading = self.run_worker
        self.app = create_app(settings, services=self.services)
        self.client = TestClient(self.app, base_url=BASE_URL)
        self._admin: dict[str, str] | None = None

    def run_worker(self) -> int:
        """Run the worker until it finds nothing to do (mail, webhooks); how many items."""
        total = 0
        while handled := asyncio.run(self.services.worker.run_once()):
            total += handled
        return total

    def create_account(
        self, email: str, name: str, password: str, *, locale: str = "en", **more: Any
    ) -> Account:
        """An account, as `recovery accounts create` makes it (the policy applies)."""
        return self.services.accounts.create_sync(
            email=email, name=name, password=password, locale=locale, **more
        )

    def admin_headers(self) -> dict[str, str]:
        """`Authorization` with a key of role admin (made once)."""
        if self._admin is None:
            key = self.services.support.create_key_sync("test-kit", "admin")
            self._admin = {"Authorization": f"Bearer {key}"}
        return dict(self._admin)

    def latest_attempt(self, email: str, flow: str = DEFAULT_FLOW) -> AttemptRecord:
        """The address's newest attempt of `flow`, read as support reads it (an overdue
        deadline is applied first: the attempt is `expired` once its time has passed)."""
        found = self.services.engine.queries.latest_sync(normalise_email(email), flow)
        assert found is not None, f"no {flow} attempt for {email}"
        return self.services.engine.get_sync(found.id)

    def close(self) -> None:
        self.client.__exit__(None, None, None)
        self.services.close()


def kit_settings(folder: Path, **overrides: Any) -> Settings:
    """Settings of a kit on a SQLite file in `folder`."""
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{folder / 'recovery.db'}",
        "public_base_url": BASE_URL,
        "mail_url": f"file://{folder / 'unused-mail'}",
        "extra_allowed_hosts": ("testserver.local",),
        "db_pool_size": 2,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_recovery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RecoveryKit]]:
    """Build a `RecoveryKit` with settings of your own (closed after the test)."""
    made: list[RecoveryKit] = []

    def make(**settings: Any) -> RecoveryKit:
        kit = RecoveryKit(kit_settings(tmp_path_factory.mktemp("recovery"), **settings))
        kit.client.__enter__()
        made.append(kit)
        return kit

    yield make
    for kit in made:
        kit.close()


@pytest.fixture
def recovery(make_recovery: Callable[..., RecoveryKit]) -> RecoveryKit:
    """The service with its default settings, in this test (see the module docstring)."""
    return make_recovery()
