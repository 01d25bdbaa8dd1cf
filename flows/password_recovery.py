"""The password-recovery flow: "Forgot password?" from request to sign-in.

Reads like its diagram (diagrams/password_recovery.mmd; version 1 in
diagrams/password_recovery.v1.mmd), in this order:

1. the stored names: states (`Step`) and events (`Event`), named once;
2. the guards every version's transitions use, then the effects they run
   (inside the transition's database transaction);
3. the machines, one per version: their transitions, each with the guard that
   picks it and the effect it runs. Version 2 adds one event: the email also
   carries a one-time code, and typing it where the person asked
   (`enter_code`) opens the same new-password form as the link;
4. the flow as the engine knows it, both versions: deadlines, the one-live
   rule it shares with the other account journeys, its funnel, its automatic
   work (emailing the link, and the code from version 2, then the "password
   changed" notice) and its hooks;
5. what a person does: ask, open the link or type the code, set the
   password, say "this wasn't me"; and what support may do (resend).

Attempts keep the version they started on: one begun on version 1 finishes
without a code, new ones start on version 2. No stored name changes between
the versions: a code opens the attempt into `link_opened`, as the link does,
and the attempt's data and event details say which route (`link` or `code`)
the person took.

The throttles key on the normalised submitted address whether or not it has
an account, and everything up to the email happens off the request path, so
"Forgot password?" does the same work for every address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from enum import StrEnum
from typing import Any, Protocol

from statemachine import StateMachine
from statemachine.states import States

from api import events
from api.accounts import codes, links
from api.accounts.accounts import Accounts, change_password
from api.accounts.addresses import InvalidEmail, normalise_email
from api.accounts.models import Account
from api.accounts.passwords import PasswordHasher
from api.accounts.policy import PasswordPolicy, PersonalData, Violation, check_history
from api.accounts.tokens import new_token, token_hash
from api.errors import (
    InvalidCode,
    InvalidInput,
    LinkUsed,
    PolicyFailed,
)
from api.i18n import DEFAULT, known_locale
from api.mail.delivery import UNUSABLE_ADDRESS, Mail, queued_delivery
from api.mail.messages import password_changed_email, recovery_email, zone_named
from api.mail.transports import MailError, PermanentMailError
from api.settings import Settings
from api.support.reference import support_reference
from api.support.resend import ResendLimits, Sent
from engine import (
    AttemptRecord,
    ConflictError,
    Deadline,
    Engine,
    EventRefused,
    Exclusive,
    FlowSpec,
    Job,
    NewAttempt,
    OutboxHandler,
)
from engine.clock import as_utc
from engine.worker import Decision, describe, fire_claimed_many, log_failure

log = logging.getLogger(__name__)

NAME = "password_recovery"
# The journeys that give an account back: at most one live per address among them.
ACCOUNT_JOURNEYS = "account_access"
PERSON = "person"
PASSWORD_CHANGED = "password_changed"
# Who asks when an operator forces a reset after a breach (`recovery reset-all`).
FORCED_RESET = "operator:reset-all"

# -- 1. the stored names -----------------------------------------------------------


class Step(StrEnum):
    """The states of an attempt (SPEC §3), as stored."""

    requested = "requested"
    emailed = "emailed"
    link_opened = "link_opened"
    password_set = "password_set"
    logged_in = "logged_in"
    expired = "expired"
    cancelled = "cancelled"
    superseded = "superseded"
    unknown_account = "unknown_account"
    throttled = "throttled"
    undeliverable = "undeliverable"


class Event(StrEnum):
    """The events an attempt can be sent (SPEC §3), as stored."""

    dispatch = "dispatch"
    bounce = "bounce"
    open_link = "open_link"
    set_password = "set_password"
    log_in = "log_in"
    expire = "expire"
    cancel = "cancel"
    supersede = "supersede"
    # Version 2: the code from the email, typed where the person asked.
    enter_code = "enter_code"


FINAL = {
    Step.logged_in,
    Step.expired,
    Step.cancelled,
    Step.superseded,
    Step.unknown_account,
    Step.throttled,
    Step.undeliverable,
}
LIVE = (Step.emailed, Step.link_opened)
# Why a link no longer works, by the state of its attempt.
DEAD_REASONS = {
    Step.expired: "expired",
    Step.superseded: "superseded",
    Step.cancelled: "cancelled",
    Step.password_set: "used",
    Step.logged_in: "used",
}

# -- 2. what the machines run: guards, then effects ---------------------------------------

# How the person reached the new-password form, as the attempt's data records it.
LINK_ROUTE = "link"
CODE_ROUTE = "code"


class _Recovery(StateMachine):
    """The guards and effects of every version of the machine (section 3), found by name.

    It declares no states: python-statemachine shares a class's `State` objects with
    its subclasses, so a version that drew a new arrow from an inherited state would
    draw it in the older version too. Each version declares its own states and arrows.
    """

    # -- 2a. guards: decisions from the facts the caller gathered --------------------

    def over_a_limit(self, throttle: str | None = None) -> bool:
        return throttle is not None

    def no_account(self, account: Account | None = None) -> bool:
        return account is None

    def mail_accepted(self, sent: bool = False) -> bool:
        return sent

    def link_live(self, link: links.Link | None = None) -> bool:
        return link is not None and link.live

    def password_acceptable(self, violations: list[Violation] | None = None) -> bool:
        return violations == []

    def signed_in_with_the_new_password(self, credential_version: int | None = None) -> bool:
        # The version the reset gave the account: an older sign-in cannot count.
        # (Attempts reset before versions were recorded carry none.)
        recorded = self.model.data.get("credential_version")
        return credential_version is not None and recorded in (None, credential_version)

    # -- 2b. effects: what a transition does, in its transaction ---------------------

    def keep_the_link(self, tx: Any, link_digest: str) -> None:
        """The link just emailed is the attempt's; the engine then ends the account's
        older live journeys (their links die with them)."""
        # Read once for a batch of dispatches (`Transaction.read_for_all`).
        stored = tx.read_for_all("link_digests", links.current_digests)
        if stored.get(tx.attempt.id) != link_digest:
            # Another worker re-claimed the attempt and mailed a newer link.
            raise ConflictError(tx.attempt.id, Event.dispatch)

    def drop_the_link(self, tx: Any) -> None:
        """The email never left: its link must never work."""
        links.drop(tx.conn, tx.attempt.id)

    def revoke_the_link(self, tx: Any) -> None:
        links.revoke(tx.conn, [tx.attempt.id], tx.now)

    def change_the_password(
        self, tx: Any, link: links.Link, account: Account, new_hash: str
    ) -> None:
        """Use the link up (exactly once), store the password, and end everything the old
        one vouched for: sessions, other links, other live journeys; then tell the owner."""
        if not links.consume(tx.conn, link, tx.now):
            raise ConflictError(tx.attempt.id, Event.set_password)
        tx.data["credential_version"] = change_password(
            tx.conn, account, new_hash, tx.now, keep_link=link.token_hash
        )
        tx.end_journeys(account.email_normalized, detail={"reason": "password_changed"})
        events.emit(
            tx,
            events.PASSWORD_CHANGED,
            {
                "account_id": str(account.id),
                "attempt_id": str(tx.attempt.id),
                "flow": NAME,
                "changed_at": events.at(tx.now),
            },
        )
        tx.enqueue(
            PASSWORD_CHANGED,
            {
                "account_id": str(account.id),
                "attempt_id": str(tx.attempt.id),
                "locale": tx.attempt.data.get("locale") or DEFAULT,
                "time_zone": tx.attempt.data.get("time_zone"),
            },
        )

    def tell_the_applications(self, tx: Any) -> None:
        """The person is back in: the applications hear that the recovery completed."""
        events.emit(
            tx,
            events.RECOVERY_COMPLETED,
            {
                "account_id": tx.attempt.data.get("account_id"),
                "attempt_id": str(tx.attempt.id),
                "flow": NAME,
                "completed_at": events.at(tx.now),
            },
        )

    # -- 2c. version 2's guard and effect: the code -----------------------------------

    def code_right(self, verdict: str | None = None) -> bool:
        # Judged right within both limits of wrong codes (`api.accounts.codes.judge`).
        return verdict == codes.Verdict.right

    def keep_the_code_token(self, tx: Any, link: links.Link, code_token_digest: str) -> None:
        """The token the code was exchanged for opens the form from now on (only the
        newest one: a code typed again replaces it)."""
        if not links.keep_code_token(tx.conn, link, code_token_digest):
            # The link was used or revoked since it was read.
            raise ConflictError(tx.attempt.id, Event.enter_code)


# -- 3. the machines, one per version -------------------------------------------------------


class PasswordRecovery(_Recovery):
    """One recovery attempt, version 1: the email carries a link."""

    s = States.from_enum(Step, initial=Step.requested, final=FINAL, use_enum_instance=False)

    # Throttles come first: they key on the address, whether or not it has an account.
    dispatch = (
        s.requested.to(s.throttled, cond="over_a_limit")
        | s.requested.to(s.unknown_account, cond="no_account")
        | s.requested.to(s.emailed, cond="mail_accepted", on="keep_the_link")
    )
    bounce = s.requested.to(s.undeliverable, on="drop_the_link")
    open_link = s.emailed.to(s.link_opened, cond="link_live") | s.link_opened.to.itself(
        cond="link_live"
    )
    set_password = s.link_opened.to(
        s.password_set, cond=["link_live", "password_acceptable"], on="change_the_password"
    )
    log_in = s.password_set.to(
        s.logged_in, cond="signed_in_with_the_new_password", on="tell_the_applications"
    )
    expire = s.requested.to(s.expired) | s.emailed.to(s.expired) | s.link_opened.to(s.expired)
    cancel = (
        s.requested.to(s.cancelled, on="revoke_the_link")
        | s.emailed.to(s.cancelled, on="revoke_the_link")
        | s.link_opened.to(s.cancelled, on="revoke_the_link")
    )
    supersede = s.emailed.to(s.superseded, on="revoke_the_link") | s.link_opened.to(
        s.superseded, on="revoke_the_link"
    )


class PasswordRecoveryWithCode(_Recovery):
    """One recovery attempt, version 2: the email carries a one-time code beside the link,
    and a right code typed where the person asked opens the attempt as the link does.

    Version 1's arrows, unchanged (a test holds them equal), and `enter_code`.
    """

    s = States.from_enum(Step, initial=Step.requested, final=FINAL, use_enum_instance=False)

    # Throttles come first: they key on the address, whether or not it has an account.
    dispatch = (
        s.requested.to(s.throttled, cond="over_a_limit")
        | s.requested.to(s.unknown_account, cond="no_account")
        | s.requested.to(s.emailed, cond="mail_accepted", on="keep_the_link")
    )
    bounce = s.requested.to(s.undeliverable, on="drop_the_link")
    open_link = s.emailed.to(s.link_opened, cond="link_live") | s.link_opened.to.itself(
        cond="link_live"
    )
    set_password = s.link_opened.to(
        s.password_set, cond=["link_live", "password_acceptable"], on="change_the_password"
    )
    log_in = s.password_set.to(
        s.logged_in, cond="signed_in_with_the_new_password", on="tell_the_applications"
    )
    expire = s.requested.to(s.expired) | s.emailed.to(s.expired) | s.link_opened.to(s.expired)
    cancel = (
        s.requested.to(s.cancelled, on="revoke_the_link")
        | s.emailed.to(s.cancelled, on="revoke_the_link")
        | s.link_opened.to(s.cancelled, on="revoke_the_link")
    )
    supersede = s.emailed.to(s.superseded, on="revoke_the_link") | s.link_opened.to(
        s.superseded, on="revoke_the_link"
    )
    enter_code = s.emailed.to(
        s.link_opened, cond=["code_right", "link_live"], on="keep_the_code_token"
    ) | s.link_opened.to.itself(cond=["code_right", "link_live"], on="keep_the_code_token")


if {event.id for event in PasswordRecovery.events} != set(Event) - {Event.enter_code}:
    raise TypeError("flows.password_recovery: Event must name exactly version 1's events")
if {event.id for event in PasswordRecoveryWithCode.events} != set(Event):
    raise TypeError("flows.password_recovery: Event must name exactly version 2's events")


# -- 4. the flow as the engine knows it --------------------------------------------------


class App(Protocol):
    """What this flow needs from the application (the `Services` it runs in)."""

    settings: Settings
    engine: Engine
    hasher: PasswordHasher
    policy: PasswordPolicy
    accounts: Accounts
    mail: Mail


REQUEST_TTL = timedelta(hours=24)
PERSONAL_DATA = {"data": ("email_submitted", "client_ip", "user_agent"), "detail": ("client_ip",)}
# Attempts that count against the hourly limit: something was dispatched for the address.
COUNTED = (Step.emailed, Step.unknown_account)
THROTTLE_WINDOW = timedelta(hours=1)
# Requested attempts the dispatcher claims and handles together, and how many of their
# emails go through the pipeline at a time (`send_links`).
DISPATCH_BATCH = 128
MAIL_CHUNK = 16


def specs(settings: Settings) -> list[FlowSpec]:
    """The flow's versions, configured: the link (and from version 2 the code beside it)
    dies `link_ttl_minutes` after it is emailed. Both versions share everything but the
    machine: the same deadlines, group, funnel, work and hooks."""
    return [
        _spec(
            settings,
            1,
            PasswordRecovery,
            '"Forgot password?": request, email a link, set a new password, sign in.',
        ),
        _spec(
            settings,
            2,
            PasswordRecoveryWithCode,
            '"Forgot password?": request, email a link and a one-time code, open the link '
            "or type the code, set a new password, sign in.",
        ),
    ]


def _spec(settings: Settings, version: int, machine: type[_Recovery], description: str) -> FlowSpec:
    link_ttl = timedelta(minutes=settings.link_ttl_minutes)
    return FlowSpec(
        name=NAME,
        machine=machine,
        version=version,
        description=description,
        deadlines={
            Step.requested: Deadline(REQUEST_TTL, Event.expire),
            Step.emailed: Deadline(link_ttl, Event.expire),
            # Opening the link does not extend its life.
            Step.link_opened: Deadline(link_ttl, Event.expire, restart=False),
        },
        exclusive=Exclusive(ACCOUNT_JOURNEYS, live=LIVE, end_event=Event.supersede),
        funnel=(
            Step.requested,
            Step.emailed,
            Step.link_opened,
            Step.password_set,
            Step.logged_in,
        ),
        jobs=(Job(Step.requested, send_links, batch=DISPATCH_BATCH, together=True),),
        outbox=(OutboxHandler(PASSWORD_CHANGED, send_password_changed),),
        # What support may fire (POST /api/support/attempts/{id}/events/{event}).
        hooks={
            "signed_in": signed_in,
            "resend": resend,
            "resend_limits": resend_limits,
            "support_events": (Event.cancel,),
            # What its links do (the reset page and /api/recovery/* call these).
            "links": links.LinkActions(open=open_link, set_password=set_password, cancel=cancel),
            # What identifies the person in an attempt: blanked when the account is
            # deleted (the attempt keeps its shape for the statistics).
            "personal_data": PERSONAL_DATA,
        },
    )


# -- 4a. automatic work: the email with the link -------------------------------------


async def send_links(app: App, attempts: list[AttemptRecord]) -> None:
    """Claimed `requested` attempts, one per address: throttle them, find no account, or
    email the link.

    The throttles and the accounts are read once for the whole list. The emails
    go in chunks of `MAIL_CHUNK`, one pipeline: while a chunk's links are stored,
    its emails sent and its outcomes recorded (one transaction each), the next
    chunk is being rendered, so the database, the mail server and the CPU work
    at once. The attempts are of distinct addresses, so no chunk waits for another.
    """
    engine = app.engine
    now = engine.clock.now()
    waiting: list[AttemptRecord] = []
    for attempt in attempts:
        if attempt.deadline_at is not None and as_utc(attempt.deadline_at) < now:
            # Waited past its deadline (a long outage): expire it, send nothing.
            await engine.db.run(engine.get_sync, attempt.id)
        else:
            waiting.append(attempt)
    if not waiting:
        return
    throttles = await engine.db.run(_throttles, app, waiting, write=False)
    allowed = [a for a in waiting if throttles[a.id] is None]
    accounts = await engine.db.run(
        app.accounts.by_addresses_sync, [a.subject for a in allowed], write=False
    )
    unsent_decisions: list[Decision] = []
    mailable: list[tuple[AttemptRecord, Account]] = []
    for attempt in waiting:
        unsent = {"delivery": {**(attempt.data.get("delivery") or {}), "status": "none"}}
        throttle = throttles[attempt.id]
        account = accounts.get(attempt.subject)
        if throttle is not None:
            unsent_decisions.append(
                Decision(
                    attempt,
                    Event.dispatch,
                    params={"throttle": throttle},
                    detail={"reason": throttle},
                    data=unsent,
                )
            )
        elif account is None or account.disabled:
            unsent_decisions.append(
                Decision(attempt, Event.dispatch, params={"account": None}, data=unsent)
            )
        else:
            mailable.append((attempt, account))
    # Unknown and throttled addresses are settled together, while the mail is rendered.
    chunks = [asyncio.ensure_future(fire_claimed_many(engine, unsent_decisions))]
    sending = asyncio.Lock()
    for first in range(0, len(mailable), MAIL_CHUNK):
        letters: list[_Letter] = []
        bounced: list[Decision] = []
        for attempt, account in mailable[first : first + MAIL_CHUNK]:
            letter = _letter(app, attempt, account, dict(attempt.data.get("delivery") or {}))
            if isinstance(letter, Decision):
                bounced.append(letter)
            else:
                letters.append(letter)
            # Rendering is CPU: let the chunks in flight (and requests, in `serve`) go on.
            await asyncio.sleep(0)
        chunks.append(asyncio.ensure_future(_deliver(app, letters, bounced, sending)))
    for outcome in await asyncio.gather(*chunks, return_exceptions=True):
        if isinstance(outcome, BaseException):
            # Those attempts stay claimed until their lease ends, then are tried again.
            log_failure("emailing a chunk of links", outcome)


async def _deliver(
    app: App, letters: list[_Letter], decided: list[Decision], sending: asyncio.Lock
) -> None:
    """Store the chunk's links, send its emails (one chunk at a time holds the mail
    connections), then record every outcome in one transaction."""
    engine = app.engine
    decisions = list(decided)
    retrying: list[tuple[_Letter, MailError]] = []
    if letters:
        # The digests are stored before the mail leaves, so a link opened the instant it
        # arrives is found (opening it waits for `dispatch` to commit: `_settled`).
        await engine.db.run(links.store_many, engine.db, [letter.link for letter in letters])
        async with sending:
            errors = await app.mail.send_many([letter.message for letter in letters])
        sent_at = engine.clock.now()
        for letter, error in zip(letters, errors, strict=True):
            if error is None:
                decisions.append(letter.sent(sent_at))
            elif app.mail.gives_up(error, letter.tries):
                decisions.append(letter.bounced(error))
            else:
                retrying.append((letter, error))
    await fire_claimed_many(engine, decisions)
    for letter, error in retrying:
        await _retry_later(app, letter, error)


def _throttles(app: App, attempts: list[AttemptRecord]) -> dict[uuid.UUID, str | None]:
    """Why nothing may be sent for each attempt's address now (or None), by attempt; the
    attempts are of distinct addresses, and two queries answer for all of them. A support
    agent's resend and an operator's forced reset are deliberate acts: no throttles."""
    found: dict[uuid.UUID, str | None] = {attempt.id: None for attempt in attempts}
    checked = [a for a in attempts if not _deliberate(a)]
    if not checked:
        return found
    queries = app.engine.queries
    since = app.engine.clock.now() - THROTTLE_WINDOW
    dispatched = queries.count_events_by_subject_sync(
        flow=NAME,
        subjects=[a.subject for a in checked],
        event=Event.dispatch,
        to_states=COUNTED,
        since=since,
        exclude=[a.id for a in checked],
        # An attempt dispatched within the window was created at most this long before it.
        created_since=since - REQUEST_TTL,
    )
    cooldown = timedelta(seconds=app.settings.resend_cooldown_seconds)
    cooling = queries.with_predecessor_sync(checked, cooldown) if cooldown else set()
    for attempt in checked:
        if dispatched.get(attempt.subject, 0) >= app.settings.emails_per_hour:
            found[attempt.id] = "hourly_limit"
        elif attempt.id in cooling:
            found[attempt.id] = "resend_cooldown"
    return found


def _deliberate(attempt: AttemptRecord) -> bool:
    """Whether a support agent or an operator asked for this email (no throttles)."""
    requested_by = str(attempt.data.get("requested_by", ""))
    return requested_by.startswith("support:") or requested_by == FORCED_RESET


def _carries_a_code(app: App, attempt: AttemptRecord) -> bool:
    """Whether the attempt's version emails a code beside the link."""
    return Event.enter_code in app.engine.spec_of(attempt).events


