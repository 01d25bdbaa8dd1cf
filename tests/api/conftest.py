"""Fixtures for the HTTP tests: one real application per test, on SQLite and PostgreSQL.

`api` is an `Api`: the settings, the services `create_app` runs on, a Litestar
`TestClient`, and helpers that do what a person or an operator would: create
an account, ask for a link and read it from the mail the real dispatcher
wrote (file transport), create a support key. `make_api(**settings)` builds
one with other settings (rate limits, trusted proxies...).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import func, select

from api.accounts.models import Account
from api.accounts.passwords import Argon2Hasher
from api.services import Services, build_services
from api.settings import Settings
from api.web.app import create_app
from engine.core import AttemptRecord
from tests.support.redis import redis_server  # noqa: F401  (a fixture: shared rate limits)
from tests.support.smtp import smtp_sink  # noqa: F401  (a fixture: the enumeration test)

OLD_PASSWORD = "Correct-Horse-Battery-42"
NEW_PASSWORD = "Lilac-Umbrella-Sonata-97!"
PUBLIC_BASE_URL = "https://accounts.example.test"
TOKEN_IN_LINK = re.compile(r"/recovery/reset\?token=([A-Za-z0-9_-]+)")


class Api:
    """An application under test, and what a test needs around it."""

    def __init__(self, settings: Settings, mailbox: Path) -> None:
        self.settings = settings
        self.mailbox = mailbox
        self.services: Services = build_services(
            settings, hasher=Argon2Hasher.for_tests(max_concurrent=8)
        )
        self.app: Litestar = create_app(settings, services=self.services)
        self.client = TestClient(self.app)

    # -- people and keys ---------------------------------------------------

    def account(
        self,
        address: str = "Jane.Doe@Example.com",
        *,
        name: str = "Jane Doe",
        password: str = OLD_PASSWORD,
        locale: str = "en",
    ) -> Account:
        return self.services.accounts.create_sync(
            email=address, name=name, password=password, locale=locale
        )

    def support_headers(self, role: str = "read", name: str | None = None) -> dict[str, str]:
        key = self.services.support.create_key_sync(name or f"agent-{role}", role)
        return {"Authorization": f"Bearer {key}"}

    # -- mail ----------------------------------------------------------------

    def dispatch(self) -> int:
        """One pass of the application's own worker (its mail: the file transport)."""
        return asyncio.run(self.services.worker.run_once())

    def messages(self) -> list[email.message.EmailMessage]:
        found = []
        for path in sorted(self.mailbox.glob("*.eml")):
            found.append(
                email.message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[arg-type]
            )
        return found  # type: ignore[return-value]

    def tokens_sent(self) -> list[str]:
        tokens = []
        for message in self.messages():
            body = message.get_body(preferencelist=("plain",))
            assert body is not None
            tokens += TOKEN_IN_LINK.findall(body.get_content())
        return tokens

    def link_token(self, address: str = "jane.doe@example.com", **headers: str) -> str:
        """Ask for a link over HTTP, let the dispatcher email it, and read the token."""
        before = len(self.tokens_sent())
        answer = self.client.post("/api/recovery", json={"email": address}, headers=headers)
        assert answer.status_code == 202, answer.text
        self.dispatch()
        sent = self.tokens_sent()
        assert len(sent) == before + 1, "exactly one email should have been sent"
        return sent[-1]

    # -- the database ------------------------------------------------------------

    def attempts(self) -> list[AttemptRecord]:
        from engine.core import attempt_t

        with self.services.engine.db.transaction(write=False) as conn:
            rows = conn.execute(select(attempt_t).order_by(attempt_t.c.created_at))
            return [AttemptRecord.from_row(r) for r in rows]

    def count(self, table: Any, *where: Any) -> int:
        with self.services.engine.db.transaction(write=False) as conn:
            return int(
                conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
            )

    def close(self) -> None:
        self.client.__exit__(None, None, None)
        self.services.engine.db.close()


def api_settings(db_url: str, mailbox: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "public_base_url": PUBLIC_BASE_URL,
        "mail_url": f"file://{mailbox}",
        "db_pool_size": 4,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_api(db_url: str, tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Build an `Api` on the test database with settings overrides; closed after the test."""
    made: list[Api] = []

    def make(**overrides: Any) -> Api:
        mailbox = tmp_path / f"mail{len(made)}"
        api = Api(api_settings(db_url, mailbox, **overrides), mailbox)
        api.client.__enter__()
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    """The application with default settings (bar the test database and mailbox)."""
    return make_api()


def assert_error(answer: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The answer has `status` and the one error shape (and `code`, if given)."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    assert isinstance(error["details"], list)
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.fixture
def graphviz_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """How many times Graphviz's `dot` has run: the real program, behind a counting shim
    first on PATH. Skips the test without Graphviz."""
    real = shutil.which("dot")
    if real is None:
        pytest.skip("Graphviz's dot is not installed")
    shim = tmp_path / "graphviz-shim"
    shim.mkdir()
    log = tmp_path / "graphviz-runs.log"
    script = shim / "dot"
    script.write_text(f'#!/bin/sh\necho run >> "{log}"\nexec "{real}" "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ.get('PATH', '')}")
    return lambda: len(log.read_text().splitlines()) if log.exists() else 0
