"""A reset that sticks: sign-ins with the old password racing the password change, against a
real `recovery serve` subprocess on SQLite and PostgreSQL (SPEC §9, rules added to §4).

Each round asks for a link, opens it, then submits the new password while eight sign-ins with
the old password arrive 0 to 300 ms after it, from their own connections. Once the reset has
answered, these must hold: the new password signs in and the old one does not, no session
opened with the old password is live, and the attempt reached `logged_in` only through the
sign-in with the new password. The server hashes with the production Argon2 parameters, so
every verification and every hash takes long enough for the requests to overlap.

Two kinds of account: one whose stored hash was made with other (cheaper) Argon2
parameters, so each old-password sign-in rehashes and writes the rehash; and one whose hash
needs no rehash, so the sign-ins only open sessions.
"""

from __future__ import annotations

import email
import email.policy
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from api.accounts.accounts import Accounts
from api.accounts.models import Account
from api.accounts.passwords import Argon2Hasher
from api.services import build_services
from api.settings import Settings
from engine import Database
from engine.core import attempt_t, event_t
from tests.support.service import RunningService, running_service

pytestmark = pytest.mark.slow

ROUNDS = 4
OLD_LOGINS = 8
STAGGER_S = 0.04  # the old-password sign-ins start 0, 40, ..., 280 ms after the reset
OLD_PASSWORD = "Copper-Meadow-58-Quartz!"
NEW_PASSWORDS = [
    "Silent-Orchard-94-Beacon?",
    "Velvet-Harbour-27-Glacier!",
    "Amber-Falcon-63-Ridge#",
    "Cobalt-Lantern-85-Meadow%",
]
TOKEN = re.compile(r"/recovery/reset\?token=([A-Za-z0-9_-]+)")