@dataclass(frozen=True)
class _Letter:
    """One attempt's recovery email, rendered, with its link about to be stored."""

    attempt: AttemptRecord
    account: Account
    delivery: dict[str, Any]
    tries: int
    locale: str
    message: EmailMessage
    link: links.NewLink

    def sent(self, at: datetime) -> Decision:
        """The `dispatch` to record once the server took the message."""
        return Decision(
            self.attempt,
            Event.dispatch,
            params={"account": self.account, "sent": True, "link_digest": self.link.digest},
            detail={"tries": self.tries},
            data={
                "account_id": str(self.account.id),
                "locale": self.locale,
                "delivery": {
                    **self.delivery,
                    "status": "sent",
                    "tries": self.tries,
                    "sent_at": at.isoformat(),
                },
            },
        )

    def failed(self, error: str) -> dict[str, Any]:
        """The delivery facts after a try that failed."""
        return {**self.delivery, "tries": self.tries, "last_error": error, "sent_at": None}

    def bounced(self, error: MailError) -> Decision:
        """The `bounce` to record once the server refused the message for good, or the
        tries ran out."""
        reason = error.reason if isinstance(error, PermanentMailError) else "retries_exhausted"
        return Decision(
            self.attempt,
            Event.bounce,
            detail={"reason": reason, "tries": self.tries},
            data={"delivery": {**self.failed(str(error)), "status": "failed"}},
        )


