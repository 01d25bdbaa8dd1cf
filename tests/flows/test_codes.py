"""The code beside the link (flow version 2) at the service layer, on SQLite and PostgreSQL.

Real parts throughout: the engine on a real database, the app's own worker
writing real .eml files that the tests read the code and the link from, real
Argon2 (cheap profile). Time moves with freezegun. Each limit the README's
guessing arithmetic relies on has a test here: the code's length, the wrong
codes judged per attempt, the wrong codes judged per address across attempts
(cleared only by a successful recovery), and the code's life (the link's).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hmac
import logging
import re
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import func, select

from api.accounts import codes
from api.accounts.models import RecoveryCodeFailures, RecoveryToken
from api.accounts.passwords import Argon2Hasher
from api.accounts.tokens import token_hash
from api.errors import (
    InvalidCode,
    InvalidInput,
    LinkCancelled,
    LinkExpired,
    LinkSuperseded,
    LinkUsed,
    UnknownToken,
)
from api.mail.transports import FileTransport
from api.services import Services, build_services, services_for
from api.settings import Settings
from engine import Engine, FlowRegistry
from engine.core import attempt_t, event_t
from flows import password_recovery, registry

OLD_PASSWORD = "Correct-Horse-Battery-42"
NEW_PASSWORD = "Lilac-Umbrella-Sonata-97!"
ADDRESS = "jane.doe@example.com"
T0 = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)
TOKEN_IN_MAIL = re.compile(r"/recovery/reset\?token=([A-Za-z0-9_-]+)")
CODE_IN_MAIL = re.compile(r"^(\d{6,12})\s*$", re.MULTILINE)


class World:
    """The application's services on the test database, mail written to a folder."""

    def __init__(self, db_url: str, mailbox: Path, **settings: Any) -> None:
        self.settings = Settings(
            database_url=db_url,
            mail_url=f"file://{mailbox}",
            public_base_url="https://accounts.example.test",
            db_pool_size=8,
            **settings,
        )
        self.mailbox = mailbox
        self.services = build_services(
            self.settings,
            hasher=Argon2Hasher.for_tests(max_concurrent=8),
            transport=FileTransport(mailbox),
        )
        self.engine = self.services.engine
        self.db = self.engine.db

    def account(self, address: str = "Jane.Doe@Example.com", locale: str = "en") -> None:
        self.services.accounts.create_sync(
            email=address, name="Jane Doe", password=OLD_PASSWORD, locale=locale
        )

    def mails(self) -> list[email.message.EmailMessage]:
        """The recovery emails sent so far (not the "password changed" notices)."""
        found = [
            email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            for path in sorted(self.mailbox.glob("*.eml"))
        ]
        return [m for m in found if TOKEN_IN_MAIL.search(_text(m))]  # type: ignore[arg-type]

    async def emailed(self, address: str = ADDRESS, locale: str = "en") -> tuple[str, str]:
        """Ask, let the worker send, and read the newest email's link token and code."""
        before = len(self.mails())
        await password_recovery.request(self.services, address, locale=locale)
        await self.services.worker.run_once()
        mails = self.mails()
        assert len(mails) == before + 1, "the worker should have sent exactly one email"
        text = _text(mails[-1])
        return TOKEN_IN_MAIL.findall(text)[0], CODE_IN_MAIL.findall(text)[0]

    def latest(self, address: str = ADDRESS) -> Any:
        return self.engine.queries.latest_sync(address, password_recovery.NAME)

    def code_tries(self, attempt_id: Any) -> list[dict[str, Any]]:
        return [
            {"accepted": e.accepted, **e.detail}
            for e in self.engine.history_sync(attempt_id)
            if e.event == "enter_code"
        ]

    def address_failures(self, address: str = ADDRESS) -> int:
        table = RecoveryCodeFailures.__table__
        with self.db.transaction(write=False) as conn:
            found = conn.execute(select(table.c.failures).where(table.c.key == address)).scalar()
        return int(found or 0)