@dataclass
class Served:
    """The server, the database it uses, and what the test needs to drive it."""

    service: RunningService
    db_url: str
    mailbox: Path

    def service_side(self, hasher: Argon2Hasher) -> tuple[Database, Accounts]:
        settings = Settings(database_url=self.db_url, mail_url=f"file://{self.mailbox}")
        services = build_services(settings, hasher=hasher)
        return services.engine.db, services.accounts

    def link_token(self, http: httpx.Client, address: str) -> str:
        before = len(list(self.mailbox.glob("*.eml")))
        assert http.post("/api/recovery", json={"email": address}).status_code == 202
        deadline = time.monotonic() + 30
        while len(files := sorted(self.mailbox.glob("*.eml"))) <= before:
            assert time.monotonic() < deadline, "the link never arrived"
            time.sleep(0.02)
        message = email.message_from_bytes(files[-1].read_bytes(), policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
        found = TOKEN.search(body)
        assert found is not None
        return found.group(1)


@pytest.fixture
def served(empty_db_url: str, tmp_path: Path) -> Iterator[Served]:
    """`recovery serve` on a fresh database (it applies the migrations itself)."""
    mailbox = tmp_path / "mail"
    env = {
        "RECOVERY_DATABASE_URL": empty_db_url,
        "RECOVERY_MAIL_URL": f"file://{mailbox}",
        "RECOVERY_DISPATCH_POLL_SECONDS": "0.05",
        # Neither limit is what this test is about: the old password's 401s after the
        # reset must not slow the owner down, nor the sign-ins hit the per-IP limit.
        "RECOVERY_PUBLIC_RATE_LIMIT_PER_MINUTE": "1000",
        "RECOVERY_LOGIN_FREE_FAILURES": "1000",
    }
    with running_service(env, cwd=tmp_path) as service:
        yield Served(service, empty_db_url, mailbox)


def _wait_for_emailed(db: Database, address: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        with db.transaction(write=False) as conn:
            states = conn.execute(
                select(attempt_t.c.state).where(attempt_t.c.subject == address)
            ).scalars()
            if "emailed" in list(states):
                return
        assert time.monotonic() < deadline, "the attempt was never recorded as emailed"
        time.sleep(0.02)


def _attempt_and_log_ins(db: Database, address: str) -> tuple[str, int]:
    with db.transaction(write=False) as conn:
        attempt = conn.execute(select(attempt_t).where(attempt_t.c.subject == address)).one()
        log_ins = conn.execute(
            select(event_t.c.id).where(
                event_t.c.attempt_id == attempt.id,
                event_t.c.event == "log_in",
                event_t.c.accepted.is_(True),
            )
        ).all()
    return attempt.state, len(log_ins)


def _race(served: Served, address: str, token: str, new_password: str) -> dict[str, object]:
    """The new password submitted, and old-password sign-ins arriving just after it."""
    start = threading.Barrier(OLD_LOGINS + 1)
    body = {"token": token, "password": new_password, "password_confirm": new_password}

    def reset() -> httpx.Response:
        with served.service.client() as http:
            start.wait()
            return http.post("/api/recovery/password", json=body)

    def old_login(n: int) -> httpx.Response:
        with served.service.client() as http:
            start.wait()
            time.sleep(n * STAGGER_S)
            return http.post("/api/login", json={"email": address, "password": OLD_PASSWORD})

    with ThreadPoolExecutor(OLD_LOGINS + 1) as pool:
        reset_answer = pool.submit(reset)
        logins = [pool.submit(old_login, n) for n in range(OLD_LOGINS)]
        return {"reset": reset_answer.result(), "logins": [f.result() for f in logins]}


def _after_the_reset(served: Served, db: Database, address: str, race: dict) -> None:
    """What must hold once the reset has answered, whatever the interleaving was."""
    reset = race["reset"]
    assert (reset.status_code, reset.json()) == (200, {"state": "password_set"})
    assert all(login.status_code in (200, 401) for login in race["logins"])
    with served.service.client() as http:
        live_old_sessions = 0
        for login in race["logins"]:
            if login.status_code == 200:
                bearer = {"Authorization": f"Bearer {login.json()['session_token']}"}
                live_old_sessions += http.get("/api/session", headers=bearer).status_code == 200
        # Read before the new password signs in: only that sign-in may move the attempt.
        before = _attempt_and_log_ins(db, address)
        old = http.post("/api/login", json={"email": address, "password": OLD_PASSWORD})
        new = http.post("/api/login", json={"email": address, "password": race["new_password"]})
    facts = {
        "live sessions opened with the old password": live_old_sessions,
        "attempt and its log_in events before the new password signs in": before,
        "old password signs in": old.status_code,
        "new password signs in": new.status_code,
        "attempt and its log_in events after": _attempt_and_log_ins(db, address),
    }
    assert facts == {
        "live sessions opened with the old password": 0,
        "attempt and its log_in events before the new password signs in": ("password_set", 0),
        "old password signs in": 401,
        "new password signs in": 200,
        "attempt and its log_in events after": ("logged_in", 1),
    }


@pytest.mark.parametrize("stored", ["older_parameters", "current_parameters"])
def test_old_password_sign_ins_racing_a_reset_never_outlive_it(served: Served, stored: str) -> None:
    """With a rehash on each old-password sign-in (older parameters) or without one, no
    interleaving of the sign-ins and the reset leaves the old password or one of its
    sessions alive, or the new password refused, or the attempt signed in by the old one."""
    hasher = Argon2Hasher.for_tests() if stored == "older_parameters" else Argon2Hasher()
    db, service = served.service_side(hasher)
    try:
        with served.service.client() as http:
            for round_ in range(ROUNDS):
                address = f"racer-{round_}@example.com"
                account = service.create_sync(
                    email=address, name="Noor Haddad", password=OLD_PASSWORD
                )
                with db.transaction(write=False) as conn:
                    stored_hash = conn.execute(
                        select(Account.__table__.c.password_hash).where(
                            Account.__table__.c.id == account.id
                        )
                    ).scalar_one()
                # The server hashes with the production parameters.
                assert Argon2Hasher().needs_rehash(stored_hash) == (stored == "older_parameters")
                token = served.link_token(http, address)
                _wait_for_emailed(db, address)
                assert http.post("/api/recovery/verify", json={"token": token}).status_code == 200
                race = _race(served, address, token, NEW_PASSWORDS[round_])
                race["new_password"] = NEW_PASSWORDS[round_]
                _after_the_reset(served, db, address, race)
    finally:
        db.close()