def _letter(
    app: App, attempt: AttemptRecord, account: Account, delivery: dict[str, Any]
) -> _Letter | Decision:
    """The attempt's email with fresh tokens, or the `bounce` to record when the stored
    address cannot be written into a message at all."""
    token = new_token()
    # The "this wasn't me" link carries a token of its own, which can only cancel:
    # the reset token in it would open the password form to whoever clicks it.
    cancel_token = new_token()
    # From version 2 the email also carries a one-time code (only its digest is kept).
    code = codes.new_code(app.settings.code_digits) if _carries_a_code(app, attempt) else None
    now = app.engine.clock.now()
    base = app.settings.public_base_url
    tries = int(delivery.get("tries") or 0) + 1
    # The request's language, else the account's (a JSON request may name none).
    locale = known_locale(attempt.data.get("locale") or account.locale)
    try:
        message = recovery_email(
            locale=locale,
            to=account.email,
            mail_from=app.mail.sender,
            link=f"{base}/recovery/reset?token={token}",
            cancel_link=f"{base}/recovery/cancel?token={cancel_token}",
            expires_at=now + timedelta(minutes=app.settings.link_ttl_minutes),
            reference=support_reference(attempt.id),
            name=account.name,
            sent_at=now,
            code=code,
            code_page=f"{base}/recovery/code" if code is not None else None,
            time_zone=attempt.data.get("time_zone"),
        )
    except ValueError:
        # The stored address cannot be written into a message: no later try can,
        # so end the attempt now rather than fail it at every lease until it expires.
        failed = {**delivery, "tries": tries, "last_error": UNUSABLE_ADDRESS, "sent_at": None}
        return Decision(
            attempt,
            Event.bounce,
            detail={"reason": "address_unusable", "tries": tries},
            data={"delivery": {**failed, "status": "failed"}},
        )
    digest = token_hash(token)
    code_digest = codes.code_digest(code, digest) if code is not None else None
    link = links.NewLink(attempt.id, account.id, digest, token_hash(cancel_token), now, code_digest)
    return _Letter(attempt, account, delivery, tries, locale, message, link)


