"""Support-handled recovery, "I can't access this email": a reviewed case, then a wait.

For a person whose mailbox is gone. Reads like its diagram
(diagrams/assisted_recovery.mmd), in this order:

1. the stored names: states (`Step`) and events (`Event`), named once;
2. the machine: each transition with the guard that picks it and the effect it
   runs inside its database transaction;
3. the guards, then the effects;
4. the flow as the engine knows it: deadlines (the code, the review, the waiting
   period, the grant link; effects on the one that ends the wait), the one-live rule it shares with
   "Forgot password?", its automatic work (the confirmation code; the notices to
   the account's address; the question; the end of the wait; the grant link; the
   closing email; the notice of the change) and its hooks;
5. what a person does: ask, confirm the contact address, answer a question, say
   "this wasn't me", use the grant link; what support sees and may do.

The journey: the person gives the account's address, a new contact address and
details; a code confirms the contact address (nothing reaches support before);
the case waits for review (`in_review`, then `review_overdue` past
RECOVERY_ASSISTED_REVIEW_DAYS); support approves, denies or asks for more
(`info_requested`) with a reason; approval starts a waiting period
(RECOVERY_ASSISTED_WAIT_MINUTES) no agent can shorten; the account's address is
told at confirmation and at approval, with a "this wasn't me" link; when the wait
ends a grant link (the recovery link's form) goes to the contact address; setting
the password makes the contact address the account's.

Every step a requester can see does the same work whether or not the address has
an account: the request only records the case; the code goes to the contact
address either way; the confirmation answers alike; a case for an unknown address
reaches support marked as such, cannot be approved, and ends with the same "we could
not verify" email a denial sends. A case is live in the `account_access` group from
its first state, so it never ends another journey by starting; a password change by
any route ends it (`supersede`, guarded: a mere "Forgot password?" email does not).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import unicodedata
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from statemachine import StateMachine
from statemachine.states import States

from api import events, i18n
from api.accounts import cases, links
from api.accounts.accounts import (
    Accounts,
    address_taken,
    change_address,
    change_password,
    credential_version,
)
from api.accounts.addresses import InvalidEmail, mask_email, normalise_email
from api.accounts.models import Account
from api.accounts.passwords import PasswordHasher
from api.accounts.policy import PasswordPolicy, PersonalData, Violation, check_history
from api.accounts.tokens import new_token, token_hash
from api.errors import (
    DEAD_LINKS,
    AddressTaken,
    ContactCodeInvalid,
    InvalidInput,
    LinkDead,
    LinkUsed,
    PolicyFailed,
)
from api.i18n import known_locale
from api.mail import assisted as mails
from api.mail.delivery import UNUSABLE_ADDRESS, Mail, queued_delivery
from api.mail.transports import MailError, PermanentMailError
from api.settings import Settings
from api.support.queue import SupportQueue
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
    OutboxHandler,
)
from engine.clock import as_utc
from engine.worker import describe, fire_claimed

log = logging.getLogger(__name__)

NAME = "assisted_recovery"
# The journeys that give an account back (shared with flows.password_recovery).
ACCOUNT_JOURNEYS = "account_access"
PERSON = "person"

# -- 1. the stored names -------------------------------------------------------------


class Step(StrEnum):
    """The states of a case, as stored."""

    submitted = "submitted"  # recorded; the code is on its way to the contact address
    confirming = "confirming"  # the code was sent; waiting for the person to type it
    in_review = "in_review"  # the contact address is confirmed: support's queue
    review_overdue = "review_overdue"  # still in the queue, past the review deadline
    info_requested = "info_requested"  # support asked a question; waiting for the answer
    waiting = "waiting"  # approved; the waiting period runs
    granted = "granted"  # the wait is over; the grant link went to the contact address
    link_opened = "link_opened"  # the grant link was opened
    password_set = "password_set"  # the new password and the new address are the account's
    logged_in = "logged_in"  # the person signed in with them
    denied = "denied"  # support could not verify the request
    cancelled = "cancelled"  # by the owner ("this wasn't me"), the person, or support
    expired = "expired"  # the code was never confirmed, or the grant link never used
    superseded = "superseded"  # the password changed by another route, or a newer request
    throttled = "throttled"  # too many requests for the address (or an open case): nothing sent
    undeliverable = "undeliverable"  # the code could not be delivered


class Event(StrEnum):
    """The events a case can be sent, as stored."""

    send_code = "send_code"
    bounce = "bounce"
    confirm = "confirm"
    flag_overdue = "flag_overdue"
    approve = "approve"
    deny = "deny"
    request_info = "request_info"
    answer = "answer"
    end_wait = "end_wait"
    open_link = "open_link"
    set_password = "set_password"
    log_in = "log_in"
    expire = "expire"
    cancel = "cancel"
    replace = "replace"
    supersede = "supersede"


FINAL = {
    Step.logged_in,
    Step.denied,
    Step.cancelled,
    Step.expired,
    Step.superseded,
    Step.throttled,
    Step.undeliverable,
}
# A case is open (and live in the account_access group) from its first state to the grant.
OPEN = (
    Step.submitted,
    Step.confirming,
    Step.in_review,
    Step.review_overdue,
    Step.info_requested,
    Step.waiting,
    Step.granted,
    Step.link_opened,
)
UNCONFIRMED = (Step.submitted, Step.confirming)
# The contact address was confirmed: support sees the case, the owner was told.
CONFIRMED = tuple(s for s in OPEN if s not in UNCONFIRMED)
# Waiting for a support decision (the queue a console lists).
REVIEW_QUEUE = (Step.in_review, Step.review_overdue)
# Where support may decide.
UNDER_REVIEW = (*REVIEW_QUEUE, Step.info_requested)
# Why a grant link no longer works, by the state of its case.
DEAD_REASONS = {
    Step.expired: "expired",
    Step.superseded: "superseded",
    Step.cancelled: "cancelled",
    Step.password_set: "used",
    Step.logged_in: "used",
}

# -- 2. the machine --------------------------------------------------------------------


class AssistedRecovery(StateMachine):
    """One support-handled recovery case."""

    s = States.from_enum(Step, initial=Step.submitted, final=FINAL, use_enum_instance=False)

    # Throttles key on the addresses, whether or not the account exists.
    send_code = s.submitted.to(s.throttled, cond="over_a_limit") | s.submitted.to(
        s.confirming, cond="code_sent", on="replace_older_requests"
    )
    bounce = s.submitted.to(s.undeliverable)
    confirm = s.confirming.to(s.in_review, cond="code_typed_right", on="tell_the_owner")
    flag_overdue = s.in_review.to(s.review_overdue)
    approve = (
        s.in_review.to(
            s.waiting, cond=["account_known", "contact_address_free"], on="start_the_wait"
        )
        | s.review_overdue.to(
            s.waiting, cond=["account_known", "contact_address_free"], on="start_the_wait"
        )
        | s.info_requested.to(
            s.waiting, cond=["account_known", "contact_address_free"], on="start_the_wait"
        )
    )
    deny = (
        s.in_review.to(s.denied, on="close_the_case")
        | s.review_overdue.to(s.denied, on="close_the_case")
        | s.info_requested.to(s.denied, on="close_the_case")
    )
    request_info = (
        s.in_review.to(s.info_requested, on="ask_the_requester")
        | s.review_overdue.to(s.info_requested, on="ask_the_requester")
        | s.info_requested.to.itself(on="ask_the_requester")
    )
    answer = s.info_requested.to(s.in_review, cond="answer_given", on="keep_the_answer")
    end_wait = s.waiting.to(s.granted, on="send_the_grant")
    open_link = s.granted.to(s.link_opened, cond="link_live") | s.link_opened.to.itself(
        cond="link_live"
    )
    set_password = s.link_opened.to(
        s.password_set,
        cond=["link_live", "password_acceptable"],
        on="change_the_password_and_address",
    )
    log_in = s.password_set.to(
        s.logged_in, cond="signed_in_with_the_new_password", on="tell_the_applications"
    )
    expire = (
        s.submitted.to(s.expired)
        | s.confirming.to(s.expired)
        | s.granted.to(s.expired, on="revoke_the_link")
        | s.link_opened.to(s.expired, on="revoke_the_link")
    )
    cancel = (
        s.submitted.to(s.cancelled, on="close_the_case")
        | s.confirming.to(s.cancelled, on="close_the_case")
        | s.in_review.to(s.cancelled, on="close_the_case")
        | s.review_overdue.to(s.cancelled, on="close_the_case")
        | s.info_requested.to(s.cancelled, on="close_the_case")
        | s.waiting.to(s.cancelled, on="close_the_case")
        | s.granted.to(s.cancelled, on="close_the_case")
        | s.link_opened.to(s.cancelled, on="close_the_case")
    )
    # A newer request for the same address replaces one whose code was never confirmed.
    replace = s.confirming.to(s.superseded, on="close_the_case")
    # The one-live group's end event: taken only when the account's password changed.
    supersede = (
        s.submitted.to(s.superseded, cond="owner_recovered", on="close_the_case")
        | s.confirming.to(s.superseded, cond="owner_recovered", on="close_the_case")
        | s.in_review.to(s.superseded, cond="owner_recovered", on="close_the_case")
        | s.review_overdue.to(s.superseded, cond="owner_recovered", on="close_the_case")
        | s.info_requested.to(s.superseded, cond="owner_recovered", on="close_the_case")
        | s.waiting.to(s.superseded, cond="owner_recovered", on="close_the_case")
        | s.granted.to(s.superseded, cond="owner_recovered", on="close_the_case")
        | s.link_opened.to(s.superseded, cond="owner_recovered", on="close_the_case")
    )

    # -- 3a. guards: decisions from facts -----------------------------------------------

    def over_a_limit(self, throttle: str | None = None) -> bool:
        return throttle is not None

    def code_sent(self, sent: bool = False) -> bool:
        return sent

    def code_typed_right(self, matched: bool = False) -> bool:
        return matched

    def account_known(self) -> bool:
        """A case for an address without an account can be denied, never approved."""
        return self.model.data.get("account_id") is not None

    def contact_address_free(self, tx: Any) -> bool:
        """The contact address must not be another account's (it becomes this one's).

        Read in the transition's transaction: support's generic events carry no facts
        of this flow, so the guard reads the one row it decides on.
        """
        account_id = _uuid_or_none(self.model.data.get("account_id"))
        contact = str(self.model.data.get("contact_normalized", ""))
        return not address_taken(tx.conn, contact, besides=account_id)

    def answer_given(self, answer: str = "") -> bool:
        return bool(answer.strip())

    def link_live(self, link: links.Link | None = None) -> bool:
        return link is not None and link.live

    def password_acceptable(self, violations: list[Violation] | None = None) -> bool:
        return violations == []

    def signed_in_with_the_new_password(self, credential_version: int | None = None) -> bool:
        recorded = self.model.data.get("credential_version")
        return credential_version is not None and recorded == credential_version

    def owner_recovered(self, tx: Any) -> bool:
        """The account's password changed since the case learned of the account: its owner
        still holds the mailbox (a reset) or another case completed. The engine sends this
        event, without facts, whenever another journey of the group becomes live (a
        "Forgot password?" email, which anyone can ask for): only a change counts."""
        account_id = _uuid_or_none(self.model.data.get("account_id"))
        if account_id is None:
            return False
        now = credential_version(tx.conn, account_id)
        return now is not None and now != self.model.data.get("owner_credential_version")

    # -- 3b. effects: what a transition does, in its transaction -------------------------

    def replace_older_requests(self, tx: Any, replaces: tuple[str, ...] = ()) -> None:
        """Older cases for the address whose code nobody confirmed give way to this one
        (a mistyped contact address is fixed by asking again)."""
        for older in replaces:
            tx.fire(uuid.UUID(older), Event.replace, detail={"superseded_by": str(tx.attempt.id)})

    def tell_the_owner(self, tx: Any) -> None:
        """The contact address is confirmed; the account's address is told (queued for
        every case alike: the worker finds whether there is an account to tell)."""
        cases.mark_confirmed(tx.conn, tx.attempt.id, tx.now)
        tx.data["confirmed_at"] = tx.now.isoformat()
        tx.enqueue(NOTICE, {"stage": mails.SUBMITTED})

    def start_the_wait(self, tx: Any, context: Any) -> None:
        """Approved: the waiting period starts (its deadline is the state's), the second
        notice to the account's address is queued, and the wake-up at its end."""
        minutes = int(context.settings.assisted_wait_minutes)
        tx.data["wait_minutes"] = minutes
        tx.data["approved_at"] = tx.now.isoformat()
        tx.enqueue(NOTICE, {"stage": mails.APPROVED})
        tx.enqueue(WAKE, {}, available_at=tx.now + timedelta(minutes=minutes))

    def ask_the_requester(self, tx: Any, reason: str) -> None:
        """Support's question (its reason) goes to the contact address with a form."""
        cases.retire_tokens(tx.conn, tx.attempt.id, cases.ANSWER, tx.now)
        exchanges = list(self.model.data.get("exchanges") or [])
        exchanges.append({"question": reason, "asked_at": tx.now.isoformat(), "answer": None})
        tx.data["exchanges"] = exchanges
        tx.enqueue(INFO, {})

    def keep_the_answer(self, tx: Any, answer: str, answer_token: str) -> None:
        """The person's answer joins the case, which goes back to the queue."""
        if not cases.use_token(tx.conn, answer_token, tx.now):
            raise ConflictError(tx.attempt.id, Event.answer)
        exchanges = [dict(e) for e in self.model.data.get("exchanges") or []]
        if exchanges:
            exchanges[-1].update(answer=answer, answered_at=tx.now.isoformat())
        tx.data["exchanges"] = exchanges

    def send_the_grant(self, tx: Any) -> None:
        """The waiting period is over: the grant link goes to the contact address."""
        tx.enqueue(GRANT, {})

    def change_the_password_and_address(
        self, tx: Any, link: links.Link, account: Account, new_hash: str
    ) -> None:
        """Use the grant up (exactly once), store the password, make the contact address
        the account's, end what the old password vouched for (sessions, links, the other
        journeys of the old address), and tell the old address."""
        if not links.consume(tx.conn, link, tx.now):
            raise ConflictError(tx.attempt.id, Event.set_password)
        tx.data["credential_version"] = change_password(
            tx.conn, account, new_hash, tx.now, keep_link=link.token_hash
        )
        data = self.model.data
        change_address(tx.conn, account.id, str(data["contact_email"]), data["contact_normalized"])
        tx.end_journeys(tx.attempt.subject, detail={"reason": "password_changed"})
        # The applications hear of both changes, in this transaction.
        about = {"account_id": str(account.id), "attempt_id": str(tx.attempt.id), "flow": NAME}
        events.emit(tx, events.PASSWORD_CHANGED, {**about, "changed_at": events.at(tx.now)})
        events.emit(tx, events.EMAIL_CHANGED, {**about, "changed_at": events.at(tx.now)})
        tx.enqueue(
            MOVED,
            {"old_email": account.email, "name": account.name, "locale": account.locale},
        )

    def tell_the_applications(self, tx: Any) -> None:
        """The person is back in, at the new address: the applications hear that the
        recovery completed."""
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

    def revoke_the_link(self, tx: Any) -> None:
        """The grant link was never used in time: it dies with the case."""
        links.revoke(tx.conn, [tx.attempt.id], tx.now)

    def close_the_case(self, tx: Any) -> None:
        """The case ends without a change: its grant link (if any) dies, and a person whose
        contact address was confirmed is told "we could not verify your request"."""
        links.revoke(tx.conn, [tx.attempt.id], tx.now)
        if tx.previous_state in CONFIRMED:
            tx.enqueue(CLOSED, {})


if {event.id for event in AssistedRecovery.events} != set(Event):
    raise TypeError("flows.assisted_recovery: Event must name exactly the machine's events")


# -- 4. the flow as the engine knows it ------------------------------------------------------


class App(Protocol):
    """What this flow needs from the application (the `Services` it runs in)."""

    settings: Settings
    engine: Engine
    hasher: PasswordHasher
    policy: PasswordPolicy
    accounts: Accounts
    mail: Mail


# Outbox kinds (stored).
NOTICE = "assisted_notice"
WAKE = "assisted_wake"
INFO = "assisted_info"
GRANT = "assisted_grant"
CLOSED = "assisted_closed"
MOVED = "assisted_moved"

# A case the worker never got to (an outage) is dropped after a day.
REQUEST_TTL = timedelta(hours=24)
# The contact address must be confirmed within a day of the code being sent.
CODE_TTL = timedelta(hours=24)
# The grant link works for a day (login.gov's figure).
GRANT_TTL = timedelta(hours=24)
THROTTLE_WINDOW = timedelta(hours=1)
# A wake-up that came a little early (clocks) looks again just after the deadline.
WAKE_MARGIN = timedelta(milliseconds=1)


PERSONAL_DATA = {
    "data": (
        "email_submitted",
        "contact_email",
        "contact_normalized",
        "name",
        "statement",
        "birth_date",
        "account_created",
        "exchanges",
        "client_ip",
        "user_agent",
    ),
    "detail": ("client_ip",),
}


def specs(settings: Settings) -> list[FlowSpec]:
    """The flow's versions, configured by the assisted-recovery settings."""
    review = timedelta(days=settings.assisted_review_days)
    # Fixed per configuration rather than computed from the case: engine.diagrams cannot
    # draw a computed deadline yet. A running wait keeps the deadline stored when it
    # began, so a new setting changes only the cases approved after it.
    wait = timedelta(minutes=settings.assisted_wait_minutes)
    return [
        FlowSpec(
            name=NAME,
            machine=AssistedRecovery,
            version=1,
            description=(
                '"I can\'t access this email": confirm a contact address, a support review, '
                "a waiting period, then a grant link to the new address."
            ),
            deadlines={
                Step.submitted: Deadline(REQUEST_TTL, Event.expire),
                Step.confirming: Deadline(CODE_TTL, Event.expire),
                Step.in_review: Deadline(review, Event.flag_overdue),
                Step.waiting: Deadline(wait, Event.end_wait),
                Step.granted: Deadline(GRANT_TTL, Event.expire),
                # Opening the grant link does not extend its life.
                Step.link_opened: Deadline(GRANT_TTL, Event.expire, restart=False),
            },
            exclusive=Exclusive(ACCOUNT_JOURNEYS, live=OPEN, end_event=Event.supersede),
            funnel=(
                Step.submitted,
                Step.confirming,
                Step.in_review,
                Step.waiting,
                Step.granted,
                Step.password_set,
                Step.logged_in,
            ),
            jobs=(Job(Step.submitted, send_code),),
            outbox=(
                OutboxHandler(NOTICE, send_notice),
                OutboxHandler(WAKE, wake_at_the_end_of_the_wait),
                OutboxHandler(INFO, send_question),
                OutboxHandler(GRANT, send_grant),
                OutboxHandler(CLOSED, send_closed),
                OutboxHandler(MOVED, send_moved),
            ),
            hooks={
                "signed_in": signed_in,
                # What support may fire (POST /api/support/attempts/{id}/events/{event}).
                "support_events": (Event.approve, Event.deny, Event.request_info, Event.cancel),
                "support_detail": support_detail,
                # The console's case queue: cases waiting for a decision or for the person.
                "support_queue": SupportQueue(
                    states=UNDER_REVIEW,
                    overdue=(Step.review_overdue,),
                    waiting_on_person=(Step.info_requested,),
                    signals=queue_signals,
                ),
                "links": links.LinkActions(
                    open=open_link, set_password=set_password, cancel=cancel
                ),
                "session_notices": session_notices,
                # What identifies the person in a case: blanked when the account is
                # deleted (the case keeps its shape for the statistics).
                "personal_data": PERSONAL_DATA,
            },
        )
    ]


# -- 4a. automatic work: the confirmation code -------------------------------------------------


async def send_code(app: App, attempt: AttemptRecord) -> None:
    """A claimed `submitted` case: throttle it, or send the code to the contact address.

    An address without an account gets its code like any other (the person typing it
    must not learn which it is); the account, if any, is recorded for support.
    """
    now = app.engine.clock.now()
    if attempt.deadline_at is not None and as_utc(attempt.deadline_at) < now:
        await app.engine.db.run(app.engine.get_sync, attempt.id)
        return
    delivery = dict(attempt.data.get("delivery") or {})
    throttle = await app.engine.db.run(_throttle, app, attempt, write=False)
    if throttle is not None:
        await fire_claimed(
            app.engine,
            attempt,
            Event.send_code,
            params={"throttle": throttle},
            detail={"reason": throttle},
            data={"delivery": {**delivery, "status": "none"}},
        )
        return
    account = await app.accounts.by_address(attempt.subject)
    if account is not None and account.disabled:
        account = None
    older = await app.engine.queries.page(
        flows=[NAME], subject=attempt.subject, states=[Step.confirming], limit=cases.MAX_CANDIDATES
    )
    code = cases.new_code()
    tries = int(delivery.get("tries") or 0) + 1
    base = app.settings.public_base_url
    try:
        message = mails.code_email(
            locale=known_locale(attempt.data.get("locale")),
            to=str(attempt.data.get("contact_email", "")),
            mail_from=app.mail.sender,
            code=code,
            expires_at=now + CODE_TTL,
            confirm_page=f"{base}/assisted-recovery/confirm?lang={known_locale(attempt.data.get('locale'))}",
            reference=support_reference(attempt.id),
            sent_at=now,
        )
    except ValueError:
        failed = {**delivery, "tries": tries, "last_error": UNUSABLE_ADDRESS, "sent_at": None}
        await fire_claimed(
            app.engine,
            attempt,
            Event.bounce,
            detail={"reason": "address_unusable", "tries": tries},
            data={"delivery": {**failed, "status": "failed"}},
        )
        return
    contact = str(attempt.data.get("contact_normalized", ""))
    # Stored before the mail leaves, so a code typed the moment it arrives is found.
    await app.engine.db.run(cases.store_code, app.engine.db, attempt.id, contact, code, now)
    error = await app.mail.send(message)
    if error is None:
        found = {
            "account_id": str(account.id) if account else None,
            "owner_credential_version": account.credential_version if account else None,
        }
        sent = {**delivery, "status": "sent", "tries": tries, "sent_at": now.isoformat()}
        await fire_claimed(
            app.engine,
            attempt,
            Event.send_code,
            params={
                "sent": True,
                "replaces": tuple(str(r.id) for r in older.items if r.id != attempt.id),
            },
            detail={"tries": tries},
            data={**found, "delivery": sent},
        )
        return
    await _failed_send(app, attempt, delivery, tries, error)


async def _failed_send(
    app: App, attempt: AttemptRecord, delivery: dict[str, Any], tries: int, error: MailError
) -> None:
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
    retry_at = app.engine.clock.now() + app.mail.backoff(tries)
    try:
        await app.engine.db.run(
            app.engine.note_sync,
            attempt.id,
            data={"delivery": {**failed, "status": "retrying"}},
            lease_until=retry_at,
            expected_version=attempt.version,
        )
    except (ConflictError, EventRefused) as exc:
        log.info("case %s changed while its code was retried: %s", attempt.id, describe(exc))


def _throttle(app: App, attempt: AttemptRecord) -> str | None:
    """Why nothing may be sent for this case now, or None: the email route's limits, on
    the account's address and on the contact address; and one open case per address."""
    engine = app.engine
    since = engine.clock.now() - THROTTLE_WINDOW
    sent = engine.queries.count_events_sync(
        flow=NAME,
        subject=attempt.subject,
        event=Event.send_code,
        to_states=(Step.confirming,),
        since=since,
        exclude=attempt.id,
        created_since=since - REQUEST_TTL,
    )
    if sent >= app.settings.emails_per_hour:
        return "hourly_limit"
    contact = str(attempt.data.get("contact_normalized", ""))
    if cases.sent_since(engine.db, contact, since, attempt.id) >= app.settings.emails_per_hour:
        return "contact_hourly_limit"
    cooldown = timedelta(seconds=app.settings.resend_cooldown_seconds)
    if cooldown and engine.queries.has_predecessor_sync(attempt, cooldown):
        return "resend_cooldown"
    confirmed = engine.queries.page_sync(
        flows=[NAME], subject=attempt.subject, states=CONFIRMED, limit=1
    )
    if confirmed.items:
        return "case_open"
    return None


# -- 4b. automatic work: the emails queued by transitions ----------------------------------------

Build = Callable[[AttemptRecord, datetime], Awaitable[Any]]


async def _outbox_mail(app: App, item: Mapping[str, Any], build: Build) -> None:
    """Send the message `build` makes for the item's case (None: nothing to send), and
    finish the item: done, retried like the code's email, or given up."""
    engine = app.engine
    tries = int(item["tries"]) + 1  # the claim counted this try

    async def finish(error: str | None = None, retry_at: datetime | None = None) -> None:
        await engine.db.run(engine.outbox_finish_sync, item["id"], error=error, retry_at=retry_at)

    try:
        attempt = await engine.get(_uuid(item["attempt_id"]))
        message = await build(attempt, as_utc(item["created_at"]))
    except ValueError:
        await finish(UNUSABLE_ADDRESS)
        return
    if message is None:
        await finish()
        return
    error = await app.mail.send(message)
    if error is None:
        await finish()
    elif app.mail.gives_up(error, tries):
        log.warning("outbox item %s given up after %d tries: %s", item["id"], tries, error)
        await finish(str(error))
    else:
        await finish(str(error), engine.clock.now() + app.mail.backoff(tries))


async def send_notice(app: App, item: dict[str, Any]) -> None:
    """To the account's address, in the account's language: the case, and "this wasn't me".

    Queued for every confirmed case: one for an address without an account sends
    nothing (the confirmation did the same work for it).
    """
    stage = str((item["payload"] or {}).get("stage", mails.SUBMITTED))

    async def build(attempt: AttemptRecord, queued_at: datetime) -> Any:
        account_id = _uuid_or_none(attempt.data.get("account_id"))
        account = await app.accounts.by_id(account_id) if account_id else None
        if account is None or attempt.state not in CONFIRMED:
            return None  # no account to tell, or the case already ended
        token = new_token()
        now = app.engine.clock.now()
        await app.engine.db.run(
            cases.store_token, app.engine.db, attempt.id, cases.CANCEL, token_hash(token), now
        )
        return mails.notice_email(
            locale=known_locale(account.locale),
            to=account.email,
            mail_from=app.mail.sender,
            name=account.name,
            stage=stage,
            new_address=mask_email(str(attempt.data.get("contact_normalized", ""))),
            requested_at=as_utc(attempt.created_at),
            change_at=wait_ends(attempt),
            cancel_link=(
                f"{app.settings.public_base_url}/assisted-recovery/cancel"
                f"?token={token}&lang={known_locale(account.locale)}"
            ),
            reference=support_reference(attempt.id),
            sent_at=now,
        )

    await _outbox_mail(app, item, build)


async def wake_at_the_end_of_the_wait(app: App, item: dict[str, Any]) -> None:
    """The wait's end: reading the case applies its deadline (`end_wait`, which queues the
    grant). A wake that comes before the deadline (the deadline is strict) looks again
    just after it; one for a case that moved on has nothing to do."""
    engine = app.engine
    attempt = await engine.get(_uuid(item["attempt_id"]))
    if attempt.state == Step.waiting and attempt.deadline_at is not None:
        again = as_utc(attempt.deadline_at) + WAKE_MARGIN
        await engine.db.run(
            engine.outbox_finish_sync, item["id"], error="the wait is not over", retry_at=again
        )
        return
    await engine.db.run(engine.outbox_finish_sync, item["id"])


async def send_question(app: App, item: dict[str, Any]) -> None:
    """Support's question to the contact address, with the link to the answer form."""

    async def build(attempt: AttemptRecord, queued_at: datetime) -> Any:
        exchanges = attempt.data.get("exchanges") or []
        if attempt.state != Step.info_requested or not exchanges:
            return None
        token = new_token()
        now = app.engine.clock.now()
        await app.engine.db.run(
            cases.store_token, app.engine.db, attempt.id, cases.ANSWER, token_hash(token), now
        )
        return mails.info_email(
            locale=known_locale(attempt.data.get("locale")),
            to=str(attempt.data.get("contact_email", "")),
            mail_from=app.mail.sender,
            question=str(exchanges[-1].get("question", "")),
            answer_link=(
                f"{app.settings.public_base_url}/assisted-recovery/answer"
                f"?token={token}&lang={known_locale(attempt.data.get('locale'))}"
            ),
            reference=support_reference(attempt.id),
            sent_at=now,
        )

    await _outbox_mail(app, item, build)


async def send_grant(app: App, item: dict[str, Any]) -> None:
    """The grant link, a recovery link of the usual form, to the contact address."""

    async def build(attempt: AttemptRecord, queued_at: datetime) -> Any:
        account_id = _uuid_or_none(attempt.data.get("account_id"))
        if attempt.state != Step.granted or account_id is None or attempt.deadline_at is None:
            return None
        token = new_token()
        # The link row takes a cancel-only token too; this one is never sent (the grant's
        # own token cancels, on POST /api/recovery/cancel).
        unsent = token_hash(new_token())
        now = app.engine.clock.now()
        await app.engine.db.run(
            links.store, app.engine.db, attempt.id, account_id, token_hash(token), unsent, now
        )
        return mails.grant_email(
            locale=known_locale(attempt.data.get("locale")),
            to=str(attempt.data.get("contact_email", "")),
            mail_from=app.mail.sender,
            link=f"{app.settings.public_base_url}/recovery/reset?token={token}",
            expires_at=as_utc(attempt.deadline_at),
            reference=support_reference(attempt.id),
            sent_at=now,
        )

    await _outbox_mail(app, item, build)


async def send_closed(app: App, item: dict[str, Any]) -> None:
    """ "We could not verify your request" to the contact address, whatever ended it."""

    async def build(attempt: AttemptRecord, queued_at: datetime) -> Any:
        return mails.closed_email(
            locale=known_locale(attempt.data.get("locale")),
            to=str(attempt.data.get("contact_email", "")),
            mail_from=app.mail.sender,
            reference=support_reference(attempt.id),
            recovery_page=f"{app.settings.public_base_url}/recovery",
            sent_at=app.engine.clock.now(),
        )

    await _outbox_mail(app, item, build)


async def send_moved(app: App, item: dict[str, Any]) -> None:
    """To the old address, in the account's language: the account moved and its password
    changed."""
    payload = item["payload"] or {}

    async def build(attempt: AttemptRecord, queued_at: datetime) -> Any:
        return mails.moved_email(
            locale=known_locale(payload.get("locale")),
            to=str(payload.get("old_email", "")),
            mail_from=app.mail.sender,
            name=str(payload.get("name", "")),
            new_address=mask_email(str(attempt.data.get("contact_normalized", ""))),
            changed_at=queued_at,
            reference=support_reference(attempt.id),
            sent_at=app.engine.clock.now(),
        )

    await _outbox_mail(app, item, build)


def wait_ends(record: AttemptRecord) -> datetime | None:
    """When an approved case's waiting period ends (or ended); None before approval."""
    if record.state == Step.waiting and record.deadline_at is not None:
        return as_utc(record.deadline_at)
    approved = _time(record.data.get("approved_at"))
    minutes = record.data.get("wait_minutes")
    if approved is None or not isinstance(minutes, int):
        return None
    return approved + timedelta(minutes=minutes)


def _uuid(value: object) -> uuid.UUID:
    return uuid.UUID(str(value))


def _uuid_or_none(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        return None


# -- 4c. hooks ------------------------------------------------------------------------------


async def signed_in(app: App, account: Account, credential_version: int) -> None:
    """A sign-in with the password a case set (at the address it gave) ends the case."""
    ids = await app.engine.db.run(
        cases.confirmed_cases, app.engine.db, account.email_normalized, write=False
    )
    for attempt_id in ids:
        record = await app.engine.db.run(app.engine.read_sync, attempt_id, write=False)
        if record.state != Step.password_set:
            continue
        with contextlib.suppress(EventRefused, ConflictError):
            await app.engine.fire(
                record.id,
                Event.log_in,
                actor=PERSON,
                params={"credential_version": credential_version},
            )


MATCH = "match"
NO_MATCH = "no_match"
NOT_ON_FILE = "not_on_file"


def _folded(text: str) -> str:
    """A name as compared: compatibility forms, accents, case and spacing set aside."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(bare.casefold().split())


def _created_matches(given: str, created: datetime) -> bool:
    """ "Roughly when the account was created": its year, or its month give or take one."""
    if len(given) == len("YYYY"):
        return created.year == int(given)
    year, month = (int(part) for part in given.split("-"))
    months = (created.year * 12 + created.month) - (year * 12 + month)
    return abs(months) <= 1


def match_signals(data: Mapping[str, Any], account: Account | None) -> dict[str, str]:
    """For each detail the person gave: whether it matches the account (never the stored
    value): `match`, `no_match`, or `not_on_file` (nothing to compare it with)."""
    signals: dict[str, str] = {}
    name = data.get("name")
    if isinstance(name, str) and name:
        if account is None:
            signals["name"] = NOT_ON_FILE
        else:
            signals["name"] = MATCH if _folded(name) == _folded(account.name) else NO_MATCH
    birth = data.get("birth_date")
    if isinstance(birth, str) and birth:
        if account is None or account.birth_date is None:
            signals["birth_date"] = NOT_ON_FILE
        else:
            signals["birth_date"] = MATCH if birth == account.birth_date.isoformat() else NO_MATCH
    created = data.get("account_created")
    if isinstance(created, str) and created:
        if account is None:
            signals["account_created"] = NOT_ON_FILE
        else:
            ok = _created_matches(created, as_utc(account.created_at))
            signals["account_created"] = MATCH if ok else NO_MATCH
    return signals


def support_detail(app: App, record: AttemptRecord) -> dict[str, Any]:
    """What support reads of a case (its detail only; lists show none of it): the
    statement and details whole, a match signal per detail given, whether an account was
    found, the exchanges, and the waiting period. Never a stored value of the account."""
    data = record.data
    account_id = _uuid_or_none(data.get("account_id"))
    account = app.accounts.by_id_sync(account_id) if account_id else None
    dispatched = "owner_credential_version" in data
    contact = str(data.get("contact_normalized", ""))
    in_use = False
    if contact:
        holder = app.accounts.by_address_sync(contact)
        in_use = holder is not None and holder.id != account_id
    return {
        "account": ("found" if account else "not_found") if dispatched else "not_looked_up",
        "statement": data.get("statement"),
        "details": {
            "name": data.get("name"),
            "birth_date": data.get("birth_date"),
            "account_created": data.get("account_created"),
        },
        "matches": match_signals(data, account) if dispatched else {},
        "contact_masked": mask_email(contact) if contact else "",
        "contact_confirmed": data.get("confirmed_at") is not None,
        "contact_in_use": in_use,
        "review_overdue": record.state == Step.review_overdue,
        "exchanges": list(data.get("exchanges") or []),
        "wait_minutes": data.get("wait_minutes"),
        "wait_ends_at": wait_ends(record),
    }


def queue_signals(app: App, record: AttemptRecord) -> dict[str, str]:
    """A case's row in support's queue: whether an account was found, and the details'
    match signals (never a detail itself)."""
    found = support_detail(app, record)
    return {"account": found["account"], **found["matches"]}


NOTICE_TEXT = (
    "Someone asked our support team to move this account to a new address ({address}). "
    'If it was not you, use the "This wasn\'t me" link in the email we sent to this '
    "account's address."
)
APPROVED_TEXT = (
    "A request to move this account to a new address ({address}) was approved: the change "
    'happens on {change} unless you cancel it with the "This wasn\'t me" link in the email '
    "we sent to this account's address."
)


async def session_notices(app: App, account_id: uuid.UUID) -> list[dict[str, Any]]:
    """What every signed-in session of the account is told: the confirmed cases asking
    to move it to another address, in the account's language."""
    account = await app.accounts.by_id(account_id)
    if account is None:
        return []
    page = await app.engine.queries.page(
        flows=[NAME], subject=account.email_normalized, states=CONFIRMED, limit=10
    )
    locale = known_locale(account.locale)
    notices = []
    for record in page.items:
        record = await app.engine.get(record.id)  # an overdue deadline applied first
        if record.state not in CONFIRMED:
            continue
        address = mask_email(str(record.data.get("contact_normalized", "")))
        change_at = wait_ends(record)
        if change_at is not None:
            when = mails.format_time(change_at, locale)
            message = i18n.gettext(locale, APPROVED_TEXT, address=address, change=when)
        else:
            message = i18n.gettext(locale, NOTICE_TEXT, address=address)
        notices.append(
            {
                "flow": NAME,
                "reference": support_reference(record.id),
                "state": record.state,
                "requested_at": as_utc(record.created_at),
                "effective_at": change_at,
                "message": message,
            }
        )
    return notices


# -- 5. what a person does --------------------------------------------------------------------

MAX_NAME_CHARS = 200
MAX_STATEMENT_CHARS = 4000
MAX_ANSWER_CHARS = 4000
MAX_USER_AGENT_CHARS = 256
OLDEST_BIRTH_YEAR = 1900
# The earliest year an account can say it was created in.
OLDEST_ACCOUNT_YEAR = 1990


@dataclass(frozen=True)
class CaseRequest:
    """A request, checked: both addresses normalised, the details bounded."""

    email: str
    email_normalized: str
    contact_email: str
    contact_normalized: str
    name: str
    statement: str
    birth_date: str | None
    account_created: str | None


NO_CONTROL_CHARACTERS = "field {name} must not contain control characters"
TOO_LONG = "field {name} must be at most {limit} characters"


def _text(value: object, field: str, limit: int) -> tuple[str, InvalidInput | None]:
    """A bounded free text; a name on one line, a statement or answer on several, and no
    other control character in either (a NUL could reach no mail, log or database)."""
    if not isinstance(value, str):
        return "", InvalidInput(field, "field {name} must be a string", name=field)
    allowed = "" if field == "name" else "\n\r\t"
    if any(unicodedata.category(c) == "Cc" and c not in allowed for c in value):
        return "", InvalidInput(field, NO_CONTROL_CHARACTERS, name=field)
    cleaned = " ".join(value.split()) if field == "name" else value.strip()
    if not cleaned:
        return "", InvalidInput(field, "field {name} must not be empty", name=field)
    if len(cleaned) > limit:
        return "", InvalidInput(field, TOO_LONG, name=field, limit=limit)
    return cleaned, None


def _birth_date(value: object, today: date) -> tuple[str | None, InvalidInput | None]:
    if value is None or value == "":
        return None, None
    problem = InvalidInput("birth_date", "birth_date must be a past date as YYYY-MM-DD")
    if not isinstance(value, str) or len(value) != len("YYYY-MM-DD"):
        return None, problem
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return None, problem
    if not (day.year >= OLDEST_BIRTH_YEAR and day < today):
        return None, problem
    return day.isoformat(), None


def _account_created(value: object, today: date) -> tuple[str | None, InvalidInput | None]:
    if value is None or value == "":
        return None, None
    problem = InvalidInput(
        "account_created", "account_created must be a year (YYYY) or a month (YYYY-MM)"
    )
    if not isinstance(value, str) or len(value) not in (4, 7):
        return None, problem
    parts = value.split("-")
    if not all(p.isascii() and p.isdigit() for p in parts) or len(parts[0]) != 4:
        return None, problem
    year = int(parts[0])
    month = int(parts[1]) if len(parts) == 2 and len(parts[1]) == 2 else None
    if len(parts) == 2 and month is None:
        return None, problem
    if month is not None and not 1 <= month <= 12:
        return None, problem
    if not OLDEST_ACCOUNT_YEAR <= year <= today.year:
        return None, problem
    return value, None


def check_request(
    *,
    email: object,
    contact_email: object,
    name: object,
    statement: object,
    birth_date: object = None,
    account_created: object = None,
    today: date,
) -> tuple[CaseRequest | None, list[InvalidInput]]:
    """The request checked field by field: every problem at once (the form shows each next
    to its field), or the request. Nothing here looks at any account."""
    problems: list[InvalidInput] = []
    addresses: dict[str, tuple[str, str]] = {}
    for field, value in (("email", email), ("contact_email", contact_email)):
        try:
            addresses[field] = (str(value).strip(), normalise_email(value))
        except InvalidEmail as exc:
            problems.append(InvalidInput(field, str(exc)))
    if len(addresses) == 2 and addresses["email"][1] == addresses["contact_email"][1]:
        problems.append(
            InvalidInput("contact_email", "contact_email must be another address than email")
        )
    clean_name, problem = _text(name, "name", MAX_NAME_CHARS)
    problems += [problem] if problem else []
    clean_statement, problem = _text(statement, "statement", MAX_STATEMENT_CHARS)
    problems += [problem] if problem else []
    birth, problem = _birth_date(birth_date, today)
    problems += [problem] if problem else []
    created, problem = _account_created(account_created, today)
    problems += [problem] if problem else []
    if problems:
        return None, problems
    return (
        CaseRequest(
            email=addresses["email"][0],
            email_normalized=addresses["email"][1],
            contact_email=addresses["contact_email"][0],
            contact_normalized=addresses["contact_email"][1],
            name=clean_name,
            statement=clean_statement,
            birth_date=birth,
            account_created=created,
        ),
        [],
    )


def refusal(problems: list[InvalidInput]) -> InvalidInput:
    """One error for every problem at once: the first names the field, details list all."""
    first = problems[0]
    error = InvalidInput(first.field, first.message)
    error.details = [detail for problem in problems for detail in problem.details]
    return error


async def request(
    app: App,
    case: CaseRequest,
    *,
    locale: str,
    client_ip: str | None = None,
    user_agent: str | None = None,
) -> AttemptRecord:
    """ "I can't access this email": record a `submitted` case, the same work whatever the
    address (looking the account up, throttling and the code happen off the request path)."""
    return await app.engine.start(
        NAME,
        subject=case.email_normalized,
        actor=PERSON,
        data={
            "email_submitted": case.email[:320],
            "contact_email": case.contact_email[:320],
            "contact_normalized": case.contact_normalized,
            "name": case.name,
            "statement": case.statement,
            "birth_date": case.birth_date,
            "account_created": case.account_created,
            "locale": known_locale(locale),
            "client_ip": client_ip,
            "user_agent": (user_agent or "")[:MAX_USER_AGENT_CHARS],
            "delivery": queued_delivery(),
        },
        detail={"client_ip": client_ip},
    )


async def confirm(app: App, contact_email: object, code: object) -> AttemptRecord:
    """The code sent to the contact address, typed back: the case goes to support.

    One refusal (`ContactCodeInvalid`) for a wrong code, a dead one, and an address
    with no case waiting; a wrong code counts against every case waiting on the
    address, and each refusal is recorded on them.
    """
    try:
        contact = normalise_email(contact_email)
    except InvalidEmail as exc:
        raise InvalidInput("contact_email", str(exc)) from None
    if not isinstance(code, str):
        raise InvalidInput("code", "code must be a string")
    code = code.strip().replace(" ", "")
    engine = app.engine
    sent = await engine.db.run(cases.unconfirmed, engine.db, contact, write=False)
    waiting: list[tuple[cases.SentCode, AttemptRecord]] = []
    for row in sent:
        record = await engine.get(row.attempt_id)
        if record.state == Step.confirming:
            waiting.append((row, record))
    matched = next(
        (
            (row, record)
            for row, record in waiting
            if not row.dead and cases.plausible_code(code) and cases.code_matches(row, code)
        ),
        None,
    )
    if matched is None:
        await engine.db.run(cases.count_failure, engine.db, [row.attempt_id for row, _ in waiting])
        for row, record in waiting:
            with contextlib.suppress(EventRefused, ConflictError):
                detail = {"reason": "code_dead" if row.dead else "wrong_code"}
                await engine.fire(
                    record.id, Event.confirm, actor=PERSON, params={"matched": False}, detail=detail
                )
        raise ContactCodeInvalid()
    _row, record = matched
    try:
        fired = await engine.fire(
            record.id,
            Event.confirm,
            actor=PERSON,
            params={"matched": True},
            expected_version=record.version,
        )
    except (EventRefused, ConflictError):
        raise ContactCodeInvalid() from None
    return fired.attempt


async def question(app: App, token: object) -> tuple[AttemptRecord, str]:
    """The case and the question an answer link is for (nothing recorded: a GET)."""
    notice = await app.engine.db.run(
        cases.find_token, app.engine.db, token, cases.ANSWER, write=False
    )
    attempt = await app.engine.get(notice.attempt_id)
    if notice.used_at is not None:
        raise LinkUsed(support_reference(attempt.id))
    if attempt.state != Step.info_requested:
        raise _dead_case(attempt)
    exchanges = attempt.data.get("exchanges") or []
    return attempt, str(exchanges[-1].get("question", "")) if exchanges else ""


async def answer(app: App, token: object, text: object) -> AttemptRecord:
    """The person's answer to support's question, once; the case goes back to the queue."""
    text, problem = _text(text, "answer", MAX_ANSWER_CHARS)
    if problem is not None:
        raise problem
    attempt, _question = await question(app, token)
    assert isinstance(token, str)
    try:
        fired = await app.engine.fire(
            attempt.id,
            Event.answer,
            actor=PERSON,
            params={"answer": text, "answer_token": token_hash(token)},
            expected_version=attempt.version,
        )
    except ConflictError:
        raise LinkUsed(support_reference(attempt.id)) from None
    except EventRefused:
        raise _dead_case(await app.engine.get(attempt.id)) from None
    return fired.attempt


async def cancel_case(app: App, token: object) -> AttemptRecord:
    """ "This wasn't me", from a notice to the account's address: the case ends at once."""
    notice = await app.engine.db.run(
        cases.find_token, app.engine.db, token, cases.CANCEL, write=False
    )
    attempt = await app.engine.get(notice.attempt_id)
    try:
        fired = await app.engine.fire(
            attempt.id, Event.cancel, actor=PERSON, detail={"via": "not_me_link"}
        )
    except (EventRefused, ConflictError):
        raise _dead_case(await app.engine.get(attempt.id)) from None
    return fired.attempt


def _dead_case(attempt: AttemptRecord) -> LinkDead:
    """Why a case's link (a notice's, the answer form's) no longer does anything."""
    reason = DEAD_REASONS.get(attempt.state, "revoked")
    return DEAD_LINKS[reason](support_reference(attempt.id))


# -- 5a. the grant link: the `links` hook (the recovery link's pages and API call these) ----------

# A link opened this soon after sending, without cookies, is likely a mail scanner.
AUTOMATED_OPEN_WINDOW = timedelta(seconds=10)


@dataclass(frozen=True)
class OpenedLink:
    """A grant link that was opened and is live."""

    attempt: AttemptRecord
    expires_at: datetime | None
    reference: str


async def open_link(
    app: App, token: object, *, method: str = "GET", has_cookies: bool = True
) -> OpenedLink:
    """Validate the grant link's token and record the open; never consumes it."""
    link = await app.engine.db.run(links.find, app.engine.db, token, write=False)
    attempt = await app.engine.get(link.attempt_id)
    sent_at = as_utc(link.created_at)
    automated = method.upper() == "HEAD" or (
        not has_cookies and app.engine.clock.now() - sent_at <= AUTOMATED_OPEN_WINDOW
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
    """Check the new password, then store it, give the account its new address, and use
    the grant up, exactly once."""
    link = await app.engine.db.run(links.find, app.engine.db, token, write=False)
    attempt = await app.engine.get(link.attempt_id)
    if attempt.state == Step.granted:
        attempt = (await open_link(app, token, method="POST")).attempt
    if attempt.state != Step.link_opened or not link.live:
        # A dead link is refused (and recorded) before any policy or history work.
        await _fire_for_link(app, link, attempt, Event.set_password, {"link": link}, {})
        raise links.dead_link(link, attempt.state, DEAD_REASONS)
    account = await app.accounts.by_id(link.account_id)
    assert account is not None  # a link is bound to an account
    contact_email = str(attempt.data.get("contact_email", ""))
    holder = await app.accounts.by_address(str(attempt.data.get("contact_normalized", "")))
    if holder is not None and holder.id != account.id:
        raise AddressTaken()
    violations = await asyncio.to_thread(
        app.policy.check,
        password,
        confirmation,
        PersonalData(account.name, contact_email, account.birth_date),
    )
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
    return fired.attempt  # type: ignore[no-any-return]


async def cancel(app: App, token: object) -> AttemptRecord:
    """The grant link's token on `POST /api/recovery/cancel`: the person ends the case."""
    link = await app.engine.db.run(links.find, app.engine.db, token, cancel=True, write=False)
    attempt = await app.engine.get(link.attempt_id)
    fired = await _fire_for_link(app, link, attempt, Event.cancel, {}, {"via": "grant_link"})
    return fired.attempt  # type: ignore[no-any-return]


async def _fire_for_link(
    app: App,
    link: links.Link,
    attempt: AttemptRecord,
    event: Event,
    params: dict[str, Any],
    detail: dict[str, Any],
) -> Any:
    """Fire on the grant link's case as the person; explain a refusal as a dead or used
    link (a policy refusal of a live link is the caller's to explain)."""
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
            return None
        raise links.dead_link(link, refused.state, DEAD_REASONS) from None
    except ConflictError:
        current = await app.engine.get(attempt.id)
        if event == Event.open_link and current.state == Step.link_opened:
            return await _fire_for_link(app, link, current, event, params, detail)
        if event == Event.set_password:
            raise LinkUsed(support_reference(attempt.id)) from None
        raise links.dead_link(link, current.state, DEAD_REASONS) from None


def today(app: App) -> date:
    """Today's date (UTC) by the application's clock: what birth dates are checked against."""
    return app.engine.clock.now().astimezone(UTC).date()
