"""The password-recovery flow: "Forgot password?" from request to sign-in.

Reads like its diagram (diagrams/password_recovery.mmd), in this order:

1. the stored names: states (`Step`) and events (`Event`), named once;
2. the machine: its transitions, each with the guard that picks it and the
   effect it runs (inside the transition's database transaction);
3. the guards, then the effects;
4. the flow as the engine knows it: deadlines, the one-live rule it shares
   with the other account journeys, its funnel, its automatic work (emailing
   the link, then the "password changed" notice) and its hooks;
5. what a person does: ask, open the link, set the password, say "this
   wasn't me"; and what support may do (resend).

The throttles key on the normalised submitted address whether or not it has
an account, and everything up to the email happens off the request path, so
"Forgot password?" does the same work for every address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from statemachine import StateMachine
from statemachine.states import States

from api.accounts import links
from api.accounts.accounts import Accounts, change_password
from api.accounts.addresses import InvalidEmail, normalise_email
from api.accounts.models import Account
from api.accounts.passwords import PasswordHasher
from api.accounts.policy import PasswordPolicy, PersonalData, Violation, check_history
from api.accounts.tokens import new_token, token_hash
from api.errors import DEAD_LINKS, InvalidInput, LinkDead, LinkUsed, PolicyFailed
from api.i18n import DEFAULT, SUPPORTED
from api.mail.delivery import UNUSABLE_ADDRESS, Mail
from api.mail.messages import password_changed_email, recovery_email
from api.mail.transports import PermanentMailError
from api.settings import Settings
from api.support.reference import support_reference
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
from engine.worker import describe, fire_claimed

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

# -- 2. the machine ------------------------------------------------------------------


class PasswordRecovery(StateMachine):
    """One recovery attempt."""

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
    log_in = s.password_set.to(s.logged_in, cond="signed_in_with_the_new_password")
    expire = s.requested.to(s.expired) | s.emailed.to(s.expired) | s.link_opened.to(s.expired)
    cancel = (
        s.requested.to(s.cancelled, on="revoke_the_link")
        | s.emailed.to(s.cancelled, on="revoke_the_link")
        | s.link_opened.to(s.cancelled, on="revoke_the_link")
    )
    supersede = s.emailed.to(s.superseded, on="revoke_the_link") | s.link_opened.to(
        s.superseded, on="revoke_the_link"
    )

    # -- 3a. guards: decisions from the facts the caller gathered --------------------

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

    # -- 3b. effects: what a transition does, in its transaction ---------------------

    def keep_the_link(self, tx: Any, link_digest: str) -> None:
        """The link just emailed is the attempt's; the engine then ends the account's
        older live journeys (their links die with them)."""
        if links.current_digest(tx.conn, tx.attempt.id) != link_digest:
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
        tx.enqueue(
            PASSWORD_CHANGED,
            {
                "account_id": str(account.id),
                "attempt_id": str(tx.attempt.id),
                "locale": tx.attempt.data.get("locale", DEFAULT),
            },
        )


if {event.id for event in PasswordRecovery.events} != set(Event):
    raise TypeError("flows.password_recovery: Event must name exactly the machine's events")


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
# Attempts that count against the hourly limit: something was dispatched for the address.
COUNTED = (Step.emailed, Step.unknown_account)
THROTTLE_WINDOW = timedelta(hours=1)


def specs(settings: Settings) -> list[FlowSpec]:
    """The flow's versions, configured: the link dies `link_ttl_minutes` after it is emailed."""
    link_ttl = timedelta(minutes=settings.link_ttl_minutes)
    return [
        FlowSpec(
            name=NAME,
            machine=PasswordRecovery,
            version=1,
            description='"Forgot password?": request, email a link, set a new password, sign in.',
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
            jobs=(Job(Step.requested, send_link),),
            outbox=(OutboxHandler(PASSWORD_CHANGED, send_password_changed),),
            # What support may fire (POST /api/support/attempts/{id}/events/{event}).
            hooks={"signed_in": signed_in, "resend": resend, "support_events": (Event.cancel,)},
        )
    ]


# -- 4a. automatic work: the email with the link -------------------------------------