async def _retry_later(app: App, letter: _Letter, error: MailError) -> None:
    """A try that may pass later: keep the attempt claimed until its next try."""
    attempt = letter.attempt
    retry_at = app.engine.clock.now() + app.mail.backoff(letter.tries)
    try:
        await app.engine.db.run(
            app.engine.note_sync,
            attempt.id,
            data={"delivery": {**letter.failed(str(error)), "status": "retrying"}},
            lease_until=retry_at,
            expected_version=attempt.version,
        )
    except (ConflictError, EventRefused) as exc:
        log.info("attempt %s changed while its mail was retried: %s", attempt.id, describe(exc))
    else:
        log.info("attempt %s: mail try %d failed, retry at %s", attempt.id, letter.tries, retry_at)


# -- 4b. automatic work: "your password was changed" ------------------------------------


async def send_password_changed(app: App, item: dict[str, Any]) -> None:
    """The notice a reset queued, to the address stored on the account, in the attempt's
    language; retried like the link's email, then given up."""
    engine = app.engine
    tries = int(item["tries"]) + 1  # the claim counted this try
    payload = item["payload"] or {}

    async def finish(error: str | None = None, retry_at: datetime | None = None) -> None:
        await engine.db.run(engine.outbox_finish_sync, item["id"], error=error, retry_at=retry_at)

    try:
        account = await app.accounts.by_id(_uuid(payload["account_id"]))
        attempt_id = _uuid(payload["attempt_id"])
    except (KeyError, ValueError):
        await finish("malformed payload")
        return
    if account is None:
        await finish("account not found")
        return
    try:
        message = password_changed_email(
            locale=known_locale(payload.get("locale")),
            to=account.email,
            mail_from=app.mail.sender,
            changed_at=as_utc(item["created_at"]),
            reference=support_reference(attempt_id),
            name=account.name,
            recovery_page=f"{app.settings.public_base_url}/recovery",
            sent_at=engine.clock.now(),
            time_zone=payload.get("time_zone"),
        )
    except ValueError:
        await finish(UNUSABLE_ADDRESS)
        return
    error = await app.mail.send(message)
    if error is None:
        await finish()
    elif app.mail.gives_up(error, tries):
        log.warning("outbox item %s given up after %d tries: %s", item["id"], tries, error)
        await finish(str(error))
    else:
        await finish(str(error), engine.clock.now() + app.mail.backoff(tries))


