"""The flow's mail work, run by the worker, against real databases (SQLite, PostgreSQL) and a
real SMTP server.

Attempts are recorded the way the "Forgot password?" request records them,
accounts are inserted with a cheap Argon2 hash, and the dispatcher mails
through `SmtpTransport` to the loopback `SmtpSink`. Time travels with
freezegun (`real_asyncio=True`, so the event loop and SMTP timeouts keep
real time).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import argon2
import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from sqlalchemy import insert, select

import flows
from api.accounts.addresses import normalise_email
from api.accounts.links import Link, NewLink, store_many
from api.accounts.models import Account, RecoveryToken
from api.accounts.passwords import Argon2Hasher
from api.accounts.tokens import token_hash
from api.mail.transports import FileTransport, MailTransport, SmtpTransport
from api.services import services_for
from api.settings import Settings
from api.support.reference import support_reference
from engine import Database, Engine
from engine.core import AttemptRecord, outbox_t
from engine.worker import Worker
from flows.password_recovery import NAME
from tests.support import smtp as smtp_support
from tests.support.commits import Commits
from tests.support.postgres import PostgresServer
from tests.support.smtp import ReceivedMessage, SmtpSink

# The fixture, until the root conftest loads tests.support.smtp as a plugin.
smtp_sink = smtp_support.smtp_sink

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
BASE_URL = "https://accounts.example.test"
HASHER = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "Correct-Horse-Battery-9"
TOKEN_RE = re.compile(r"/recovery/reset\?token=([A-Za-z0-9_-]+)")


# -- helpers --------------------------------------------------------------------


def make_settings(db_url: str, sink: SmtpSink, **overrides: Any) -> Settings:
    return Settings(
        database_url=db_url,
        mail_url=sink.url,
        public_base_url=BASE_URL,
        mail_from="Account recovery <no-reply@accounts.example.test>",
        **{"mail_retry_base_seconds": 1.0, **overrides},
    )


def add_account(
    database: Database,
    email: str,
    *,
    name: str = "Jane Doe",
    locale: str = "en",
    disabled: bool = False,
) -> Account:
    now = datetime.now(UTC)
    digest = HASHER.hash(PASSWORD)
    account = Account(
        email=email,
        email_normalized=normalise_email(email),
        name=name,
        locale=locale,
        password_hash=digest,
        password_history=[digest],
        disabled=disabled,
        created_at=now,
        password_changed_at=now,
    )
    with database.transaction() as conn:
        conn.execute(insert(Account.__table__).values(**account.model_dump()))
    return account


def request(engine: Engine, typed: str, locale: str = "en") -> AttemptRecord:
    """What POST /api/recovery records: the normalised address, language and request facts."""
    return engine.start_sync(
        NAME,
        subject=normalise_email(typed),
        actor="person",
        data={
            "email_submitted": typed,
            "locale": locale,
            "client_ip": "203.0.113.7",
            "user_agent": "pytest",
            "delivery": {"status": "queued", "tries": 0, "last_error": None, "sent_at": None},
        },
    )


def text_of(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def token_in(message: EmailMessage) -> str:
    found = TOKEN_RE.search(text_of(message))
    assert found is not None
    return found.group(1)


def token_rows(database: Database) -> list[dict[str, Any]]:
    with database.transaction(write=False) as conn:
        return [dict(r._mapping) for r in conn.execute(select(RecoveryToken.__table__))]


def outbox_rows(database: Database) -> list[dict[str, Any]]:
    with database.transaction(write=False) as conn:
        return [dict(r._mapping) for r in conn.execute(select(outbox_t))]


@pytest.fixture
def frozen() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(T0, real_asyncio=True) as factory:
        yield factory


@pytest.fixture
def engine(database: Database) -> Engine:
    return Engine(database, flows.registry())


@pytest.fixture
def settings(db_url: str, smtp_sink: SmtpSink) -> Settings:
    return make_settings(db_url, smtp_sink)


def Dispatcher(
    engine: Engine,
    settings: Settings,
    transport: MailTransport,
    on_send: Any = None,
    *,
    batch_size: int | None = None,
    max_concurrent_sends: int = 4,
) -> Worker:
    """What `recovery worker` runs on `engine`: the worker, its mail going to `transport`."""
    return services_for(
        engine,
        settings,
        hasher=Argon2Hasher.for_tests(),
        transport=transport,
        on_send=on_send,
        max_concurrent_sends=max_concurrent_sends,
        batch=batch_size,
    ).worker


@pytest.fixture
def dispatcher(engine: Engine, settings: Settings) -> Worker:
    return Dispatcher(engine, settings, SmtpTransport(settings.mail_url, timeout=2))


class AroundEachSend:
    """A real transport, with what someone else does just before or just after each send."""

    def __init__(
        self,
        inner: MailTransport,
        *,
        before: Callable[[EmailMessage], Awaitable[None]] | None = None,
        after: Callable[[EmailMessage], Awaitable[None]] | None = None,
    ) -> None:
        self.inner = inner
        self.before = before
        self.after = after

    async def send(self, message: EmailMessage) -> None:
        if self.before is not None:
            await self.before(message)
        await self.inner.send(message)
        if self.after is not None:
            await self.after(message)


# -- the link email --------------------------------------------------------------


async def test_link_goes_to_the_stored_address_not_the_typed_variant(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
) -> None:
    """Typed "JANE@example.COM", the link goes to the stored "Jane@Example.com" address."""
    account = add_account(database, "Jane@Example.com")
    attempt = request(engine, "JANE@example.COM")

    assert await dispatcher.run_once() == 1

    (mail,) = smtp_sink.wait_for(1)
    assert mail.envelope_rcpts == ("Jane@Example.com",)
    assert mail["To"].addresses[0].addr_spec == "Jane@Example.com"
    text = text_of(mail)
    token = token_in(mail)
    assert f"{BASE_URL}/recovery/reset?token={token}" in text
    # "This wasn't me" carries a cancel-only token of its own, stored as a digest too.
    [cancel] = re.findall(rf"{re.escape(BASE_URL)}/recovery/cancel\?token=([\w-]+)", text)
    assert cancel != token
    assert "November 30, 2026 at 1:00 PM (UTC)" in text  # emailed at 12:00, lives 60 min
    assert support_reference(attempt.id) in text
    (row,) = token_rows(database)
    assert row["token_hash"] == token_hash(token)
    assert row["cancel_hash"] == token_hash(cancel)
    assert (row["attempt_id"], row["account_id"]) == (attempt.id, account.id)
    assert row["revoked_at"] is None and row["used_at"] is None

    after = engine.get_sync(attempt.id)
    assert after.state == "emailed"
    assert after.data["account_id"] == str(account.id)
    assert after.data["delivery"] == {
        "status": "sent",
        "tries": 1,
        "last_error": None,
        "sent_at": T0.isoformat(),
    }
    # The request facts stay for support.
    assert after.data["client_ip"] == "203.0.113.7"
    assert after.data["email_submitted"] == "JANE@example.COM"


async def test_french_attempt_gets_the_french_email(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
) -> None:
    """The language fixed on the attempt at request time is the email's language."""
    add_account(database, "jean@exemple.fr", name="Jean Dupont", locale="en")
    request(engine, "jean@exemple.fr", locale="fr")

    await dispatcher.run_once()

    (mail,) = smtp_sink.wait_for(1)
    assert mail["Subject"] == "accounts.example.test : réinitialisez votre mot de passe"
    assert "Bonjour Jean Dupont," in text_of(mail)
    assert "jusqu’au lundi 30 novembre 2026 à 13:00 (UTC)" in text_of(mail)