async def send_link(app: App, attempt: AttemptRecord) -> None:
    """A claimed `requested` attempt: throttle it, find no account, or email the link."""
    if attempt.deadline_at is not None and as_utc(attempt.deadline_at) < app.engine.clock.now():
        # Waited past its deadline (a long outage): expire it, send nothing.
        await app.engine.db.run(app.engine.get_sync, attempt.id)
        return
    throttle = await app.engine.db.run(_throttle, app, attempt, write=False)
    delivery = dict(attempt.data.get("delivery") or {})
    unsent = {"delivery": {**delivery, "status": "none"}}
    if throttle is not None:
        await fire_claimed(
            app.engine,
            attempt,
            Event.dispatch,
            params={"throttle": throttle},
            detail={"reason": throttle},
            data=unsent,
        )
        return
    account = await app.accounts.by_address(attempt.subject)
    if account is None or account.disabled:
        await fire_claimed(
            app.engine, attempt, Event.dispatch, params={"account": None}, data=unsent
        )
        return
    await _email_link(app, attempt, account, delivery)


def _throttle(app: App, attempt: AttemptRecord) -> str | None:
    """Why nothing may be sent for this address now, or None. A support agent's resend
    and an operator's forced reset are deliberate acts: no throttles."""
    requested_by = str(attempt.data.get("requested_by", ""))
    if requested_by.startswith("support:") or requested_by == FORCED_RESET:
        return None
    since = app.engine.clock.now() - THROTTLE_WINDOW
    dispatched = app.engine.queries.count_events_sync(
        flow=NAME,
        subject=attempt.subject,
        event=Event.dispatch,
        to_states=COUNTED,
        since=since,
        exclude=attempt.id,
        # An attempt dispatched within the window was created at most this long before it.
        created_since=since - REQUEST_TTL,
    )
    if dispatched >= app.settings.emails_per_hour:
        return "hourly_limit"
    cooldown = timedelta(seconds=app.settings.resend_cooldown_seconds)
    if cooldown and app.engine.queries.has_predecessor_sync(attempt, cooldown):
        return "resend_cooldown"
    return None


def _locale(value: object) -> str:
    return value if isinstance(value, str) and value in SUPPORTED else DEFAULT


async def _email_link(
    app: App, attempt: AttemptRecord, account: Account, delivery: dict[str, Any]
) -> None:
    token = new_token()
    # The "this wasn't me" link carries a token of its own, which can only cancel:
    # the reset token in it would open the password form to whoever clicks it.
    cancel_token = new_token()
    now = app.engine.clock.now()
    base = app.settings.public_base_url
    tries = int(delivery.get("tries") or 0) + 1
    try:
        message = recovery_email(
            locale=_locale(attempt.data.get("locale")),
            to=account.email,
            mail_from=app.mail.sender,
            link=f"{base}/recovery/reset?token={token}",
            cancel_link=f"{base}/recovery/cancel?token={cancel_token}",
            expires_at=now + timedelta(minutes=app.settings.link_ttl_minutes),
            reference=support_reference(attempt.id),
            name=account.name,
            sent_at=now,
        )
    except ValueError:
        # The stored address cannot be written into a message: no later try can,
        # so end the attempt now rather than fail it at every lease until it expires.
        failed = {**delivery, "tries": tries, "last_error": UNUSABLE_ADDRESS, "sent_at": None}
        await fire_claimed(
            app.engine,
            attempt,
            Event.bounce,
            detail={"reason": "address_unusable", "tries": tries},
            data={"delivery": {**failed, "status": "failed"}},
        )
        return
    digest = token_hash(token)
    # The digest is stored before the mail leaves, so a link opened the instant it
    # arrives is found (opening it waits for `dispatch` to commit: `_settled`).
    await app.engine.db.run(
        links.store, app.engine.db, attempt.id, account.id, digest, token_hash(cancel_token), now
    )
    error = await app.mail.send(message)
    now = app.engine.clock.now()
    if error is None:
        await fire_claimed(
            app.engine,
            attempt,
            Event.dispatch,
            params={"account": account, "sent": True, "link_digest": digest},
            detail={"tries": tries},
            data={
                "account_id": str(account.id),
                "delivery": {
                    **delivery,
                    "status": "sent",
                    "tries": tries,
                    "sent_at": now.isoformat(),
                },
            },
        )
        return
    failed = {**delivery, "tries": tries, "last_error": str(error), "sent_at": None}
    if app.mail.gives_up(error, tries):
        reason = error.reason if isinstance(error, PermanentMailError) else "retries_exhausted"
        await fire_claimed(
            app.engine,
            attempt,
            Event.bounce,
            detail={"reason": reason, "tries": tries},
            data={"delivery": {**failed, "status": "failed"}},
        )
        return
    retry_at = now + app.mail.backoff(tries)
    try:
        await app.engine.db.run(
            app.engine.note_sync,
            attempt.id,
            data={"delivery": {**failed, "status": "retrying"}},
            lease_until=retry_at,
            expected_version=attempt.version,
        )
    except (ConflictError, EventRefused) as exc:
        log.info("attempt %s changed while its mail was retried: %s", attempt.id, describe(exc))
    else:
        log.info("attempt %s: mail try %d failed, retry at %s", attempt.id, tries, retry_at)


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
            locale=_locale(payload.get("locale")),
            to=account.email,
            mail_from=app.mail.sender,
            changed_at=as_utc(item["created_at"]),
            reference=support_reference(attempt_id),
            name=account.name,
            recovery_page=f"{app.settings.public_base_url}/recovery",
            sent_at=engine.clock.now(),
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
            "delivery": _queued(),
            "resend_of": str(original.id),
            "requested_by": actor,
        },
        detail={"resend_of": str(original.id)},
    )