def _uuid(value: object) -> uuid.UUID:
    return uuid.UUID(str(value))


# -- 4c. hooks ----------------------------------------------------------------------------


async def signed_in(app: App, account: Account, credential_version: int) -> None:
    """A sign-in with the password a reset set moves that reset's attempt to `logged_in`."""
    page = await app.engine.queries.page(
        flows=[NAME], subject=account.email_normalized, states=[Step.password_set], limit=1
    )
    for attempt in page.items:
        # Another sign-in may have recorded it first: that is fine.
        with contextlib.suppress(EventRefused, ConflictError):
            await app.engine.fire(
                attempt.id,
                Event.log_in,
                actor=PERSON,
                params={"credential_version": credential_version},
            )


def resend(app: App, original: AttemptRecord, actor: str) -> AttemptRecord:
    """Support's resend: a new attempt for the same address and language (sync).

    The worker emails it without the throttles; once emailed it supersedes the
    account's older live attempt.
    """
    return app.engine.start_sync(
        NAME,
        subject=original.subject,
        actor=actor,
        data={
            "email_submitted": original.data.get("email_submitted", original.subject),
            "locale": original.data.get("locale", DEFAULT),
            "client_ip": None,
            "user_agent": "",
            "delivery": queued_delivery(),
            "resend_of": str(original.id),
            "requested_by": actor,
        },
        detail={"resend_of": str(original.id)},
    )