async def test_no_secret_reaches_logs_event_details_or_attempt_data(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Neither the token nor its hash appears in logs (all levels), event details or data."""
    caplog.set_level(logging.DEBUG)
    add_account(database, "jane@example.com")
    old = request(engine, "jane@example.com")
    await dispatcher.run_once()
    frozen.tick(timedelta(minutes=5))
    smtp_sink.stop()  # a failed try writes logs and delivery facts too
    new = request(engine, "jane@example.com")
    await dispatcher.run_once()
    smtp_sink.start()
    frozen.tick(timedelta(seconds=2))
    await dispatcher.run_once()

    mails = smtp_sink.wait_for(2)
    secrets = [token_in(m) for m in mails]
    secrets += [token_hash(s) for s in secrets]
    stored = [
        str(engine.get_sync(a.id).data) + str([e.detail for e in engine.history_sync(a.id)])
        for a in (old, new)
    ]
    assert engine.get_sync(new.id).data["delivery"]["tries"] == 2
    # Every record but the test mail server's own ("mail.log" logs what it receives).
    logged = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''}"
        for r in caplog.records
        if not r.name.startswith("mail.log")
    )
    assert "dispatch" in logged
    for secret in secrets:
        assert secret not in logged
        for text in stored:
            assert secret not in text


# -- no account, throttles ---------------------------------------------------------


async def test_unknown_address_is_recorded_and_nothing_is_sent(
    frozen: FrozenDateTimeFactory,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
    database: Database,
) -> None:
    """No account with that address: `unknown_account`, no email, no token."""
    attempt = request(engine, "nobody@example.com")
    assert await dispatcher.run_once() == 1
    after = engine.get_sync(attempt.id)
    assert after.state == "unknown_account"
    assert after.data["delivery"]["status"] == "none"
    assert smtp_sink.messages == []
    assert token_rows(database) == []


async def test_disabled_account_is_treated_as_unknown(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
) -> None:
    """A disabled account gets no link: the attempt ends as `unknown_account`."""
    add_account(database, "gone@example.com", disabled=True)
    attempt = request(engine, "gone@example.com")
    await dispatcher.run_once()
    assert engine.get_sync(attempt.id).state == "unknown_account"
    assert smtp_sink.messages == []


async def test_fourth_request_in_an_hour_is_throttled(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
) -> None:
    """Three emails an hour per address; the fourth request sends nothing."""
    add_account(database, "jane@example.com")
    attempts = []
    for _ in range(4):
        attempts.append(request(engine, "jane@example.com"))
        await dispatcher.run_once()
        frozen.tick(timedelta(minutes=2))
    states = [engine.get_sync(a.id).state for a in attempts]
    assert states == ["superseded", "superseded", "emailed", "throttled"]
    assert len(smtp_sink.messages) == 3
    last = engine.history_sync(attempts[3].id)[-1]
    assert (last.event, last.to_state, last.detail) == (
        "dispatch",
        "throttled",
        {"reason": "hourly_limit"},
    )
    assert engine.get_sync(attempts[3].id).data["delivery"]["status"] == "none"


async def test_throttles_key_on_the_address_even_without_an_account(
    frozen: FrozenDateTimeFactory, engine: Engine, dispatcher: Worker
) -> None:
    """An unknown address is throttled exactly like a known one (no enumeration by throttling)."""
    attempts = []
    for _ in range(4):
        attempts.append(request(engine, "nobody@example.com"))
        await dispatcher.run_once()
        frozen.tick(timedelta(minutes=2))
    states = [engine.get_sync(a.id).state for a in attempts]
    assert states == ["unknown_account"] * 3 + ["throttled"]


async def test_duplicate_inside_the_cooldown_sends_one_email(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
) -> None:
    """Two clicks ten seconds apart give one email; the second attempt is throttled."""
    add_account(database, "jane@example.com")
    first = request(engine, "jane@example.com")
    frozen.tick(timedelta(seconds=10))
    second = request(engine, "jane@example.com")

    assert await dispatcher.run_once() == 2

    assert engine.get_sync(first.id).state == "emailed"
    assert engine.get_sync(second.id).state == "throttled"
    assert engine.history_sync(second.id)[-1].detail == {"reason": "resend_cooldown"}
    assert len(smtp_sink.messages) == 1


async def test_a_support_resend_is_emailed_inside_the_cooldown_and_past_the_hourly_limit(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
) -> None:
    """An agent's resend is deliberate and audited: no throttle stops it, and it supersedes."""
    add_account(database, "jane@example.com")
    for _ in range(3):
        request(engine, "jane@example.com")
        await dispatcher.run_once()
        frozen.tick(timedelta(seconds=61))
    person = request(engine, "jane@example.com")
    frozen.tick(timedelta(seconds=5))
    resend = engine.start_sync(
        NAME,
        subject="jane@example.com",
        actor="support:alice",
        data={"requested_by": "support:alice", "delivery": {"status": "queued", "tries": 0}},
    )

    await dispatcher.run_once()

    assert engine.get_sync(person.id).state == "throttled"
    assert engine.get_sync(resend.id).state == "emailed"
    assert len(smtp_sink.messages) == 4


async def test_two_requests_in_the_same_instant_send_exactly_one_email(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
) -> None:
    """Requests stamped with the same time: one is the first, the other a duplicate."""
    add_account(database, "jane@example.com")
    attempts = [request(engine, "jane@example.com") for _ in range(2)]
    await dispatcher.run_once()
    states = sorted(engine.get_sync(a.id).state for a in attempts)
    assert states == ["emailed", "throttled"]
    assert len(smtp_sink.messages) == 1


async def test_request_after_the_cooldown_is_emailed(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
) -> None:
    """Sixty-one seconds later the same address gets a new email (and the old link dies)."""
    add_account(database, "jane@example.com")
    first = request(engine, "jane@example.com")
    await dispatcher.run_once()
    frozen.tick(timedelta(seconds=61))
    second = request(engine, "jane@example.com")
    await dispatcher.run_once()
    assert engine.get_sync(second.id).state == "emailed"
    assert engine.get_sync(first.id).state == "superseded"
    assert len(smtp_sink.messages) == 2


async def test_hourly_window_slides(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
) -> None:
    """Throttled at minute 58; emailed again once the first email is more than an hour old."""
    add_account(database, "jane@example.com")
    for minute in (0, 2, 4):
        frozen.move_to(T0 + timedelta(minutes=minute))
        request(engine, "jane@example.com")
        await dispatcher.run_once()
    frozen.move_to(T0 + timedelta(minutes=58))
    blocked = request(engine, "jane@example.com")
    await dispatcher.run_once()
    frozen.move_to(T0 + timedelta(minutes=60, seconds=1))
    allowed = request(engine, "jane@example.com")
    await dispatcher.run_once()

    assert engine.get_sync(blocked.id).state == "throttled"
    assert engine.get_sync(allowed.id).state == "emailed"
    assert len(smtp_sink.messages) == 4


# -- one live link per account -------------------------------------------------------


async def test_newer_emailed_attempt_supersedes_the_older(
    frozen: FrozenDateTimeFactory, database: Database, engine: Engine, dispatcher: Worker
) -> None:
    """Emailing a newer link supersedes the older attempt and revokes its token."""
    add_account(database, "jane@example.com")
    old = request(engine, "jane@example.com")
    await dispatcher.run_once()
    [row] = token_rows(database)
    engine.fire_sync(old.id, "open_link", actor="person", params={"link": Link(**row)})
    frozen.tick(timedelta(minutes=5))
    new = request(engine, "jane@example.com")
    await dispatcher.run_once()

    assert engine.get_sync(old.id).state == "superseded"
    assert engine.get_sync(new.id).state == "emailed"
    last = engine.history_sync(old.id)[-1]
    assert (last.event, last.from_state, last.detail) == (
        "supersede",
        "link_opened",
        {"superseded_by": str(new.id)},
    )
    tokens = {row["attempt_id"]: row for row in token_rows(database)}
    assert tokens[old.id]["revoked_at"] is not None
    assert tokens[new.id]["revoked_at"] is None


# -- delivery failures ---------------------------------------------------------------


async def test_smtp_down_is_retried_with_backoff_then_delivered(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
) -> None:
    """Mail server down: tries 1 and 2 fail, waits of 1 s then 2 s, try 3 delivers."""
    add_account(database, "jane@example.com")
    attempt = request(engine, "jane@example.com")
    smtp_sink.stop()

    assert await dispatcher.run_once() == 1
    after = engine.read_sync(attempt.id)
    assert after.state == "requested"
    assert after.data["delivery"]["status"] == "retrying"
    assert after.data["delivery"]["tries"] == 1
    assert after.data["delivery"]["last_error"]
    assert after.lease_until == T0 + timedelta(seconds=1)
    assert await dispatcher.run_once() == 0  # backing off: not due yet

    frozen.tick(timedelta(seconds=1.5))
    assert await dispatcher.run_once() == 1
    after = engine.read_sync(attempt.id)
    assert after.data["delivery"]["tries"] == 2
    assert after.lease_until == T0 + timedelta(seconds=1.5 + 2)

    smtp_sink.start()
    frozen.tick(timedelta(seconds=2.5))
    assert await dispatcher.run_once() == 1
    after = engine.read_sync(attempt.id)
    assert after.state == "emailed"
    assert after.data["delivery"]["status"] == "sent"
    assert after.data["delivery"]["tries"] == 3
    assert after.data["delivery"]["sent_at"] == (T0 + timedelta(seconds=4)).isoformat()
    assert len(smtp_sink.wait_for(1)) == 1


async def test_permanent_refusal_is_undeliverable_at_once(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
) -> None:
    """A 550 answer moves the attempt to `undeliverable` on the first try, no token kept."""
    add_account(database, "jane@example.com")
    attempt = request(engine, "jane@example.com")
    smtp_sink.refuse(550)
    await dispatcher.run_once()
    after = engine.read_sync(attempt.id)
    assert after.state == "undeliverable"
    delivery = after.data["delivery"]
    assert (delivery["status"], delivery["tries"], delivery["sent_at"]) == ("failed", 1, None)
    assert "550" in delivery["last_error"]
    assert engine.history_sync(attempt.id)[-1].detail == {"reason": "refused", "tries": 1}
    assert token_rows(database) == []


async def test_addresses_quoted_in_a_mail_servers_refusal_are_stored_masked(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
) -> None:
    """Servers quote the recipient in their replies; the delivery facts support reads and
    the outbox's last error keep the reply with every address in it masked."""
    add_account(database, "jane.doe@example.com")
    attempt = request(engine, "jane.doe@example.com")
    await dispatcher.run_once()
    reset_password(engine, attempt)
    refused = add_account(database, "Noor.Haddad@Example.org")
    bounced = request(engine, "noor.haddad@example.org")
    reply = (
        "5.1.1 <Noor.Haddad@Example.org>: Recipient address rejected (also jane.doe@example.com)"
    )
    smtp_sink.refuse(550, text=reply)
    frozen.tick(timedelta(minutes=2))
    await dispatcher.run_once()
    error = engine.read_sync(bounced.id).data["delivery"]["last_error"]
    (item,) = outbox_rows(database)
    for stored in (error, item["last_error"]):
        assert "550" in stored and "Recipient address rejected" in stored
        assert "N***d@E***e.org" in stored and "j***e@e***e.com" in stored
        for secret in (refused.email, "jane.doe@example.com", "Haddad", "jane.doe"):
            assert secret not in stored


NON_ASCII = "İda.Ünal@example.com"


async def test_an_address_with_non_ascii_characters_is_sent_with_smtputf8_where_offered(
    frozen: FrozenDateTimeFactory, db_url: str, database: Database, engine: Engine
) -> None:
    """A server offering SMTPUTF8 gets the envelope and the To header in UTF-8, as stored,
    and the attempt is emailed with a working link."""
    with SmtpSink(smtputf8=True) as sink:
        settings = make_settings(db_url, sink)
        dispatcher = Dispatcher(engine, settings, SmtpTransport(sink.url, timeout=2))
        add_account(database, NON_ASCII, name="İda Ünal")
        attempt = request(engine, NON_ASCII.lower())
        await dispatcher.run_once()
        [message] = sink.wait_for(1)
    assert message.envelope_rcpts == (NON_ASCII,)
    assert message["To"].addresses[0].addr_spec == NON_ASCII
    assert engine.read_sync(attempt.id).state == "emailed"
    assert token_hash(token_in(message)) in {row["token_hash"] for row in token_rows(database)}


async def test_an_address_the_mail_server_cannot_take_ends_undeliverable_at_once(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
) -> None:
    """Without SMTPUTF8 on the server, no try can ever deliver it: the first one ends the
    attempt `undeliverable`, saying why, instead of failing at each lease until it
    expires."""
    add_account(database, NON_ASCII)
    attempt = request(engine, NON_ASCII)
    assert await dispatcher.run_once() == 1
    after = engine.read_sync(attempt.id)
    assert after.state == "undeliverable"
    assert engine.history_sync(attempt.id)[-1].detail == {
        "reason": "address_not_supported",
        "tries": 1,
    }
    assert "SMTPUTF8" in after.data["delivery"]["last_error"]
    assert "İda" not in after.data["delivery"]["last_error"]
    frozen.tick(timedelta(minutes=5))
    assert await dispatcher.run_once() == 0
    assert smtp_sink.messages == []


async def test_a_non_ascii_address_is_written_as_utf8_by_the_file_transport(
    tmp_path: Path, frozen: FrozenDateTimeFactory, database: Database, engine: Engine
) -> None:
    settings = Settings(database_url="sqlite://", mail_url=f"file://{tmp_path}")
    dispatcher = Dispatcher(engine, settings, FileTransport(tmp_path))
    add_account(database, NON_ASCII)
    attempt = request(engine, NON_ASCII)
    await dispatcher.run_once()
    [written] = tmp_path.glob("*.eml")
    assert f"<{NON_ASCII}>".encode() in written.read_bytes()
    assert engine.read_sync(attempt.id).state == "emailed"


async def test_retries_run_out_into_undeliverable(
    frozen: FrozenDateTimeFactory,
    db_url: str,
    database: Database,
    engine: Engine,
    smtp_sink: SmtpSink,
) -> None:
    """Answered 451 every time, the attempt gives up after `mail_max_tries` tries."""
    settings = make_settings(db_url, smtp_sink, mail_max_tries=3)
    dispatcher = Dispatcher(engine, settings, SmtpTransport(smtp_sink.url))
    add_account(database, "jane@example.com")
    attempt = request(engine, "jane@example.com")
    smtp_sink.refuse(451)
    for _ in range(3):
        assert await dispatcher.run_once() == 1
        frozen.tick(timedelta(seconds=10))
    after = engine.read_sync(attempt.id)
    assert after.state == "undeliverable"
    assert after.data["delivery"]["status"] == "failed"
    assert after.data["delivery"]["tries"] == 3
    assert "451" in after.data["delivery"]["last_error"]
    assert engine.history_sync(attempt.id)[-1].detail == {
        "reason": "retries_exhausted",
        "tries": 3,
    }
    assert await dispatcher.run_once() == 0


async def test_dispatcher_killed_mid_send_loses_nothing(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    settings: Settings,
    smtp_sink: SmtpSink,
) -> None:
    """A claim whose worker died is claimed again once its lease runs out, and emailed."""
    add_account(database, "jane@example.com")
    attempt = request(engine, "jane@example.com")
    lease = timedelta(seconds=settings.dispatch_lease_seconds)
    (claimed,) = engine.claim_sync(NAME, "requested", lease=lease)  # ...and the worker dies
    assert claimed.id == attempt.id

    assert await dispatcher.run_once() == 0
    frozen.tick(lease + timedelta(seconds=1))
    assert await dispatcher.run_once() == 1

    assert engine.get_sync(attempt.id).state == "emailed"
    assert len(smtp_sink.wait_for(1)) == 1


async def test_support_cancelling_during_the_send_is_logged_and_skipped(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    settings: Settings,
    smtp_sink: SmtpSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """If the attempt is cancelled while its mail is out, dispatch writes nothing and goes on."""

    async def cancel(message: EmailMessage) -> None:
        # A support agent cancels the attempt while its mail is out.
        await engine.fire(attempt.id, "cancel", actor="support:alice")

    caplog.set_level(logging.INFO)
    add_account(database, "jane@example.com")
    attempt = request(engine, "jane@example.com")
    transport = AroundEachSend(SmtpTransport(smtp_sink.url), before=cancel)
    dispatcher = Dispatcher(engine, settings, transport)

    assert await dispatcher.run_once() == 1

    assert engine.get_sync(attempt.id).state == "cancelled"
    # The link that went out is kept only to say "cancelled" when it is opened.
    assert [r["attempt_id"] for r in token_rows(database)] == [attempt.id]
    assert "changed meanwhile" in caplog.text
    assert await dispatcher.run_once() == 0


async def test_a_link_replaced_by_a_later_try_during_the_send_is_not_recorded_as_emailed(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    settings: Settings,
    smtp_sink: SmtpSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another worker that claimed an attempt after our lease ran out stores a newer link
    while ours is out: the batch records the other attempt as emailed, never ours."""

    async def another_try(message: EmailMessage) -> None:
        # Another worker's try stores a newer link for Jane while her mail is out.
        if message["To"].addresses[0].addr_spec == "jane@example.com":
            newer = NewLink(jane.id, account.id, "d" * 64, "c" * 64, T0, None)
            await engine.db.run(store_many, engine.db, [newer])

    caplog.set_level(logging.INFO)
    account = add_account(database, "jane@example.com")
    add_account(database, "joe@example.com")
    jane = request(engine, "jane@example.com")
    joe = request(engine, "joe@example.com")
    transport = AroundEachSend(SmtpTransport(smtp_sink.url), before=another_try)
    dispatcher = Dispatcher(engine, settings, transport)

    assert await dispatcher.run_once() == 2

    assert len(smtp_sink.wait_for(2)) == 2
    assert engine.get_sync(jane.id).state == "requested"
    assert engine.get_sync(joe.id).state == "emailed"
    assert [e.event for e in engine.history_sync(jane.id)] == ["start"]
    assert "kept conflicting" in caplog.text
    stored = {r["attempt_id"]: r["token_hash"] for r in token_rows(database)}
    assert stored[jane.id] == "d" * 64


async def test_request_that_waited_past_its_deadline_expires_unsent(
    frozen: FrozenDateTimeFactory,
    engine: Engine,
    database: Database,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
) -> None:
    """A request older than its deadline (a day of outage) expires instead of being emailed."""
    add_account(database, "jane@example.com")
    attempt = request(engine, "jane@example.com")
    frozen.tick(timedelta(hours=24, seconds=1))
    await dispatcher.run_once()
    assert engine.read_sync(attempt.id).state == "expired"
    assert smtp_sink.messages == []


async def test_two_dispatchers_never_send_one_attempt_twice(
    db_url: str, database: Database, engine: Engine, smtp_sink: SmtpSink
) -> None:
    """Two workers on separate connections claim at once; every attempt is mailed exactly once."""
    settings = make_settings(db_url, smtp_sink)
    other_db = Database(db_url, pool_size=4)
    try:
        workers = [
            Dispatcher(engine, settings, SmtpTransport(smtp_sink.url), batch_size=3),
            Dispatcher(
                Engine(other_db, flows.registry()),
                settings,
                SmtpTransport(smtp_sink.url),
                batch_size=3,
            ),
        ]
        addresses = [f"user{i}@example.com" for i in range(24)]
        for address in addresses:
            add_account(database, address)
        attempts = [request(engine, address) for address in addresses]
        handled = [0, 0]
        while True:
            counts = await asyncio.gather(*(w.run_once() for w in workers))
            handled = [h + c for h, c in zip(handled, counts, strict=True)]
            if not any(counts):
                break
    finally:
        other_db.close()

    received = smtp_sink.wait_for(24)
    assert sorted(m.envelope_rcpts[0] for m in received) == sorted(addresses)
    assert sum(handled) == 24 and all(handled)  # both workers took a share
    assert {engine.get_sync(a.id).state for a in attempts} == {"emailed"}


async def test_two_workers_emailing_one_address_at_once_leave_one_live_link(
    frozen: FrozenDateTimeFactory,
    db_url: str,
    database: Database,
    engine: Engine,
    smtp_sink: SmtpSink,
) -> None:
    """Two attempts of one account dispatched at the same moment by two workers: one stays live."""
    settings = make_settings(db_url, smtp_sink)
    other_db = Database(db_url, pool_size=4)
    add_account(database, "jane@example.com")
    try:
        for round_ in range(3):
            first = request(engine, "jane@example.com")
            frozen.tick(timedelta(minutes=2))
            second = request(engine, "jane@example.com")
            workers = [
                Dispatcher(e, settings, SmtpTransport(smtp_sink.url), batch_size=1)
                for e in (engine, Engine(other_db, flows.registry()))
            ]
            assert await asyncio.gather(*(w.run_once() for w in workers)) == [1, 1]
            states = sorted(engine.get_sync(a.id).state for a in (first, second))
            assert states == ["emailed", "superseded"], f"round {round_}"
            frozen.tick(timedelta(hours=1, minutes=1))  # past the hourly limit again
    finally:
        other_db.close()


# -- "your password was changed" -----------------------------------------------------


def reset_password(engine: Engine, attempt: AttemptRecord) -> None:
    """Drive the attempt to `password_set` through the flow's own effect, as the reset page
    does: the link used up, the password stored, the notice queued."""
    with engine.db.transaction(write=False) as conn:
        token_row = conn.execute(
            select(RecoveryToken.__table__).where(
                RecoveryToken.__table__.c.attempt_id == attempt.id
            )
        ).one()
        link = Link.from_row(token_row)
        account = Account(
            **conn.execute(
                select(Account.__table__).where(Account.__table__.c.id == link.account_id)
            )
            .one()
            ._mapping
        )
    engine.fire_sync(attempt.id, "open_link", actor="person", params={"link": link})
    engine.fire_sync(
        attempt.id,
        "set_password",
        actor="person",
        params={
            "link": link,
            "violations": [],
            "account": account,
            "new_hash": HASHER.hash("Another-Fine-Pass-2031!"),
        },
    )


async def test_password_changed_notice_goes_to_the_stored_address_in_the_attempts_language(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
) -> None:
    """The notice is French for a French attempt, goes to the stored address, holds no password."""
    account = add_account(database, "Jean@Exemple.fr", name="Jean Dupont")
    attempt = request(engine, "JEAN@exemple.fr", locale="fr")
    await dispatcher.run_once()
    reset_password(engine, attempt)
    frozen.tick(timedelta(minutes=1))

    assert await dispatcher.run_once() == 1

    notice: ReceivedMessage = smtp_sink.wait_for(2)[1]
    assert notice.envelope_rcpts == ("Jean@Exemple.fr",)
    assert notice["Subject"] == "accounts.example.test : votre mot de passe a été modifié"
    text = text_of(notice)
    assert "modifié le lundi 30 novembre 2026 à 12:00 (UTC)" in text
    assert support_reference(attempt.id) in text
    assert f"{BASE_URL}/recovery" in text
    raw = notice.as_string()
    assert PASSWORD not in raw and account.password_hash not in raw
    assert "token=" not in raw
    (item,) = outbox_rows(database)
    assert item["done_at"] is not None and item["last_error"] is None


async def test_password_changed_notice_is_retried_then_given_up(
    frozen: FrozenDateTimeFactory,
    db_url: str,
    database: Database,
    engine: Engine,
    smtp_sink: SmtpSink,
) -> None:
    """A refused notice is retried with backoff and abandoned after `mail_max_tries`."""
    settings = make_settings(db_url, smtp_sink, mail_max_tries=2)
    dispatcher = Dispatcher(engine, settings, SmtpTransport(smtp_sink.url))
    add_account(database, "jane@example.com")
    attempt = request(engine, "jane@example.com")
    await dispatcher.run_once()
    reset_password(engine, attempt)
    smtp_sink.refuse(451)

    assert await dispatcher.run_once() == 1
    (item,) = outbox_rows(database)
    assert item["done_at"] is None and "451" in item["last_error"]
    assert item["available_at"].replace(tzinfo=UTC) == T0 + timedelta(seconds=1)
    assert await dispatcher.run_once() == 0  # not due yet

    frozen.tick(timedelta(seconds=2))
    assert await dispatcher.run_once() == 1
    (item,) = outbox_rows(database)
    assert item["done_at"] is not None and item["tries"] == 2
    assert dispatcher.pending() == 0


async def test_password_changed_notice_survives_a_mail_outage(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
) -> None:
    """With the mail server down the notice waits, and goes out once it is back."""
    add_account(database, "jane@example.com")
    attempt = request(engine, "jane@example.com")
    await dispatcher.run_once()
    reset_password(engine, attempt)
    smtp_sink.stop()
    await dispatcher.run_once()
    smtp_sink.start()
    frozen.tick(timedelta(seconds=2))
    await dispatcher.run_once()
    assert [m["Subject"] for m in smtp_sink.wait_for(2)][
        1
    ] == "accounts.example.test: your password was changed"


# -- metrics and the loop --------------------------------------------------------------


async def test_queue_depth_counts_waiting_requests_and_pending_notices(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
) -> None:
    """Requested attempts (backing off included) and unsent notices make the queue."""
    add_account(database, "jane@example.com")
    done = request(engine, "jane@example.com")
    await dispatcher.run_once()
    reset_password(engine, done)
    request(engine, "a@example.com")
    request(engine, "b@example.com")
    assert dispatcher.pending() == 3
    await dispatcher.run_once()
    assert dispatcher.pending() == 0


async def test_on_send_reports_each_send_with_its_outcome(
    frozen: FrozenDateTimeFactory,
    db_url: str,
    database: Database,
    engine: Engine,
    smtp_sink: SmtpSink,
) -> None:
    """The metrics hook hears one (seconds, outcome) per send: sent, temporary, permanent."""
    heard: list[tuple[float, str]] = []
    settings = make_settings(db_url, smtp_sink)
    dispatcher = Dispatcher(
        engine, settings, SmtpTransport(smtp_sink.url), on_send=lambda s, o: heard.append((s, o))
    )
    for i, refusal in enumerate((None, 451, 550)):
        add_account(database, f"user{i}@example.com")
        if refusal:
            smtp_sink.refuse(refusal)
        else:
            smtp_sink.accept()
        request(engine, f"user{i}@example.com")
        await dispatcher.run_once()
    assert [outcome for _, outcome in heard] == ["sent", "temporary", "permanent"]
    assert all(seconds >= 0 for seconds, _ in heard)


async def test_run_forever_dispatches_until_stopped(
    db_url: str, database: Database, engine: Engine, smtp_sink: SmtpSink
) -> None:
    """The loop picks new requests up while idling, survives a failing send, and stops on demand."""

    class FlakyOnce:
        """The real SMTP transport behind a connection that breaks on its first use."""

        def __init__(self) -> None:
            self.inner = SmtpTransport(smtp_sink.url)
            self.calls = 0

        async def send(self, message: EmailMessage) -> None:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("socket exploded")
            await self.inner.send(message)

    settings = make_settings(
        db_url, smtp_sink, dispatch_poll_seconds=0.05, mail_retry_base_seconds=0.1
    )
    dispatcher = Dispatcher(engine, settings, FlakyOnce())
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run_forever(stop))
    await asyncio.sleep(0.1)  # idle first
    add_account(database, "jane@example.com")
    attempt = request(engine, "jane@example.com")
    await asyncio.to_thread(smtp_sink.wait_for, 1, 5.0)
    stop.set()
    await asyncio.wait_for(task, timeout=2)
    after = engine.get_sync(attempt.id)
    assert after.state == "emailed"
    assert after.data["delivery"]["tries"] == 2
    assert after.data["delivery"]["last_error"] == "transport failed: RuntimeError"


async def test_sends_run_concurrently_but_bounded(
    db_url: str, database: Database, engine: Engine, smtp_sink: SmtpSink
) -> None:
    """Ten due attempts for ten addresses are mailed a few at a time, never more than the bound."""

    class Counting:
        """The real SMTP transport, counting the sends in flight."""

        def __init__(self) -> None:
            self.inner = SmtpTransport(smtp_sink.url)
            self.in_flight = 0
            self.most = 0

        async def send(self, message: EmailMessage) -> None:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            try:
                await asyncio.sleep(0.02)  # a slower relay, so overlaps show
                await self.inner.send(message)
            finally:
                self.in_flight -= 1

    transport = Counting()
    settings = make_settings(db_url, smtp_sink)
    dispatcher = Dispatcher(engine, settings, transport, max_concurrent_sends=3)
    for i in range(10):
        add_account(database, f"user{i}@example.com")
        request(engine, f"user{i}@example.com")
    assert await dispatcher.run_once() == 10
    assert len(smtp_sink.wait_for(10)) == 10
    assert 1 < transport.most <= 3


async def test_a_mixed_batch_is_settled_in_one_pass_at_a_cost_that_does_not_grow(
    frozen: FrozenDateTimeFactory,
    database: Database,
    engine: Engine,
    dispatcher: Worker,
    smtp_sink: SmtpSink,
) -> None:
    """Known, disabled, unknown and cooling-down addresses claimed together each get their
    outcome in one pass, the known ones one email each; and settling 30 unknown addresses
    takes as many transactions as settling 6 (they are settled in bulk)."""
    add_account(database, "known@example.com")
    add_account(database, "off@example.com", disabled=True)
    known = request(engine, "known@example.com")
    disabled = request(engine, "off@example.com")
    unknown = request(engine, "nobody@example.com")
    twice = [request(engine, "twice@example.com") for _ in range(2)]
    assert await dispatcher.run_once() == 5
    assert [engine.get_sync(a.id).state for a in (known, disabled, unknown)] == [
        "emailed",
        "unknown_account",
        "unknown_account",
    ]
    # Two in the same instant: the first (by id) is settled, the other is in its cooldown.
    assert sorted(engine.get_sync(a.id).state for a in twice) == ["throttled", "unknown_account"]
    assert [m["To"] for m in smtp_sink.wait_for(1)] == ["Jane Doe <known@example.com>"]

    commits = Commits(database)
    cost = []
    for n in (6, 30):
        frozen.tick(timedelta(hours=2))
        add_account(database, f"k{n}@example.com")
        batch = [request(engine, f"k{n}@example.com")]
        batch += [request(engine, f"u{n}.{i}@example.com") for i in range(n)]
        commits.count = 0
        assert await dispatcher.run_once() == n + 1
        cost.append(commits.count)
        assert {engine.get_sync(a.id).state for a in batch[1:]} == {"unknown_account"}
        assert engine.get_sync(batch[0].id).state == "emailed"
    assert cost[0] == cost[1]


def test_dispatcher_rejects_nonsense_sizes(engine: Engine, settings: Settings) -> None:
    """A batch or concurrency below one is a clear error."""
    with pytest.raises(ValueError, match="at least 1"):
        Dispatcher(engine, settings, SmtpTransport(settings.mail_url), batch_size=0)


async def test_recording_a_send_rides_out_a_database_restart(
    pg_server: PostgresServer, pg_url: str, smtp_sink: SmtpSink
) -> None:
    """PostgreSQL goes down just after the mail is accepted: the send is still recorded, once."""
    database = Database(pg_url, pool_size=2)
    engine = Engine(database, flows.registry())
    settings = make_settings(pg_url, smtp_sink)
    add_account(database, "jane@example.com")
    attempt = request(engine, "jane@example.com")
    restarted = threading.Event()

    async def database_dies(message: EmailMessage) -> None:
        pg_server.stop("immediate")

        def start_later() -> None:
            time.sleep(1.5)
            pg_server.start()
            restarted.set()

        threading.Thread(target=start_later, daemon=True).start()

    transport = AroundEachSend(SmtpTransport(smtp_sink.url), after=database_dies)
    dispatcher = Dispatcher(engine, settings, transport)
    try:
        assert await dispatcher.run_once() == 1
        assert restarted.is_set()
        assert engine.get_sync(attempt.id).state == "emailed"
        assert len(smtp_sink.messages) == 1
        assert token_in(smtp_sink.messages[0]) and len(token_rows(database)) == 1
    finally:
        restarted.wait(30)
        database.close()