def _text(message: email.message.EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


@pytest.fixture
async def world(db_url: str, tmp_path: Path) -> AsyncIterator[World]:
    w = World(db_url, tmp_path / "mail")
    yield w
    w.services.close()


def wrong(code: str) -> str:
    """A code of the same length that is not `code`."""
    return f"{(int(code) + 1) % 10 ** len(code):0{len(code)}d}"


async def set_password(services: Services, token: str) -> Any:
    return await password_recovery.set_password(
        services, token, NEW_PASSWORD, NEW_PASSWORD, locale="en"
    )


# -- the code itself -------------------------------------------------------------------------


def test_codes_have_exactly_the_configured_digits_from_secrets_leading_zeros_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn: list[int] = []
    real = secrets.randbelow
    monkeypatch.setattr(secrets, "randbelow", lambda n: drawn.append(n) or real(n))
    assert all(re.fullmatch(r"\d{6}", codes.new_code(6)) for _ in range(200))
    assert drawn and set(drawn) == {10**6}
    monkeypatch.setattr(secrets, "randbelow", lambda n: 42)
    assert codes.new_code(6) == "000042"
    assert codes.new_code(8) == "00000042"


def test_fewer_than_six_digits_is_refused_at_start() -> None:
    """NIST SP 800-63B rev 4: an emailed recovery code has at least 6 digits."""
    with pytest.raises(ValueError, match="code_digits"):
        Settings(code_digits=5)


def test_a_typed_code_may_carry_spaces_but_nothing_else() -> None:
    assert codes.normalise_code(" 123 456 ", 6) == "123456"
    assert codes.normalise_code("123-456", 6) == "123456"
    for bad in ("12345", "1234567", "12345a", "١٢٣٤٥٦", "", None, ["123456"], "1" * 100):
        assert codes.normalise_code(bad, 6) is None


def test_the_stored_digest_is_keyed_by_its_row_so_equal_codes_differ() -> None:
    first, second = secrets.token_hex(32), secrets.token_hex(32)
    assert codes.code_digest("123456", first) != codes.code_digest("123456", second)
    assert codes.matches("123456", first, codes.code_digest("123456", first))
    assert not codes.matches("123457", first, codes.code_digest("123456", first))
    assert not codes.matches("123456", None, None)


async def test_every_version_2_email_carries_a_code_stored_only_as_a_digest(
    world: World,
) -> None:
    """The code is in the plain-text and the HTML part, in English and French; the
    database holds its keyed digest on the link's row and nothing else of it."""
    world.account()
    world.account("marie@example.com", locale="fr")
    _, code = await world.emailed()
    _, code_fr = await world.emailed("marie@example.com", locale="fr")
    english, french = world.mails()
    for message, typed, sentence in (
        (english, code, "Or type this code on the page where you asked for it:"),
        (french, code_fr, "Ou saisissez ce code sur la page où vous l’avez demandé"),
    ):
        for part in ("plain", "html"):
            body = message.get_body(preferencelist=(part,)).get_content()  # type: ignore[union-attr]
            assert typed in body and sentence in body, part
            assert "https://accounts.example.test/recovery/code" in body
    row_t = RecoveryToken.__table__
    with world.db.transaction(write=False) as conn:
        rows = conn.execute(select(row_t)).mappings().all()
        stored = " ".join(
            str(r) for r in conn.execute(select(event_t.c.detail, attempt_t.c.data).join(attempt_t))
        )
    matched = set()
    for row in rows:
        [typed] = [
            c
            for c in (code, code_fr)
            if row["code_hash"] == codes.code_digest(c, row["token_hash"])
        ]
        matched.add(typed)
        assert typed not in " ".join(str(v) for v in row.values())
        assert typed not in stored
    assert matched == {code, code_fr}


async def test_the_code_is_compared_in_constant_time(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.account()
    _, code = await world.emailed()
    compared: list[object] = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append(b) or real(a, b))
    await password_recovery.enter_code(world.services, ADDRESS, code)
    with world.db.transaction(write=False) as conn:
        stored = conn.execute(select(RecoveryToken.__table__.c.code_hash)).scalar_one()
    assert stored in compared
    # As many comparisons for an address without an account (against nothing real).
    known = len(compared)
    compared.clear()
    with pytest.raises(InvalidCode):
        await password_recovery.enter_code(world.services, "nobody@example.com", code)
    assert len(compared) == known == password_recovery.CODE_ATTEMPTS_COMPARED


# -- the journey by code ------------------------------------------------------------------------


async def test_a_right_code_opens_the_form_and_its_token_sets_the_password_once(
    world: World,
) -> None:
    """The link is never opened: the code's token does what the link's would, exactly once,
    and the attempt's log and data say the route was the code."""
    world.account()
    _, code = await world.emailed()
    entered = await password_recovery.enter_code(world.services, " Jane.Doe@EXAMPLE.com", code)
    assert entered.attempt.state == "link_opened"
    assert entered.expires_at == world.latest().deadline_at
    assert entered.token != code and len(entered.token) >= 43
    done = await set_password(world.services, entered.token)
    assert done.state == "password_set"
    with pytest.raises(LinkUsed):
        await set_password(world.services, entered.token)
    attempt = world.engine.read_sync(entered.attempt.id)
    assert attempt.data["route"] == "code"
    events = [(e.event, e.accepted) for e in world.engine.history_sync(attempt.id)]
    assert ("open_link", True) not in events
    assert ("enter_code", True) in events
    assert world.services.support.view_sync(attempt.id)["route"] == "code"
    signed = await world.services.signin.login(ADDRESS, NEW_PASSWORD)
    assert signed.session_token
    assert world.engine.read_sync(attempt.id).state == "logged_in"


async def test_the_link_still_works_and_says_so_when_the_code_was_not_used(world: World) -> None:
    world.account()
    token, _ = await world.emailed()
    await password_recovery.open_link(world.services, token)
    await set_password(world.services, token)
    attempt = world.latest()
    assert attempt.data["route"] == "link"
    assert world.services.support.view_sync(attempt.id)["route"] == "link"


async def test_a_code_typed_again_replaces_the_previous_token(world: World) -> None:
    """The same code typed on a second device gives a new token; the first stops working."""
    world.account()
    _, code = await world.emailed()
    first = await password_recovery.enter_code(world.services, ADDRESS, code)
    second = await password_recovery.enter_code(world.services, ADDRESS, code)
    assert first.token != second.token
    with pytest.raises(UnknownToken):
        await set_password(world.services, first.token)
    assert (await set_password(world.services, second.token)).state == "password_set"


async def test_a_malformed_code_or_address_is_invalid_input_and_records_nothing(
    world: World,
) -> None:
    world.account()
    _, code = await world.emailed()
    attempt = world.latest()
    for email_, typed in (("jane", code), (["a@b.c"], code), (ADDRESS, "12345"), (ADDRESS, 123456)):
        with pytest.raises(InvalidInput):
            await password_recovery.enter_code(world.services, email_, typed)
    assert world.code_tries(attempt.id) == []
    assert world.address_failures() == 0


# -- guessing, bounded ---------------------------------------------------------------------------


async def test_five_wrong_codes_then_the_right_one_is_refused_and_the_link_still_works(
    world: World,
) -> None:
    world.account()
    token, code = await world.emailed()
    attempt = world.latest()
    for _ in range(5):
        with pytest.raises(InvalidCode):
            await password_recovery.enter_code(world.services, ADDRESS, wrong(code))
    with pytest.raises(InvalidCode):
        await password_recovery.enter_code(world.services, ADDRESS, code)
    tries = world.code_tries(attempt.id)
    assert [(t["accepted"], t["outcome"]) for t in tries] == [
        *[(False, "wrong_code")] * 5,
        (False, "too_many_wrong_codes"),
    ]
    assert [t["wrong_codes"] for t in tries] == [1, 2, 3, 4, 5, 5]
    assert world.engine.read_sync(attempt.id).state == "emailed"
    # Only the code died: the link opens and sets the password.
    assert (await set_password(world.services, token)).state == "password_set"


async def test_four_wrong_codes_leave_the_fifth_try_judged(world: World) -> None:
    """The per-attempt limit is exactly 5: the edge, where a right code still opens."""
    world.account()
    _, code = await world.emailed()
    for _ in range(4):
        with pytest.raises(InvalidCode):
            await password_recovery.enter_code(world.services, ADDRESS, wrong(code))
    opened = await password_recovery.enter_code(world.services, ADDRESS, code)
    assert opened.attempt.state == "link_opened"


async def test_concurrent_wrong_codes_are_never_judged_past_the_limit(world: World) -> None:
    """Twenty wrong codes at once: exactly five are judged; then the right one is refused."""
    world.account()
    _, code = await world.emailed()
    attempt = world.latest()
    guesses = [f"{(int(code) + n) % 10**6:06d}" for n in range(1, 21)]
    outcomes = await asyncio.gather(
        *(password_recovery.enter_code(world.services, ADDRESS, g) for g in guesses),
        return_exceptions=True,
    )
    assert all(isinstance(o, InvalidCode) for o in outcomes), outcomes
    assert world.address_failures() == 5
    with pytest.raises(InvalidCode):
        await password_recovery.enter_code(world.services, ADDRESS, code)
    judged = [t for t in world.code_tries(attempt.id) if t["outcome"] == "wrong_code"]
    assert len(judged) == 5


async def test_the_address_cap_holds_across_attempts_until_a_successful_recovery(
    world: World,
) -> None:
    """Ten wrong codes over two attempts close the code route for the address, across
    new attempts and a year of waiting; a recovery by the link opens it again."""
    world.account()
    with freeze_time(T0, real_asyncio=True) as clock:
        for _ in range(2):
            _, code = await world.emailed()
            for _ in range(5):
                with pytest.raises(InvalidCode):
                    await password_recovery.enter_code(world.services, ADDRESS, wrong(code))
            clock.tick(timedelta(minutes=2))
        assert world.address_failures() == 10
        _, code = await world.emailed()
        with pytest.raises(InvalidCode):
            await password_recovery.enter_code(world.services, ADDRESS, code)
        assert world.code_tries(world.latest().id)[-1]["outcome"] == (
            "too_many_wrong_codes_for_the_address"
        )
        clock.tick(timedelta(days=365))
        token, code = await world.emailed()
        with pytest.raises(InvalidCode):
            await password_recovery.enter_code(world.services, ADDRESS, code)
        # A successful recovery (by the link) clears the count.
        await set_password(world.services, token)
        assert world.address_failures() == 0
        clock.tick(timedelta(minutes=2))
        _, code = await world.emailed()
        opened = await password_recovery.enter_code(world.services, ADDRESS, code)
        assert opened.attempt.state == "link_opened"


async def test_the_address_cap_is_a_setting(db_url: str, tmp_path: Path) -> None:
    w = World(db_url, tmp_path / "mail", code_max_wrong_per_account=3)
    try:
        w.account()
        _, code = await w.emailed()
        for _ in range(3):
            with pytest.raises(InvalidCode):
                await password_recovery.enter_code(w.services, ADDRESS, wrong(code))
        with pytest.raises(InvalidCode):
            await password_recovery.enter_code(w.services, ADDRESS, code)
    finally:
        w.services.close()


async def test_an_unknown_address_gets_the_same_refusal_after_the_same_work(world: World) -> None:
    """An address without an account: the same error and message as a wrong code, its try
    recorded on its own attempt (refused as the attempt has no code), counted against
    the same cap, which then behaves as it does for a known address."""
    world.account()
    _, code = await world.emailed()
    await password_recovery.request(world.services, "nobody@example.com", locale="en")
    await world.services.worker.run_once()
    refusals = []
    for address in (ADDRESS, "nobody@example.com"):
        with pytest.raises(InvalidCode) as refused:
            await password_recovery.enter_code(world.services, address, wrong(code))
        refusals.append((refused.value.code, refused.value.message, refused.value.details))
    assert refusals[0] == refusals[1]
    unknown = world.latest("nobody@example.com")
    assert unknown.state == "unknown_account"
    [logged] = world.code_tries(unknown.id)
    assert (logged["accepted"], logged["outcome"], logged["reason"]) == (
        False,
        "wrong_code",
        "wrong_state",
    )
    assert world.address_failures("nobody@example.com") == world.address_failures() == 1
    # An address nobody asked for at all is refused the same way, and counted too.
    with pytest.raises(InvalidCode):
        await password_recovery.enter_code(world.services, "never@example.com", code)
    assert world.address_failures("never@example.com") == 1


async def test_a_refusal_is_answered_on_the_floor_whatever_the_address(
    db_url: str, tmp_path: Path
) -> None:
    """A wrong code for an account, a code for an address without one and a code for an
    address nobody asked for are all answered no sooner than the floor after the try
    began; a right code is answered as soon as it is judged."""
    floor_s = 0.4
    w = World(db_url, tmp_path / "mail", code_refusal_floor_ms=int(floor_s * 1000))
    try:
        w.account()
        _, code = await w.emailed()
        await password_recovery.request(w.services, "nobody@example.com", locale="en")
        await w.services.worker.run_once()
        loop = asyncio.get_running_loop()
        for address, typed in (
            (ADDRESS, wrong(code)),
            ("nobody@example.com", code),
            ("never@example.com", code),
        ):
            began = loop.time()
            with pytest.raises(InvalidCode):
                await password_recovery.enter_code(w.services, address, typed)
            assert loop.time() - began >= floor_s, address
        began = loop.time()
        entered = await password_recovery.enter_code(w.services, ADDRESS, code)
        assert entered.attempt.state == "link_opened"
        assert loop.time() - began < floor_s  # nothing to hide: not held
    finally:
        w.services.close()


@pytest.mark.parametrize(
    ("elapsed", "answered_at"), [(0.0, 0.05), (0.01, 0.05), (0.05, 0.05), (0.07, 0.1), (0.26, 0.3)]
)
def test_a_refusal_waits_for_the_next_whole_multiple_of_the_floor(
    elapsed: float, answered_at: float
) -> None:
    """Work that outlasts the floor is rounded up to its next multiple, so a slow try
    still answers on one of a few instants rather than at its own time."""
    assert password_recovery._next_multiple(elapsed, 0.05) == pytest.approx(answered_at)


# -- the code dies with the link -----------------------------------------------------------------


async def test_a_right_code_for_an_attempt_that_is_over_says_why(world: World) -> None:
    """Superseded by a newer email, cancelled, used: the code dies with its link, and the
    right code is told so (a wrong one is only ever invalid_code)."""
    world.account()
    with freeze_time(T0, real_asyncio=True) as clock:
        _, old_code = await world.emailed()
        clock.tick(timedelta(minutes=2))
        token, code = await world.emailed()
        with pytest.raises(LinkSuperseded):
            await password_recovery.enter_code(world.services, ADDRESS, old_code)
        # The newer attempt is the one a code is tried against now.
        assert (await password_recovery.enter_code(world.services, ADDRESS, code)).token
        await password_recovery.cancel(world.services, token)
        with pytest.raises(LinkCancelled):
            await password_recovery.enter_code(world.services, ADDRESS, code)
        with pytest.raises(InvalidCode):
            await password_recovery.enter_code(world.services, ADDRESS, wrong(code))
        clock.tick(timedelta(minutes=2))
        token, code = await world.emailed()
        await set_password(world.services, token)
        with pytest.raises(LinkUsed):
            await password_recovery.enter_code(world.services, ADDRESS, code)


async def test_a_password_change_by_another_attempt_kills_the_code_and_its_token(
    world: World,
) -> None:
    world.account()
    with freeze_time(T0, real_asyncio=True) as clock:
        _, code = await world.emailed()
        entered = await password_recovery.enter_code(world.services, ADDRESS, code)
        clock.tick(timedelta(minutes=2))
        token, _ = await world.emailed()
        await set_password(world.services, token)
    with pytest.raises(LinkSuperseded):
        await set_password(world.services, entered.token)


# -- deadlines, at both edges --------------------------------------------------------------------


@pytest.mark.parametrize(("after", "opens"), [(timedelta(0), True), (timedelta(seconds=1), False)])
async def test_the_code_works_until_the_link_deadline_and_not_one_second_later(
    world: World, after: timedelta, opens: bool
) -> None:
    world.account()
    with freeze_time(T0, real_asyncio=True) as clock:
        _, code = await world.emailed()
        clock.tick(timedelta(minutes=60) + after)
        if opens:
            entered = await password_recovery.enter_code(world.services, ADDRESS, code)
            assert entered.attempt.state == "link_opened"
        else:
            with pytest.raises(LinkExpired):
                await password_recovery.enter_code(world.services, ADDRESS, code)
            assert world.latest().state == "expired"


@pytest.mark.parametrize(("after", "sets"), [(timedelta(0), True), (timedelta(seconds=1), False)])
async def test_the_codes_token_dies_at_the_links_deadline_not_extended_by_the_code(
    world: World, after: timedelta, sets: bool
) -> None:
    """A code typed at minute 30 does not give its token more time than the link had."""
    world.account()
    with freeze_time(T0, real_asyncio=True) as clock:
        _, code = await world.emailed()
        clock.tick(timedelta(minutes=30))
        entered = await password_recovery.enter_code(world.services, ADDRESS, code)
        assert entered.expires_at == T0 + timedelta(minutes=60)
        clock.tick(timedelta(minutes=30) + after)
        if sets:
            assert (await set_password(world.services, entered.token)).state == "password_set"
        else:
            with pytest.raises(LinkExpired):
                await set_password(world.services, entered.token)


@pytest.mark.parametrize(("after", "live"), [(timedelta(0), True), (timedelta(seconds=1), False)])
async def test_a_version_2_request_waits_a_day_for_its_email_and_not_one_second_more(
    world: World, after: timedelta, live: bool
) -> None:
    with freeze_time(T0, real_asyncio=True) as clock:
        attempt = await password_recovery.request(world.services, ADDRESS, locale="en")
        assert attempt.flow_version == 2
        clock.tick(timedelta(hours=24) + after)
        state = world.engine.get_sync(attempt.id).state
    assert state == ("requested" if live else "expired")


# -- version 1 attempts finish on version 1 -------------------------------------------------------


async def test_an_attempt_begun_on_version_1_finishes_on_version_1_without_a_code(
    db_url: str, tmp_path: Path
) -> None:
    """Before the upgrade only version 1 is registered: its email carries no code. After it,
    the same attempt is still driven by version 1 to `logged_in` (no code accepted for
    it, no `enter_code` in its log), while a new request starts on version 2."""
    mailbox = tmp_path / "mail"
    settings = Settings(
        database_url=db_url, mail_url=f"file://{mailbox}", public_base_url="https://a.example.test"
    )
    hasher = Argon2Hasher.for_tests(max_concurrent=4)
    version_1 = FlowRegistry([registry(settings).get(password_recovery.NAME, 1)])
    before = build_services(settings, hasher=hasher, transport=FileTransport(mailbox))
    old = services_for(
        Engine(before.engine.db, version_1),
        settings,
        hasher=hasher,
        transport=FileTransport(mailbox),
    )
    try:
        old.accounts.create_sync(email=ADDRESS, name="Jane Doe", password=OLD_PASSWORD)
        attempt = await password_recovery.request(old, ADDRESS, locale="en")
        await old.worker.run_once()
        assert attempt.flow_version == 1
        [message] = [
            email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
            for p in mailbox.glob("*.eml")
        ]
        text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
        assert not CODE_IN_MAIL.search(text) and "code" not in text.lower()
        token = TOKEN_IN_MAIL.findall(text)[0]
        with before.engine.db.transaction(write=False) as conn:
            assert conn.execute(select(RecoveryToken.__table__.c.code_hash)).scalar_one() is None

        # The upgrade: both versions registered, the same database.
        new = before
        with pytest.raises(InvalidCode):
            await password_recovery.enter_code(new, ADDRESS, "123456")
        await password_recovery.open_link(new, token)
        assert (await set_password(new, token)).state == "password_set"
        await new.signin.login(ADDRESS, NEW_PASSWORD)
        finished = new.engine.read_sync(attempt.id)
        assert (finished.state, finished.flow_version) == ("logged_in", 1)
        assert "enter_code" not in [e.event for e in new.engine.history_sync(attempt.id)]
        fresh = await password_recovery.request(new, ADDRESS, locale="en")
        assert fresh.flow_version == 2
    finally:
        before.close()


# -- secrets -------------------------------------------------------------------------------------


async def test_the_code_never_reaches_a_log_the_event_log_or_the_attempts(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    world.account()
    _, code = await world.emailed()
    with pytest.raises(InvalidCode):
        await password_recovery.enter_code(world.services, ADDRESS, wrong(code))
    entered = await password_recovery.enter_code(world.services, ADDRESS, code)
    await set_password(world.services, entered.token)
    with world.db.transaction(write=False) as conn:
        stored = " ".join(
            str(r) for r in conn.execute(select(event_t.c.detail, attempt_t.c.data).join(attempt_t))
        )
        count = conn.execute(
            select(func.count())
            .select_from(RecoveryToken.__table__)
            .where(RecoveryToken.__table__.c.code_token_hash == token_hash(entered.token))
        ).scalar_one()
    assert count == 1
    for secret in (code, wrong(code), entered.token):
        assert secret not in stored
        assert secret not in caplog.text
    view = str(world.services.support.view_sync(entered.attempt.id))
    assert code not in view and entered.token not in view