def resend_limits(app: App, original: AttemptRecord) -> ResendLimits:
    """What support's resend rules weigh (sync): this flow's cooldown and hourly limit, and
    the address's emails of the last hour, those dispatched and those still queued."""
    now = app.engine.clock.now()
    since = now - THROTTLE_WINDOW
    dispatched = app.engine.queries.event_times_sync(
        flow=NAME,
        subject=original.subject,
        event=Event.dispatch,
        to_states=COUNTED,
        since=since,
        created_since=since - REQUEST_TTL,
    )
    queued = app.engine.queries.page_sync(
        flows=[NAME],
        subject=original.subject,
        states=[Step.requested],
        created_since=now - REQUEST_TTL,
        limit=app.settings.emails_per_hour + 1,
    ).items
    return ResendLimits(
        cooldown=timedelta(seconds=app.settings.resend_cooldown_seconds),
        per_hour=app.settings.emails_per_hour,
        sent=[Sent(at, ident) for ident, at in dispatched]
        + [Sent(as_utc(a.created_at), a.id) for a in queued],
    )


def forced_request(account: Account, run: str) -> NewAttempt:
    """The attempt an operator's forced reset queues for an account (`recovery reset-all`,
    run `run`): a request like a person's, in the account's language, that the worker
    emails without the throttles; once emailed it supersedes any older live attempt."""
    return NewAttempt(
        subject=account.email_normalized,
        data={
            "email_submitted": account.email,
            "locale": known_locale(account.locale),
            "client_ip": None,
            "user_agent": "",
            "delivery": queued_delivery(),
            "requested_by": FORCED_RESET,
            "forced_reset": run,
        },
        detail={"forced_reset": run},
    )


# -- 5. what a person does -----------------------------------------------------------------

MAX_USER_AGENT_CHARS = 256
# A link opened this soon after sending, without cookies, is likely a mail scanner.
AUTOMATED_OPEN_WINDOW = timedelta(seconds=10)
# How long a link opened mid-send waits for the send to be recorded: 50 x 0.1 s.
SETTLE_POLLS = 50
SETTLE_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class OpenedLink:
    """A link that was opened and is live."""

    attempt: AttemptRecord
    expires_at: datetime | None
    reference: str


async def request(
    app: App,
    email: object,
    *,
    locale: str | None,
    client_ip: str | None = None,
    user_agent: str | None = None,
    time_zone: str | None = None,
) -> AttemptRecord:
    """ "Forgot password?": record a `requested` attempt, the same work whatever the address.

    `locale` None: the request named no language, and the email speaks the account's.
    `time_zone`: the browser's IANA zone, the emails' times are shown in (else UTC).
    """
    try:
        subject = normalise_email(email)
    except InvalidEmail as exc:
        raise InvalidInput("email", str(exc)) from None
    assert isinstance(email, str)
    return await app.engine.start(
        NAME,
        subject=subject,
        actor=PERSON,
        data={
            "email_submitted": email.strip()[:320],
            "locale": known_locale(locale) if locale else None,
            "client_ip": client_ip,
            "user_agent": (user_agent or "")[:MAX_USER_AGENT_CHARS],
            "delivery": queued_delivery(),
            **({"time_zone": time_zone} if zone_named(time_zone) else {}),
        },
        detail={"client_ip": client_ip},
    )


async def open_link(
    app: App, token: object, *, method: str = "GET", has_cookies: bool = True
) -> OpenedLink:
    """Validate a link's token and record the open; never consumes the token."""
    link = await app.engine.db.run(links.find, app.engine.db, token, write=False)
    attempt = await _settled(app, link)
    sent_at = _parse_time(attempt.data.get("delivery", {}).get("sent_at"))
    automated = method.upper() == "HEAD" or (
        not has_cookies
        and sent_at is not None
        and app.engine.clock.now() - sent_at <= AUTOMATED_OPEN_WINDOW
    )
    route = _route(token, link)
    detail = {
        "method": method.upper(),
        "repeat": attempt.state == Step.link_opened,
        "suspected_automated": automated,
        "route": route,
    }
    fired = await _fire_for_link(
        app, link, attempt, Event.open_link, {"link": link}, detail, data={"route": route}
    )
    return OpenedLink(fired.attempt, fired.attempt.deadline_at, support_reference(fired.attempt.id))


