"""The recovery journey and sign-in at the service layer, on SQLite and PostgreSQL.

Real parts throughout: the engine on a real database, the dispatcher writing
real .eml files that the tests read the link from, real Argon2 (cheap test
profile unless a test needs the production one).
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import hmac
import re
import unicodedata
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from api.accounts.models import Account, LoginDevice, LoginFailure, LoginSession, RecoveryToken
from api.accounts.passwords import Argon2Hasher
from api.accounts.policy import PasswordPolicy, PersonalData, Violation
from api.accounts.tokens import new_token, token_hash
from api.errors import (
    InvalidInput,
    LinkDead,
    LinkUsed,
    LoginFailed,
    LoginSlowedDown,
    PolicyFailed,
    SessionInvalid,
    UnknownToken,
)
from api.mail.transports import FileTransport
from api.services import build_services
from api.settings import Settings
from engine.core import attempt_t, event_t, outbox_t
from flows import password_recovery
from flows.password_recovery import NAME

OLD_PASSWORD = "Correct-Horse-Battery-42"
NEW_PASSWORD = "Lilac-Umbrella-Sonata-97!"
T0 = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)


class CountingHasher(Argon2Hasher):
    """The cheap Argon2 profile, counting real verifications (dummy ones included)."""

    verifications = 0

    async def verify(self, stored_hash: str, password: str) -> bool:
        self.verifications += 1
        return await super().verify(stored_hash, password)

    async def verify_dummy(self, password: str) -> None:
        self.verifications += 1
        await super().verify_dummy(password)


class World:
    """The application's services, their worker writing mail to a folder, and helpers to read
    that mail."""

    def __init__(self, db_url: str, mailbox: Path, hasher: Argon2Hasher | None = None) -> None:
        self.settings = Settings(
            database_url=db_url,
            mail_url=f"file://{mailbox}",
            public_base_url="https://accounts.example.test",
            db_pool_size=8,
        )
        self.hasher = hasher or CountingHasher.for_tests(max_concurrent=8)
        self.services = build_services(
            self.settings, hasher=self.hasher, transport=FileTransport(mailbox)
        )
        self.engine = self.services.engine
        self.db = self.engine.db
        self.mailbox = mailbox
        self.worker = self.services.worker

    def account(self, address: str = "Jane.Doe@Example.com", locale: str = "en") -> Account:
        return self.services.accounts.create_sync(
            email=address, name="Jane Doe", password=OLD_PASSWORD, locale=locale
        )

    def tokens_sent(self) -> list[str]:
        found = []
        for path in sorted(self.mailbox.glob("*.eml")):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            body = message.get_body(preferencelist=("plain",)).get_content()
            found += re.findall(r"/recovery/reset\?token=([A-Za-z0-9_-]+)", body)
        return found

    async def emailed_token(self, address: str = "jane.doe@example.com", locale: str = "en") -> str:
        before = len(self.tokens_sent())
        await password_recovery.request(
            self.services, address, locale=locale, client_ip="192.0.2.1", user_agent="t"
        )
        await self.worker.run_once()
        sent = self.tokens_sent()
        assert len(sent) == before + 1, "the dispatcher should have sent exactly one email"
        return sent[-1]

    def count(self, table: object, *where: object) -> int:
        with self.db.transaction(write=False) as conn:
            return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


@pytest.fixture
async def world(db_url: str, tmp_path: Path) -> AsyncIterator[World]:
    w = World(db_url, tmp_path / "mail")
    yield w
    w.services.close()


async def test_request_records_the_same_attempt_whether_or_not_the_address_has_an_account(
    world: World,
) -> None:
    world.account()
    known = await password_recovery.request(
        world.services, "JANE.doe@example.com", locale="fr", client_ip="192.0.2.9"
    )
    unknown = await password_recovery.request(
        world.services, "nobody@example.com", locale="fr", client_ip="192.0.2.9"
    )
    assert known.state == unknown.state == "requested"
    assert set(known.data) == set(unknown.data)
    assert known.subject == "jane.doe@example.com"
    assert known.data["locale"] == "fr"


@pytest.mark.parametrize(
    "bad",
    [
        ["a@example.com"],
        {"email": "a@example.com"},
        "a@example.com,b@example.com",
        "a@example.com\r\nBcc: b@example.com",
        "a@example.com\n",
        "",
        42,
    ],
)
async def test_request_refuses_anything_but_one_address_and_writes_nothing(
    world: World, bad: object
) -> None:
    with pytest.raises(InvalidInput):
        await password_recovery.request(world.services, bad, locale="en")
    assert world.count(attempt_t) == 0


async def test_mail_goes_to_the_stored_address_not_the_typed_variant(world: World) -> None:
    world.account("Jane.Doe@Example.com")
    await world.emailed_token("  JANE.DOE@example.COM ")
    (path,) = world.mailbox.glob("*.eml")
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert message["To"].addresses[0].addr_spec == "Jane.Doe@Example.com"


async def test_twenty_concurrent_submissions_of_one_token_set_the_password_exactly_once(
    world: World,
) -> None:
    world.account()
    token = await world.emailed_token()
    await password_recovery.open_link(world.services, token)
    results = await asyncio.gather(
        *[
            password_recovery.set_password(
                world.services, token, NEW_PASSWORD, NEW_PASSWORD, locale="en"
            )
            for _ in range(20)
        ],
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, LinkUsed) for r in losers), losers
    assert world.count(event_t, event_t.c.event == "set_password", event_t.c.accepted) == 1
    assert world.count(RecoveryToken.__table__, RecoveryToken.__table__.c.used_at.is_not(None)) == 1


async def test_the_link_is_live_at_sixty_minutes_and_dead_one_second_later(world: World) -> None:
    world.account()
    with freeze_time(T0, real_asyncio=True) as frozen:
        live = await world.emailed_token()
        frozen.move_to(T0 + timedelta(minutes=60))
        opened = await password_recovery.open_link(world.services, live)
        assert opened.attempt.state == "link_opened"

        frozen.move_to(T0 + timedelta(minutes=62))
        dead = await world.emailed_token()  # a new attempt, emailed at 62:00
        frozen.move_to(T0 + timedelta(minutes=62 + 60, seconds=1))
        with pytest.raises(LinkDead) as info:
            await password_recovery.open_link(world.services, dead)
        assert info.value.reason == "expired"


async def test_opening_a_link_never_consumes_it_and_flags_automated_opens(world: World) -> None:
    world.account()
    token = await world.emailed_token()
    head = await password_recovery.open_link(
        world.services, token, method="HEAD", has_cookies=False
    )
    again = await password_recovery.open_link(world.services, token, method="GET", has_cookies=True)
    assert head.attempt.state == again.attempt.state == "link_opened"
    history = await world.engine.history(head.attempt.id)
    opens = [e for e in history if e.event == "open_link"]
    assert [e.detail["suspected_automated"] for e in opens] == [True, False]
    assert [e.detail["repeat"] for e in opens] == [False, True]
    done = await password_recovery.set_password(
        world.services, token, NEW_PASSWORD, NEW_PASSWORD, locale="en"
    )
    assert done.state == "password_set"


async def test_a_newer_email_supersedes_the_older_link(world: World) -> None:
    world.account()
    with freeze_time(T0, real_asyncio=True) as frozen:
        older = await world.emailed_token()
        frozen.tick(timedelta(seconds=61))  # past the resend cooldown
        newer = await world.emailed_token()
        with pytest.raises(LinkDead) as info:
            await password_recovery.open_link(world.services, older)
        assert info.value.reason == "superseded"
        assert (
            await password_recovery.open_link(world.services, newer)
        ).attempt.state == "link_opened"


async def test_this_was_not_me_cancels_the_attempt_and_kills_the_link(world: World) -> None:
    world.account()
    token = await world.emailed_token()
    cancelled = await password_recovery.cancel(world.services, token)
    assert cancelled.state == "cancelled"
    with pytest.raises(LinkDead) as info:
        await password_recovery.open_link(world.services, token)
    assert info.value.reason == "cancelled"
    with pytest.raises(LinkDead):
        await password_recovery.set_password(
            world.services, token, NEW_PASSWORD, NEW_PASSWORD, locale="en"
        )


async def test_a_used_link_answers_used_and_unknown_tokens_are_unknown(world: World) -> None:
    world.account()
    token = await world.emailed_token()
    await password_recovery.set_password(
        world.services, token, NEW_PASSWORD, NEW_PASSWORD, locale="en"
    )
    with pytest.raises(LinkUsed):
        await password_recovery.set_password(
            world.services, token, NEW_PASSWORD + "x", NEW_PASSWORD + "x", locale="en"
        )
    with pytest.raises(LinkUsed):
        await password_recovery.open_link(world.services, token)
    for bogus in ["x" * 43, "not a token!", ["list"], None, "A" * 5000]:
        with pytest.raises(UnknownToken):
            await password_recovery.open_link(world.services, bogus)


async def test_a_policy_failure_is_recorded_as_refused_and_changes_nothing(world: World) -> None:
    account = world.account()
    token = await world.emailed_token()
    await password_recovery.open_link(world.services, token)
    with pytest.raises(PolicyFailed) as info:
        await password_recovery.set_password(world.services, token, "short", "shorter", locale="fr")
    codes = {(d["code"], d["field"]) for d in info.value.details}
    assert ("too_short", "password") in codes
    assert ("confirmation_mismatch", "password_confirm") in codes
    with pytest.raises(PolicyFailed) as reused:
        await password_recovery.set_password(
            world.services, token, OLD_PASSWORD, OLD_PASSWORD, locale="en"
        )
    assert [d["code"] for d in reused.value.details] == ["reused_password"]
    refused = [e for e in await world.engine.history(_attempt_of(world, token)) if not e.accepted]
    assert [e.detail["reason"] for e in refused] == ["guard_failed", "guard_failed"]
    assert "too_short" in refused[0].detail["violations"]
    assert world.services.hasher.verify_sync(_account_hash(world, account.id), OLD_PASSWORD)
    assert world.count(RecoveryToken.__table__, RecoveryToken.__table__.c.used_at.is_(None)) == 1


class ArgonCounter(Argon2Hasher):
    """The cheap profile, counting every Argon2 operation (hash or verification) it runs."""

    operations = 0

    def _hash_blocking(self, secret: bytes) -> str:
        self.operations += 1
        return super()._hash_blocking(secret)

    def _verify_blocking(self, stored_hash: str, secret: bytes) -> bool:
        self.operations += 1
        return super()._verify_blocking(stored_hash, secret)


class PolicyCounter(PasswordPolicy):
    """The real policy, counting how often it is asked."""

    checks = 0

    def check(self, password: str, confirmation: str, personal: PersonalData) -> list[Violation]:
        self.checks += 1
        return super().check(password, confirmation, personal)


@pytest.fixture
async def counted(db_url: str, tmp_path: Path) -> AsyncIterator[World]:
    """A world whose hasher counts Argon2 operations and whose policy counts checks."""
    w = World(db_url, tmp_path / "mail", hasher=ArgonCounter.for_tests(max_concurrent=8))
    w.services.policy = PolicyCounter(w.settings.password_policy)
    yield w
    w.services.close()


@pytest.mark.parametrize("death", ["used", "expired", "superseded", "cancelled"])
async def test_a_dead_link_is_refused_before_any_policy_or_hashing_work(
    counted: World, death: str
) -> None:
    """A guess equal to the current password and a wrong one get the same refusal from a
    dead link, and neither costs a policy check or an Argon2 operation (SPEC §9)."""
    world = counted
    world.account()
    with freeze_time(T0, real_asyncio=True) as clock:
        token = await world.emailed_token()
        await password_recovery.open_link(world.services, token)
        if death == "used":
            await password_recovery.set_password(
                world.services, token, NEW_PASSWORD, NEW_PASSWORD, locale="en"
            )
        elif death == "expired":
            clock.tick(timedelta(minutes=61))
        elif death == "superseded":
            clock.tick(timedelta(minutes=2))
            await world.emailed_token()
        else:
            await password_recovery.cancel(world.services, token)
        current = NEW_PASSWORD if death == "used" else OLD_PASSWORD
        hasher, policy = world.hasher, world.services.policy
        assert isinstance(hasher, ArgonCounter) and isinstance(policy, PolicyCounter)
        hasher.operations = policy.checks = 0
        answers = []
        for guess in (current, "Wrong-Guess-Entirely-73!"):
            with pytest.raises(LinkDead) as info:
                await password_recovery.set_password(
                    world.services, token, guess, guess + "x", locale="en"
                )
            answers.append((type(info.value), info.value.reason, info.value.message))
        assert answers[0] == answers[1]
        assert (hasher.operations, policy.checks) == (0, 0)
    refused = [e for e in await world.engine.history(_attempt_of(world, token)) if not e.accepted]
    assert [e.event for e in refused][-2:] == ["set_password", "set_password"]


async def test_the_history_is_checked_only_once_every_other_rule_has_passed(
    counted: World,
) -> None:
    """With a live link and a mistyped confirmation, a guess that is the current password
    gets exactly the answer a new password would (no `reused_password`), at no Argon2
    cost; with the confirmation right, it is refused as reused and the link stays live."""
    world = counted
    world.account()
    token = await world.emailed_token()
    await password_recovery.open_link(world.services, token)
    hasher = world.hasher
    assert isinstance(hasher, ArgonCounter)
    hasher.operations = 0
    codes = []
    for guess in (OLD_PASSWORD, "Wrong-Guess-Entirely-73!"):
        with pytest.raises(PolicyFailed) as info:
            await password_recovery.set_password(
                world.services, token, guess, guess + " ", locale="en"
            )
        codes.append([d["code"] for d in info.value.details])
    assert codes == [["confirmation_mismatch"], ["confirmation_mismatch"]]
    assert hasher.operations == 0
    with pytest.raises(PolicyFailed) as reused:
        await password_recovery.set_password(
            world.services, token, OLD_PASSWORD, OLD_PASSWORD, locale="en"
        )
    assert [d["code"] for d in reused.value.details] == ["reused_password"]
    done = await password_recovery.set_password(
        world.services, token, NEW_PASSWORD, NEW_PASSWORD, locale="en"
    )
    assert done.state == "password_set"


async def test_a_reset_revokes_every_session_and_queues_the_notification(world: World) -> None:
    world.account(locale="fr")
    session = await world.services.signin.login("jane.doe@example.com", OLD_PASSWORD)
    assert (
        await world.services.signin.session(session.session_token)
    ).email_masked == "j***e@e***e.com"
    token = await world.emailed_token(locale="fr")
    await password_recovery.set_password(
        world.services, token, NEW_PASSWORD, NEW_PASSWORD, locale="fr"
    )
    with pytest.raises(SessionInvalid):
        await world.services.signin.session(session.session_token)
    with world.db.transaction(write=False) as conn:
        (payload,) = conn.execute(
            select(outbox_t.c.payload).where(outbox_t.c.kind == "password_changed")
        ).scalars()
    assert payload["locale"] == "fr"
    assert NEW_PASSWORD not in str(payload)


async def test_no_automatic_login_and_the_first_login_after_the_reset_logs_the_attempt_in(
    world: World,
) -> None:
    world.account()
    token = await world.emailed_token()
    done = await password_recovery.set_password(
        world.services, token, NEW_PASSWORD, NEW_PASSWORD, locale="en"
    )
    assert done.state == "password_set"
    with pytest.raises(LoginFailed):
        await world.services.signin.login("jane.doe@example.com", OLD_PASSWORD)
    await world.services.signin.login("jane.doe@example.com", NEW_PASSWORD)
    assert (await world.engine.get(done.id)).state == "logged_in"
    await world.services.signin.login("jane.doe@example.com", NEW_PASSWORD)
    states = [e.to_state for e in await world.engine.history(done.id) if e.accepted]
    assert states == ["requested", "emailed", "link_opened", "password_set", "logged_in"]


async def test_unknown_address_and_wrong_password_fail_alike_and_both_cost_a_verification(
    world: World,
) -> None:
    world.account()
    hasher = world.hasher
    assert isinstance(hasher, CountingHasher)
    before = hasher.verifications
    with pytest.raises(LoginFailed) as unknown:
        await world.services.signin.login("nobody@example.com", OLD_PASSWORD)
    with pytest.raises(LoginFailed) as wrong:
        await world.services.signin.login("jane.doe@example.com", "Wrong-Password-123!")
    assert hasher.verifications == before + 2
    assert (unknown.value.code, unknown.value.message) == (wrong.value.code, wrong.value.message)


async def test_login_delays_grow_after_five_failures_relax_and_never_block_a_reset(
    world: World,
) -> None:
    world.account()
    with freeze_time(T0, real_asyncio=True) as frozen:
        for _ in range(5):
            frozen.tick(timedelta(seconds=1))
            with pytest.raises(LoginFailed):
                await world.services.signin.login("jane.doe@example.com", "Wrong-Password-123!")
        delays = []
        for _ in range(3):
            with pytest.raises(LoginSlowedDown) as slowed:
                await world.services.signin.login("jane.doe@example.com", OLD_PASSWORD)
            delays.append(slowed.value.retry_after)
            frozen.tick(timedelta(seconds=slowed.value.retry_after))
            with pytest.raises(LoginFailed):
                await world.services.signin.login("jane.doe@example.com", "Wrong-Password-123!")
        assert delays[0] >= 1 and delays == sorted(delays) and delays[-1] > delays[0]

        # A reset still works while slowed down, and signing in with it is not blocked
        # once the window has passed.
        token = await world.emailed_token()
        await password_recovery.set_password(
            world.services, token, NEW_PASSWORD, NEW_PASSWORD, locale="en"
        )
        frozen.tick(timedelta(minutes=16))
        signed_in = await world.services.signin.login("jane.doe@example.com", NEW_PASSWORD)
        assert signed_in.session_token


async def test_a_successful_reset_clears_the_accounts_sign_in_failures(world: World) -> None:
    """Slowed down by someone's failures, the owner resets and signs in with the new
    password at once: no wait is left over from before the reset (SPEC §9)."""
    world.account()
    with freeze_time(T0, real_asyncio=True) as frozen:
        for _ in range(8):
            frozen.tick(timedelta(seconds=1))
            with contextlib.suppress(LoginFailed, LoginSlowedDown):
                await world.services.signin.login("Jane.Doe@example.com", "Wrong-Password-123!")
        with pytest.raises(LoginSlowedDown):
            await world.services.signin.login("jane.doe@example.com", OLD_PASSWORD)
        token = await world.emailed_token()
        await password_recovery.set_password(
            world.services, token, NEW_PASSWORD, NEW_PASSWORD, locale="en"
        )
        signed_in = await world.services.signin.login("jane.doe@example.com", NEW_PASSWORD)
    assert signed_in.session_token
    assert world.count(LoginFailure.__table__) == 0


async def test_a_strangers_failures_never_slow_down_a_browser_that_signed_in_before(
    world: World,
) -> None:
    """A browser that signed in before carries a device cookie: a stranger's failures
    (no cookie, or someone else's) slow down the stranger, not that browser; its own
    failures slow down only itself; a password change forgets the device."""
    world.account()
    with freeze_time(T0, real_asyncio=True) as frozen:
        owner = await world.services.signin.login(
            "jane.doe@example.com", OLD_PASSWORD, remember_device=True
        )
        device = owner.device_token
        assert device is not None and owner.device_expires_at == T0 + timedelta(days=180)
        # A browser that already has a device cookie is not given another.
        again = await world.services.signin.login(
            "jane.doe@example.com", OLD_PASSWORD, device=device, remember_device=True
        )
        assert again.device_token is None
        world.account("other@example.com")
        other = await world.services.signin.login(
            "other@example.com", OLD_PASSWORD, remember_device=True
        )
        # No cookie, a made-up one, garbage, another account's: all one stranger.
        for forged in (None, new_token(), "not a token", other.device_token):
            for _ in range(4):
                frozen.tick(timedelta(seconds=1))
                with contextlib.suppress(LoginFailed, LoginSlowedDown):
                    await world.services.signin.login(
                        "jane.doe@example.com", "Wrong-Password-123!", device=forged
                    )
        for forged in (None, other.device_token):
            with pytest.raises(LoginSlowedDown):
                await world.services.signin.login(
                    "jane.doe@example.com", OLD_PASSWORD, device=forged
                )
        assert await world.services.signin.login(
            "jane.doe@example.com", OLD_PASSWORD, device=device
        )
        # The device's own failures count for it, and only for it.
        for _ in range(6):
            frozen.tick(timedelta(seconds=1))
            with contextlib.suppress(LoginFailed, LoginSlowedDown):
                await world.services.signin.login("jane.doe@example.com", "Wrong-1!", device=device)
        with pytest.raises(LoginSlowedDown):
            await world.services.signin.login("jane.doe@example.com", OLD_PASSWORD, device=device)
        frozen.tick(timedelta(minutes=20))
        token = await world.emailed_token()
        await password_recovery.set_password(
            world.services, token, NEW_PASSWORD, NEW_PASSWORD, locale="en"
        )
    assert (
        world.count(LoginDevice.__table__, LoginDevice.__table__.c.token_hash == token_hash(device))
        == 0
    )


async def test_the_same_password_typed_in_nfc_or_nfd_signs_in(world: World) -> None:
    password = "Crème-Brûlée-Ça-Va-2024"
    token_world = world
    token_world.account()
    token = await token_world.emailed_token()
    nfd = unicodedata.normalize("NFD", password)
    await password_recovery.set_password(token_world.services, token, nfd, nfd, locale="en")
    nfc = unicodedata.normalize("NFC", password)
    assert nfc != nfd
    assert (await token_world.services.signin.login("jane.doe@example.com", nfc)).session_token


async def test_login_rehashes_a_hash_made_with_other_parameters(
    db_url: str, tmp_path: Path
) -> None:
    cheap = World(db_url, tmp_path / "mail")
    account = cheap.account()
    production = World(db_url, tmp_path / "mail", hasher=Argon2Hasher())
    try:
        await production.services.signin.login("jane.doe@example.com", OLD_PASSWORD)
        stored = _account_hash(production, account.id)
        assert stored != account.password_hash
        assert not production.hasher.needs_rehash(stored)
    finally:
        cheap.db.close()
        production.db.close()


class GatedHasher(Argon2Hasher):
    """The cheap profile; a verification of `held` waits, once done, until `release`.

    It stands for a sign-in whose verification is still in Argon2's queue when a
    reset commits: the order of the two is chosen by the test, not by the scheduler.
    """

    held: str | None = None

    def arm(self, password: str) -> None:
        self.held = password
        self.verified = asyncio.Event()
        self.release = asyncio.Event()

    async def verify(self, stored_hash: str, password: str) -> bool:
        ok = await super().verify(stored_hash, password)
        if password == self.held:
            self.verified.set()
            await self.release.wait()
        return ok


@pytest.mark.parametrize("rehash", [False, True])
async def test_a_sign_in_that_verified_the_old_password_before_a_reset_opens_nothing_after_it(
    db_url: str, tmp_path: Path, rehash: bool
) -> None:
    """The old password verified, then the reset committed, then the sign-in went on: it
    fails as a generic 401, opens no session, writes no rehash over the new hash and does
    not fire `log_in`; the new password then signs in and moves the attempt."""
    hasher = GatedHasher.for_tests(max_concurrent=8)
    world = World(db_url, tmp_path / "mail", hasher=hasher)
    try:
        if rehash:
            # Made with other parameters than the service's: each sign-in rehashes it.
            other = World(db_url, tmp_path / "mail", hasher=Argon2Hasher())
            other.account()
            other.db.close()
        else:
            world.account()
        token = await world.emailed_token()
        await password_recovery.open_link(world.services, token)
        hasher.arm(OLD_PASSWORD)
        late = asyncio.create_task(
            world.services.signin.login("jane.doe@example.com", OLD_PASSWORD)
        )
        await hasher.verified.wait()
        await password_recovery.set_password(
            world.services, token, NEW_PASSWORD, NEW_PASSWORD, locale="en"
        )
        hasher.release.set()
        with pytest.raises(LoginFailed):
            await late
        assert world.count(LoginSession.__table__) == 0
        with pytest.raises(LoginFailed):
            await world.services.signin.login("jane.doe@example.com", OLD_PASSWORD)
        [attempt] = await _attempts(world)
        assert attempt.state == "password_set"
        await world.services.signin.login("jane.doe@example.com", NEW_PASSWORD)
        [attempt] = await _attempts(world)
        assert attempt.state == "logged_in"
    finally:
        world.db.close()


async def _attempts(world: World) -> list[Any]:
    with world.db.transaction(write=False) as conn:
        ids = conn.execute(select(attempt_t.c.id)).scalars().all()
    return [await world.engine.get(i) for i in ids]


async def test_logout_revokes_the_session(world: World) -> None:
    world.account()
    signed_in = await world.services.signin.login("jane.doe@example.com", OLD_PASSWORD)
    await world.services.signin.logout(signed_in.session_token)
    with pytest.raises(SessionInvalid):
        await world.services.signin.session(signed_in.session_token)
    with pytest.raises(SessionInvalid):
        await world.services.signin.logout(signed_in.session_token)


async def test_no_secret_reaches_the_event_log_or_attempt_data(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    account = world.account()
    token = await world.emailed_token()
    await password_recovery.open_link(world.services, token)
    with pytest.raises(PolicyFailed):
        await password_recovery.set_password(
            world.services, token, "Qz7!tiny", "Qz7!tiny", locale="en"
        )
    await password_recovery.set_password(
        world.services, token, NEW_PASSWORD, NEW_PASSWORD, locale="en"
    )
    session = await world.services.signin.login("jane.doe@example.com", NEW_PASSWORD)
    with world.db.transaction(write=False) as conn:
        stored = " ".join(
            str(r) for r in conn.execute(select(event_t.c.detail, attempt_t.c.data).join(attempt_t))
        )
    secrets_seen = [
        token,
        NEW_PASSWORD,
        "Qz7!tiny",
        session.session_token,
        account.password_hash,
        _account_hash(world, account.id),
    ]
    for secret in secrets_seen:
        assert secret not in stored
        assert secret not in caplog.text


def _attempt_of(world: World, token: str) -> object:
    from api.accounts.tokens import token_hash

    with world.db.transaction(write=False) as conn:
        return conn.execute(
            select(RecoveryToken.__table__.c.attempt_id).where(
                RecoveryToken.__table__.c.token_hash == token_hash(token)
            )
        ).scalar_one()


def _account_hash(world: World, account_id: object) -> str:
    with world.db.transaction(write=False) as conn:
        return conn.execute(
            select(Account.__table__.c.password_hash).where(Account.__table__.c.id == account_id)
        ).scalar_one()


async def test_a_link_opened_the_instant_it_arrives_waits_for_the_send_to_be_recorded(
    world: World,
) -> None:
    """A mail scanner can open the link before `dispatch` commits: it still opens."""
    world.account()
    opened: list[asyncio.Task[object]] = []

    class OpenOnArrival(FileTransport):
        async def send(self, message: email.message.EmailMessage) -> None:
            await super().send(message)
            body = message.get_body(preferencelist=("plain",)).get_content()
            token = re.search(r"token=([A-Za-z0-9_-]+)", body).group(1)
            opened.append(asyncio.create_task(password_recovery.open_link(world.services, token)))
            await asyncio.sleep(0.3)  # the send is not yet recorded

    world.worker = world.services.worker_with(OpenOnArrival(world.mailbox))
    await password_recovery.request(world.services, "jane.doe@example.com", locale="en")
    await world.worker.run_once()
    result = await opened[0]
    assert result.attempt.state == "link_opened"


async def test_a_password_change_kills_every_other_live_link_of_the_account(world: World) -> None:
    """Even a second live link that escaped superseding dies when the password changes."""
    world.account()
    used = await world.emailed_token()
    # A second live attempt with its own link that escaped the one-live rule (rows from
    # before the rule, or written by hand): moved to `emailed` behind the engine's back.
    other = await world.engine.start(NAME, subject="jane.doe@example.com")
    with world.db.transaction() as conn:
        conn.execute(
            update(attempt_t)
            .where(attempt_t.c.id == other.id)
            .values(state="emailed", version=attempt_t.c.version + 1)
        )
    other_token = new_token()
    account_id = _account_id(world)
    with world.db.transaction() as conn:
        conn.execute(
            insert(RecoveryToken.__table__).values(
                token_hash=token_hash(other_token),
                attempt_id=other.id,
                account_id=account_id,
                created_at=datetime.now(UTC),
            )
        )
    await password_recovery.set_password(
        world.services, used, NEW_PASSWORD, NEW_PASSWORD, locale="en"
    )
    assert (await world.engine.get(other.id)).state == "superseded"
    last = (await world.engine.history(other.id))[-1]
    assert (last.event, last.detail) == ("supersede", {"reason": "password_changed"})
    with pytest.raises(LinkDead) as info:
        await password_recovery.open_link(world.services, other_token)
    assert info.value.reason == "superseded"
    assert (
        world.count(
            RecoveryToken.__table__,
            RecoveryToken.__table__.c.attempt_id == other.id,
            RecoveryToken.__table__.c.revoked_at.is_not(None),
        )
        == 1
    )


async def test_a_cookieless_get_within_seconds_of_sending_is_flagged_as_automated(
    world: World,
) -> None:
    world.account()
    with freeze_time(T0, real_asyncio=True) as frozen:
        token = await world.emailed_token()
        frozen.tick(timedelta(seconds=3))
        scanner = await password_recovery.open_link(
            world.services, token, method="GET", has_cookies=False
        )
        frozen.tick(timedelta(minutes=5))
        person = await password_recovery.open_link(
            world.services, token, method="GET", has_cookies=False
        )
    opens = [e for e in await world.engine.history(scanner.attempt.id) if e.event == "open_link"]
    assert [e.detail["suspected_automated"] for e in opens] == [True, False]
    assert person.attempt.state == "link_opened"


async def test_links_are_checked_with_a_constant_time_comparison(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.account()
    token = await world.emailed_token()
    compared: list[object] = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append(a) or real(a, b))
    await password_recovery.open_link(world.services, token)
    assert token_hash(token) in compared


@pytest.mark.parametrize(
    "variant",
    ["JANE.DOE@EXAMPLE.COM", " Jane.Doe@example.com ", "ｊａｎｅ.ｄｏｅ@ｅｘａｍｐｌｅ.ｃｏｍ"],
)
async def test_throttles_count_every_spelling_of_one_address_together(
    world: World, variant: str
) -> None:
    world.account()
    with freeze_time(T0, real_asyncio=True) as frozen:
        await world.emailed_token("jane.doe@example.com")
        frozen.tick(timedelta(seconds=10))
        second = await password_recovery.request(world.services, variant, locale="en")
        await world.worker.run_once()
    assert second.subject == "jane.doe@example.com"
    assert (await world.engine.get(second.id)).state == "throttled"
    assert len(world.tokens_sent()) == 1


async def test_a_look_alike_address_reaches_only_the_stored_address(world: World) -> None:
    """Fullwidth letters fold (NFKC + case-fold) onto the account; mail goes to its stored form."""
    world.account("Jane.Doe@Example.com")
    await world.emailed_token("ＪＡＮＥ.ＤＯＥ@ＥＸＡＭＰＬＥ.ＣＯＭ")
    (path,) = world.mailbox.glob("*.eml")
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert message["To"].addresses[0].addr_spec == "Jane.Doe@Example.com"


async def test_the_normalised_address_is_unique_in_the_database_itself(world: World) -> None:
    """Two rows with one normalised address are refused by the unique index, not only by code."""
    account = world.account()
    twin = {**account.model_dump(), "id": uuid.uuid4(), "email": "JANE.DOE@EXAMPLE.COM"}
    with pytest.raises(IntegrityError), world.db.transaction() as conn:
        conn.execute(insert(Account.__table__).values(**twin))
    assert world.count(Account.__table__) == 1


async def test_unknown_addresses_are_slowed_down_exactly_like_known_ones(world: World) -> None:
    """After five failures the sixth try is slowed down whether or not the account exists."""
    world.account()
    with freeze_time(T0, real_asyncio=True) as frozen:
        for address in ("jane.doe@example.com", "nobody@example.com"):
            for _ in range(5):
                frozen.tick(timedelta(seconds=1))
                with pytest.raises(LoginFailed):
                    await world.services.signin.login(address, "Wrong-Password-123!")
            with pytest.raises(LoginSlowedDown) as slowed:
                await world.services.signin.login(address, "Wrong-Password-123!")
            assert slowed.value.retry_after == 1


def _account_id(world: World) -> object:
    with world.db.transaction(write=False) as conn:
        return conn.execute(select(Account.__table__.c.id)).scalar_one()