def forced_request(account: Account, run: str) -> NewAttempt:
    """The attempt an operator's forced reset queues for an account (`recovery reset-all`,
    run `run`): a request like a person's, in the account's language, that the worker
    emails without the throttles; once emailed it supersedes any older live attempt."""
    return NewAttempt(
        subject=account.email_normalized,
        data={
            "email_submitted": account.email,
            "locale": _locale(account.locale),
            "client_ip": None,
            "user_agent": "",
            "delivery": _queued(),
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


def _queued() -> dict[str, Any]:
    return {"status": "queued", "tries": 0, "last_error": None, "sent_at": None}


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
    locale: str,
    client_ip: str | None = None,
    user_agent: str | None = None,
) -> AttemptRecord:
    """ "Forgot password?": record a `requested` attempt, the same work whatever the address."""
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
            "locale": _locale(locale),
            "client_ip": client_ip,
            "user_agent": (user_agent or "")[:MAX_USER_AGENT_CHARS],
            "delivery": _queued(),
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
    detail = {
        "method": method.upper(),
        "repeat": attempt.state == Step.link_opened,
        "suspected_automated": automated,
    }
    fired = await _fire_for_link(app, link, attempt, Event.open_link, {"link": link}, detail)
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
        raise _dead_link(attempt.state, link)
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
    fired = await _fire_for_link(
        app,
        link,
        attempt,
        Event.set_password,
        {"link": link, "violations": [], "account": account, "new_hash": new_hash},
        {},
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
            expected_version=attempt.version,
        )
    except EventRefused as refused:
        if event == Event.set_password and refused.state == Step.link_opened and link.live:
            return None  # refused by the policy guard: the caller raises PolicyFailed
        raise _dead_link(refused.state, link) from None
    except ConflictError:
        # Someone else moved the attempt first (a concurrent submission).
        current = await app.engine.get(attempt.id)
        if event == Event.open_link and current.state == Step.link_opened:
            return await _fire_for_link(app, link, current, event, params, detail)
        if event == Event.set_password:
            raise LinkUsed(support_reference(attempt.id)) from None
        raise _dead_link(current.state, link) from None


def _dead_link(state: str, link: links.Link) -> LinkDead:
    """Why the link no longer works, from its attempt's state and its row."""
    reason = "used" if link.used_at is not None else DEAD_REASONS.get(state, "revoked")
    return DEAD_LINKS[reason](support_reference(link.attempt_id))


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        return None