async def set_password(
    app: App, token: object, password: str, confirmation: str, *, locale: str
) -> AttemptRecord:
    """Check the new password, then store it and use the link up, exactly once."""
    link = await app.engine.db.run(links.find, app.engine.db, token, write=False)
    attempt = await _settled(app, link)
    if attempt.state == Step.emailed:
        # An API client may submit without verifying first: that is an open too.
        attempt = (await open_link(app, token, method="POST")).attempt
    if attempt.state != Step.link_opened or not link.live:
        # A dead link is refused (and recorded) before any policy or history work:
        # neither its answer nor its cost may depend on the password typed.
        await _fire_for_link(app, link, attempt, Event.set_password, {"link": link}, {})
        raise links.dead_link(link, attempt.state, DEAD_REASONS)
    account = await app.accounts.by_id(link.account_id)
    assert account is not None  # a link is bound to an account
    # zxcvbn costs up to ~25 ms: keep it off the event loop (the policy is thread-safe).
    violations = await asyncio.to_thread(
        app.policy.check,
        password,
        confirmation,
        PersonalData(account.name, account.email, account.birth_date),
    )
    # The history last, and only for a password that passed every other rule, the
    # confirmation included: a mistyped confirmation must not tell whether a guess is
    # one of the last passwords, nor cost up to five Argon2 verifications.
    if not violations and await check_history(app.hasher, password, account.password_history):
        violations.append(app.policy.reused_violation())
    if violations:
        await _fire_for_link(
            app,
            link,
            attempt,
            Event.set_password,
            {"link": link, "violations": violations},
            {"violations": [v.code for v in violations]},
        )
        raise PolicyFailed(violations, locale)
    new_hash = await app.hasher.hash(password)
    route = _route(token, link)
    fired = await _fire_for_link(
        app,
        link,
        attempt,
        Event.set_password,
        {"link": link, "violations": [], "account": account, "new_hash": new_hash},
        {"route": route},
        data={"route": route},
    )
    return fired.attempt


async def cancel(app: App, token: object) -> AttemptRecord:
    """ "This wasn't me": cancel the attempt and kill its link.

    Takes the email's cancel-only token (the "this wasn't me" link), or the link's own
    token (`POST /api/recovery/cancel` has always taken that one).
    """
    link = await app.engine.db.run(links.find, app.engine.db, token, cancel=True, write=False)
    attempt = await _settled(app, link)
    fired = await _fire_for_link(app, link, attempt, Event.cancel, {}, {"via": "not_me_link"})
    return fired.attempt


async def _settled(app: App, link: links.Link) -> AttemptRecord:
    """The link's attempt, once the send that carried it has been recorded.

    The worker stores the link just before the mail leaves and moves the attempt to
    `emailed` just after; a link opened in between waits for that (bounded: a send
    that never completes stays `requested`).
    """
    attempt = await app.engine.get(link.attempt_id)
    for _ in range(SETTLE_POLLS):
        if attempt.state != Step.requested:
            break
        await asyncio.sleep(SETTLE_POLL_SECONDS)
        attempt = await app.engine.get(link.attempt_id)
    return attempt


async def _fire_for_link(
    app: App,
    link: links.Link,
    attempt: AttemptRecord,
    event: Event,
    params: dict[str, Any],
    detail: dict[str, Any],
    data: dict[str, Any] | None = None,
) -> Any:
    """Fire on the link's attempt as the person; explain a refusal as a dead or used link
    (a policy refusal of a live link is the caller's to explain)."""
    try:
        return await app.engine.fire(
            attempt.id,
            event,
            actor=PERSON,
            params=params,
            detail=detail,
            data=data,
            expected_version=attempt.version,
        )
    except EventRefused as refused:
        if event == Event.set_password and refused.state == Step.link_opened and link.live:
            return None  # refused by the policy guard: the caller raises PolicyFailed
        raise links.dead_link(link, refused.state, DEAD_REASONS) from None
    except ConflictError:
        # Someone else moved the attempt first (a concurrent submission).
        current = await app.engine.get(attempt.id)
        if event == Event.open_link and current.state == Step.link_opened:
            return await _fire_for_link(app, link, current, event, params, detail, data)
        if event == Event.set_password:
            raise LinkUsed(support_reference(attempt.id)) from None
        raise links.dead_link(link, current.state, DEAD_REASONS) from None


def _route(token: object, link: links.Link) -> str:
    """Which credential opened the form: the link's own token, or the one a code gave."""
    return (
        CODE_ROUTE if isinstance(token, str) and links.opened_by_code(token, link) else LINK_ROUTE
    )


# -- 5b. the code, typed where the person asked --------------------------------------------

# The attempts a code may belong to: every state reached once a link was emailed (or
# nothing was sent because the address has no account), newest first. One still waiting
# for its email, or throttled (nothing sent), is passed over for the one before it.
CODE_CANDIDATES = tuple(step for step in Step if step not in (Step.requested, Step.throttled))
# How many of an address's newest attempts a code is compared with: the newest one, and
# a few older ones, so a code from an email a newer one superseded is told as such.
CODE_ATTEMPTS_COMPARED = 5
# A lost race to log a try on an attempt someone else is firing at: tried again this often.
CODE_FIRE_RETRIES = 50
# ... waiting this much longer before each new try.
CODE_FIRE_BACKOFF_S = 0.002


@dataclass(frozen=True)
class EnteredCode:
    """A right code: the attempt it opened and the token that now opens its form."""

    attempt: AttemptRecord
    expires_at: datetime | None
    token: str
    reference: str


async def enter_code(app: App, email: object, code: object) -> EnteredCode:
    """The code from the email, typed with the address it went to: a fresh token for the
    new-password form, bound to that attempt and dying with its link.

    A try costs the same work whatever the address: the subject's newest attempts a code
    may belong to (at most `CODE_ATTEMPTS_COMPARED`), their links' rows (none for an
    address without an account), a keyed digest compared in constant time against each
    row's code (as many comparisons, rows or not), one write transaction that judges and
    counts the try (`api.accounts.codes.judge`), and, when there is an attempt, the try
    recorded in its event log (refused ones with their outcome, never the code).

    A code that matches none is judged wrong against the newest attempt. Every refusal
    is the same `InvalidCode`, except a right code for an attempt that is over (one a
    newer email superseded, say): the dead-link error that says why, which only someone
    holding that code can learn.

    The same steps still cost a little more where there is something to find (a row read
    and updated rather than none, a guard evaluated rather than a state that takes no
    code: about 0.2 ms on a quiet machine), so a refusal is answered on the next multiple
    of `code_refusal_floor_ms` after the try began, whatever took the time.
    """
    try:
        subject = normalise_email(email)
    except InvalidEmail as exc:
        raise InvalidInput("email", str(exc)) from None
    digits = app.settings.code_digits
    typed = codes.normalise_code(code, digits)
    if typed is None:
        raise InvalidInput("code", "the code is the {digits} digits in the email", digits=digits)
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        return await _try_code(app, subject, typed)
    except Exception:
        floor = app.settings.code_refusal_floor_ms / 1000
        if floor > 0:
            elapsed = loop.time() - began
            await asyncio.sleep(_next_multiple(elapsed, floor) - elapsed)
        raise


def _next_multiple(elapsed: float, step: float) -> float:
    """The first whole multiple of `step` (at least one) not before `elapsed`."""
    return max(1, math.ceil(elapsed / step)) * step


async def _try_code(app: App, subject: str, typed: str) -> EnteredCode:
    """`enter_code` for a well-formed address and code, as fast as it goes."""
    db = app.engine.db
    candidates = await _code_attempts(app, subject)
    rows = await db.run(links.of_attempts, db, [a.id for a in candidates], write=False)
    found = [rows.get(a.id) for a in candidates]
    found += [None] * (CODE_ATTEMPTS_COMPARED - len(found))
    hits = [
        codes.matches(typed, row.token_hash if row else None, row.code_hash if row else None)
        for row in found
    ]
    index = hits.index(True) if any(hits) else 0
    attempt = candidates[index] if candidates else None
    link = found[index]
    judged = await db.run(
        codes.judge,
        db,
        subject,
        link.token_hash if link else None,
        hits[index],
        per_attempt=app.settings.code_max_wrong_per_attempt,
        per_account=app.settings.code_max_wrong_per_account,
        now=app.engine.clock.now(),
    )
    token = new_token()
    if attempt is None:
        raise InvalidCode()
    verdict = judged.verdict
    params = {"verdict": verdict, "link": link, "code_token_digest": token_hash(token)}
    detail: dict[str, Any] = {"route": CODE_ROUTE, "outcome": verdict.value}
    if judged.wrong_codes is not None:
        detail["wrong_codes"] = judged.wrong_codes
    for tries in range(CODE_FIRE_RETRIES):
        try:
            fired = await app.engine.fire(
                attempt.id,
                Event.enter_code,
                actor=PERSON,
                params=params,
                detail=detail,
                data={"route": CODE_ROUTE},
            )
        except EventRefused as refused:
            if verdict == codes.Verdict.right and link is not None:
                # The right code, but its attempt is over: say why, as a dead link does.
                raise links.dead_link(link, refused.state, DEAD_REASONS) from None
            raise InvalidCode() from None
        except ConflictError:
            # Another try (or the worker) logged on the attempt at the same moment: wait a
            # little longer each time, so a crowd of tries gets through one by one.
            await asyncio.sleep(CODE_FIRE_BACKOFF_S * tries)
            continue
        opened = fired.attempt
        return EnteredCode(opened, opened.deadline_at, token, support_reference(opened.id))
    raise ConflictError(attempt.id, Event.enter_code)


async def _code_attempts(app: App, subject: str) -> list[AttemptRecord]:
    """The subject's newest attempts a code may belong to, newest first, of versions
    that email codes.

    Only attempts recent enough to still be live are looked at: one waits at most
    `REQUEST_TTL` for its email, whose link then lives `link_ttl_minutes`.
    """
    window = REQUEST_TTL + timedelta(minutes=app.settings.link_ttl_minutes)
    page = await app.engine.queries.page(
        flows=[NAME],
        subject=subject,
        states=list(CODE_CANDIDATES),
        created_since=app.engine.clock.now() - window,
        limit=CODE_ATTEMPTS_COMPARED,
    )
    return [attempt for attempt in page.items if _carries_a_code(app, attempt)]


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        return None
