"""The mail worker: turns `requested` attempts into emails, and sends queued notifications.

For each `requested` attempt it claims (a lease: a worker that dies leaves
the attempt claimable again once the lease runs out, so an accepted request
is never lost), the dispatcher

1. applies the throttles, keyed on the normalised submitted address whether or
   not it has an account: more than `emails_per_hour` dispatched in the last
   hour, or another request for the same address inside the resend cooldown
   (a person who clicks twice gets one email) → `throttled`;
2. looks the account up; none (or disabled) → `unknown_account`, nothing sent;
3. otherwise mints a token, emails the link to the address stored on the
   account (never the typed variant), and on acceptance fires `dispatch`
   with a hook that, in the same transaction, stores the token's hash and
   supersedes the account's other live attempts (revoking their tokens);
4. on a temporary transport failure records the delivery facts and postpones
   the attempt with exponential backoff (through its lease), up to
   `mail_max_tries`; a permanent refusal, or running out of tries, fires
   `bounce` → `undeliverable`.

Outbox items of kind `password_changed` (queued when a password is reset)
become the "your password was changed" email, retried the same way.

All database work is sync code run on the database's threads; sends are
async and run a few at a time. Nothing here logs or records a token, a
link, or a database error's message (those can quote stored hashes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

from sqlalchemy import and_, delete, func, insert, literal, or_, select, update
from sqlalchemy.exc import DBAPIError, OperationalError

from api import i18n
from api.accounts.models import Account, RecoveryToken
from api.accounts.tokens import new_token, token_hash
from api.errors import describe
from api.mail.messages import password_changed_email, recovery_email
from api.mail.transports import MailError, MailTransport, PermanentMailError, TemporaryMailError
from api.settings import Settings
from api.support.reference import support_reference
from engine import ConflictError, Engine, EventRefused, Transaction
from engine.clock import as_utc
from engine.core import AttemptRecord, attempt_t, event_t, outbox_t
from engine.tally import ATTEMPTS
from flows.password_recovery import LIVE_STATES, NAME

log = logging.getLogger(__name__)

account_t = Account.__table__
token_t = RecoveryToken.__table__

PASSWORD_CHANGED = "password_changed"
OUTBOX_KINDS = (PASSWORD_CHANGED,)
# Attempts that count against the hourly limit: something was dispatched for the address.
COUNTED_STATES = ("emailed", "unknown_account")
THROTTLE_WINDOW = timedelta(hours=1)
BATCH_SIZE = 16
MAX_CONCURRENT_SENDS = 4
# A transition that lost a race to another attempt's writer is tried again this often.
FIRE_RETRIES = 3
# Recording a send through a database outage: pauses 0.2 s, 0.4 s, ... up to 2 s.
OUTAGE_FIRST_PAUSE = 0.2
OUTAGE_MAX_PAUSE = 2.0
OUTAGE_MARGIN_SECONDS = 2.0

UNUSABLE_ADDRESS = "the stored address cannot be written into an email"
# First key of the PostgreSQL advisory locks taken per address while dispatching.
ADVISORY_LOCK_CLASS = 0x6D61696C  # "mail"

OnSend = Callable[[float, str], None]


@dataclass(frozen=True)
class _Known:
    """The account an attempt's address belongs to."""

    id: uuid.UUID
    email: str
    name: str


@dataclass(frozen=True)
class _Throttled:
    """Nothing is sent: too many emails for this address, or a duplicate request."""

    reason: str  # "hourly_limit" | "resend_cooldown"


@dataclass(frozen=True)
class _Unknown:
    """No (enabled) account has this address: nothing is sent."""


_Decision = _Throttled | _Unknown | _Known


def _log_failure(what: str, exc: BaseException) -> None:
    log.error("%s failed: %s", what, describe(exc))
    # Where it failed (frames only, never the message): enough to debug.
    log.debug("%s failed at:\n%s", what, "".join(traceback.format_tb(exc.__traceback__)))


def _locale(value: object) -> str:
    return value if isinstance(value, str) and value in i18n.SUPPORTED else i18n.DEFAULT


class Dispatcher:
    """Dispatches requested attempts and delivers queued notifications."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        transport: MailTransport,
        on_send: OnSend | None = None,
        *,
        batch_size: int = BATCH_SIZE,
        max_concurrent_sends: int = MAX_CONCURRENT_SENDS,
    ) -> None:
        if batch_size < 1 or max_concurrent_sends < 1:
            raise ValueError("batch_size and max_concurrent_sends must be at least 1")
        self.engine = engine
        self.db = engine.db
        self.clock = engine.clock
        self.settings = settings
        self.transport = transport
        self.on_send = on_send
        self.batch_size = batch_size
        self.max_concurrent_sends = max_concurrent_sends
        self.lease = timedelta(seconds=settings.dispatch_lease_seconds)
        requested_deadline = engine.flows.get(NAME).deadlines.get("requested")
        # An attempt dispatched within the window was created at most this long before it.
        self._max_request_age = requested_deadline.after if requested_deadline else None

    # -- the loop ----------------------------------------------------------

    async def run_once(self) -> int:
        """Process one batch of due work (requested attempts, then the outbox); how many items."""
        handled = await self._dispatch_batch()
        handled += await self._outbox_batch()
        return handled

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set; when idle, sleep `dispatch_poll_seconds`; never crash."""
        while not stop.is_set():
            try:
                handled = await self.run_once()
            except Exception as exc:
                _log_failure("dispatch batch", exc)
                handled = 0
            if handled == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.dispatch_poll_seconds)

    def queue_depth(self) -> int:
        """Requested attempts waiting (including those backing off) plus pending outbox items.

        The attempts come from the engine's running totals (one row, however many
        wait); the pending items from the outbox's pending index.
        """
        attempts = self.engine.totals_sync().get((NAME, ATTEMPTS, "requested"), 0)
        with self.db.transaction(write=False) as conn:
            items = conn.execute(
                select(func.count())
                .select_from(outbox_t)
                .where(outbox_t.c.kind.in_(OUTBOX_KINDS), outbox_t.c.done_at.is_(None))
            ).scalar_one()
        return int(attempts) + int(items)

    # -- requested attempts --------------------------------------------------

    async def _dispatch_batch(self) -> int:
        claimed = await self.db.run(
            self.engine.claim_sync, NAME, "requested", lease=self.lease, limit=self.batch_size
        )
        if not claimed:
            return 0
        # Attempts for one address go one after another, oldest first, so each
        # throttle check sees what its predecessor did; addresses run in parallel.
        by_subject: dict[str, list[AttemptRecord]] = {}
        for record in claimed:
            by_subject.setdefault(record.subject, []).append(record)
        slots = asyncio.Semaphore(self.max_concurrent_sends)

        async def run(records: list[AttemptRecord]) -> None:
            for record in records:
                async with slots:
                    await self._dispatch_safely(record)

        await asyncio.gather(*(run(records) for records in by_subject.values()))
        return len(claimed)

    async def _dispatch_safely(self, record: AttemptRecord) -> None:
        try:
            await self._dispatch(record)
        except Exception as exc:
            # The lease runs out and another pass retries it: nothing is lost.
            _log_failure(f"dispatch of attempt {record.id}", exc)

    async def _dispatch(self, record: AttemptRecord) -> None:
        if record.deadline_at is not None and as_utc(record.deadline_at) < self.clock.now():
            # Waited past its deadline (a long outage): expire it, send nothing.
            await self.db.run(self.engine.get_sync, record.id)
            return
        decision = await self.db.run(self._decide, record, write=False)
        delivery = dict(record.data.get("delivery") or {})
        if isinstance(decision, _Throttled):
            await self._fire(
                record,
                "dispatch",
                params={"throttled": True},
                detail={"reason": decision.reason},
                data={"delivery": {**delivery, "status": "none"}},
            )
        elif isinstance(decision, _Unknown):
            await self._fire(
                record,
                "dispatch",
                params={"account_exists": False, "throttled": False},
                data={"delivery": {**delivery, "status": "none"}},
            )
        else:
            await self._email_link(record, decision, delivery)

    def _decide(self, record: AttemptRecord) -> _Decision:
        """Throttles first (on the address alone), then the account lookup."""
        now = self.clock.now()
        # A support agent's resend is a deliberate, audited act: no throttles.
        by_support = str(record.data.get("requested_by", "")).startswith("support:")
        with self.db.transaction(write=False) as conn:
            if not by_support:
                if self._dispatched_recently(conn, record, now) >= self.settings.emails_per_hour:
                    return _Throttled("hourly_limit")
                if self._duplicate(conn, record):
                    return _Throttled("resend_cooldown")
            row = conn.execute(
                select(account_t.c.id, account_t.c.email, account_t.c.name).where(
                    account_t.c.email_normalized == record.subject,
                    account_t.c.disabled.is_(False),
                )
            ).first()
        if row is None:
            return _Unknown()
        return _Known(row.id, row.email, row.name)

    def _dispatched_recently(self, conn: Any, record: AttemptRecord, now: datetime) -> int:
        """How many attempts for this address were dispatched in the last hour."""
        since = now - THROTTLE_WINDOW
        conditions = [
            attempt_t.c.flow == NAME,
            attempt_t.c.subject == record.subject,
            attempt_t.c.id != record.id,
            event_t.c.event == "dispatch",
            event_t.c.accepted.is_(True),
            event_t.c.to_state.in_(COUNTED_STATES),
            event_t.c.at > since,
        ]
        if self._max_request_age is not None:
            # Bounds the (subject, created_at) index range to attempts that could qualify.
            conditions.append(attempt_t.c.created_at > since - self._max_request_age)
        return int(
            conn.execute(
                select(func.count())
                .select_from(attempt_t.join(event_t, event_t.c.attempt_id == attempt_t.c.id))
                .where(*conditions)
            ).scalar_one()
        )

    def _duplicate(self, conn: Any, record: AttemptRecord) -> bool:
        """Whether another request for this address came in the cooldown before this one.

        Two requests stamped with the same instant are ordered by id, so exactly
        one of them is the first.
        """
        cooldown = timedelta(seconds=self.settings.resend_cooldown_seconds)
        if not cooldown:
            return False
        created = record.created_at
        found = conn.execute(
            select(attempt_t.c.id)
            .where(
                attempt_t.c.flow == NAME,
                attempt_t.c.subject == record.subject,
                attempt_t.c.id != record.id,
                attempt_t.c.created_at >= created - cooldown,
                or_(
                    attempt_t.c.created_at < created,
                    and_(attempt_t.c.created_at == created, attempt_t.c.id < record.id),
                ),
            )
            .limit(1)
        ).first()
        return found is not None

    async def _email_link(
        self, record: AttemptRecord, account: _Known, delivery: dict[str, Any]
    ) -> None:
        token = new_token()
        # The "this wasn't me" link carries a token of its own, which can only cancel:
        # the reset token in it would open the password form to whoever clicks it.
        cancel_token = new_token()
        now = self.clock.now()
        base = self.settings.public_base_url
        tries = int(delivery.get("tries") or 0) + 1
        try:
            message = recovery_email(
                locale=_locale(record.locale),
                to=account.email,
                mail_from=self.settings.mail_from,
                link=f"{base}/recovery/reset?token={token}",
                cancel_link=f"{base}/recovery/cancel?token={cancel_token}",
                expires_at=now + timedelta(minutes=self.settings.link_ttl_minutes),
                reference=support_reference(record.id),
                name=account.name,
                sent_at=now,
            )
        except ValueError:
            # The stored address cannot be written into a message: no later try can,
            # so end the attempt now rather than fail it at every lease until it expires.
            failed = {**delivery, "tries": tries, "last_error": UNUSABLE_ADDRESS}
            await self._fire(
                record,
                "bounce",
                detail={"reason": "address_unusable", "tries": tries},
                data={"delivery": {**failed, "status": "failed", "sent_at": None}},
            )
            return
        digest = token_hash(token)
        # The digest is stored before the mail leaves, so a link opened the
        # instant it arrives is found (the service waits for `dispatch` to commit).
        await self.db.run(
            self._store_token, record.id, account.id, digest, token_hash(cancel_token)
        )
        error = await self._send(message)
        now = self.clock.now()
        if error is None:
            await self._fire(
                record,
                "dispatch",
                params={"account_exists": True, "throttled": False, "mail_accepted": True},
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
                in_tx=self._link_hook(record, account.id, digest),
            )
            return
        failed = {**delivery, "tries": tries, "last_error": str(error), "sent_at": None}
        if isinstance(error, PermanentMailError) or tries >= self.settings.mail_max_tries:
            reason = error.reason if isinstance(error, PermanentMailError) else "retries_exhausted"
            await self._fire(
                record,
                "bounce",
                detail={"reason": reason, "tries": tries},
                data={"delivery": {**failed, "status": "failed"}},
                in_tx=lambda tx: tx.conn.execute(
                    delete(token_t).where(token_t.c.attempt_id == record.id)
                ),
            )
            return
        retry_at = now + self._backoff(tries)
        try:
            await self.db.run(
                self.engine.note_sync,
                record.id,
                data={"delivery": {**failed, "status": "retrying"}},
                lease_until=retry_at,
                expected_version=record.version,
            )
        except (ConflictError, EventRefused) as exc:
            log.info("attempt %s changed while its mail was retried: %s", record.id, describe(exc))
        else:
            log.info("attempt %s: mail try %d failed, retry at %s", record.id, tries, retry_at)

    def _link_hook(
        self, record: AttemptRecord, account_id: uuid.UUID, digest: str
    ) -> Callable[[Transaction], None]:
        """Inside the `dispatch` transaction: store the token's hash, supersede older links."""

        def hook(tx: Transaction) -> None:
            if not self.db.is_sqlite:
                # Two workers emailing two attempts of one address at once must
                # still leave exactly one live: the second waits here, then
                # (READ COMMITTED) sees the first as emailed and supersedes it.
                # An advisory lock, not the account row: the password reset
                # locks its attempt and then the account, and we hold ours.
                tx.conn.execute(
                    select(
                        func.pg_advisory_xact_lock(
                            ADVISORY_LOCK_CLASS, func.hashtext(literal(record.subject))
                        )
                    )
                )
            stored = tx.conn.execute(
                select(token_t.c.token_hash).where(token_t.c.attempt_id == record.id)
            ).scalar()
            if stored != digest:
                # Another worker re-claimed the attempt and mailed a newer link.
                raise ConflictError(record.id, "dispatch")
            others = list(
                tx.conn.execute(
                    select(attempt_t.c.id).where(
                        attempt_t.c.flow == NAME,
                        attempt_t.c.subject == record.subject,
                        attempt_t.c.state.in_(LIVE_STATES),
                        attempt_t.c.id != record.id,
                    )
                ).scalars()
            )
            for other in others:
                tx.fire(other, "supersede", detail={"superseded_by": str(record.id)})
            if others:
                tx.conn.execute(
                    update(token_t)
                    .where(token_t.c.attempt_id.in_(others), token_t.c.revoked_at.is_(None))
                    .values(revoked_at=tx.now)
                )

        return hook

    def _store_token(
        self, attempt_id: uuid.UUID, account_id: uuid.UUID, digest: str, cancel_digest: str
    ) -> None:
        """The attempt's link tokens, replacing those of an earlier try that never went out."""
        with self.db.transaction() as conn:
            conn.execute(delete(token_t).where(token_t.c.attempt_id == attempt_id))
            conn.execute(
                insert(token_t).values(
                    token_hash=digest,
                    cancel_hash=cancel_digest,
                    attempt_id=attempt_id,
                    account_id=account_id,
                    created_at=self.clock.now(),
                )
            )

    async def _fire(
        self,
        record: AttemptRecord,
        event: str,
        *,
        params: Mapping[str, Any] | None = None,
        detail: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        in_tx: Callable[[Transaction], None] | None = None,
    ) -> None:
        """Fire on a claimed attempt; a refusal or a lost race is logged, never raised.

        The claim's version is expected: if support cancelled the attempt, or
        another worker re-claimed it after our lease ran out, nothing is
        written. A conflict caused by another attempt (one being superseded)
        leaves ours untouched, and is retried.
        """
        conflicts = 0
        # Retry no longer than our claim lasts (less a margin), so no other
        # worker can claim the attempt meanwhile.
        held = (record.lease_until or self.clock.now()) - self.clock.now()
        outage_until = time.monotonic() + held.total_seconds() - OUTAGE_MARGIN_SECONDS
        pause = OUTAGE_FIRST_PAUSE
        while conflicts < FIRE_RETRIES:
            try:
                await self.engine.fire(
                    record.id,
                    event,
                    params=params,
                    detail=detail,
                    data=data,
                    in_tx=in_tx,
                    expected_version=record.version,
                )
                log.info("attempt %s: %s", record.id, event)
                return
            except DBAPIError as exc:
                # The mail may already be out: recording it must outlast a short
                # database outage (a restart), or the attempt is mailed again once
                # its lease runs out, with a new link that kills the first.
                if not exc.connection_invalidated and not isinstance(exc, OperationalError):
                    raise
                if time.monotonic() + pause > outage_until:
                    raise
                log.warning("attempt %s: database unreachable, %s retried", record.id, event)
                await asyncio.sleep(pause)
                pause = min(pause * 2, OUTAGE_MAX_PAUSE)
            except EventRefused as exc:
                log.info("attempt %s: %s refused in state %s", record.id, event, exc.state)
                return
            except ConflictError:
                conflicts += 1
                current = await self.db.run(self.engine.read_sync, record.id, write=False)
                if current.state != "requested" or current.version != record.version:
                    log.info("attempt %s changed meanwhile; %s skipped", record.id, event)
                    return
        log.warning("attempt %s: %s kept conflicting; left for the next pass", record.id, event)

    # -- the outbox ------------------------------------------------------------

    async def _outbox_batch(self) -> int:
        items = await self.db.run(
            self.engine.outbox_claim_sync, OUTBOX_KINDS, lease=self.lease, limit=self.batch_size
        )
        if not items:
            return 0
        slots = asyncio.Semaphore(self.max_concurrent_sends)

        async def run(item: dict[str, Any]) -> None:
            async with slots:
                try:
                    await self._deliver(item)
                except Exception as exc:
                    _log_failure(f"outbox item {item['id']}", exc)

        await asyncio.gather(*(run(item) for item in items))
        return len(items)

    async def _deliver(self, item: dict[str, Any]) -> None:
        tries = int(item["tries"]) + 1  # the claim counted this try
        payload = item["payload"] or {}
        try:
            account_id = uuid.UUID(str(payload["account_id"]))
            attempt_id = uuid.UUID(str(payload["attempt_id"]))
        except (KeyError, ValueError):
            await self._finish(item["id"], error="malformed payload")
            return
        account = await self.db.run(self._account, account_id, write=False)
        if account is None:
            await self._finish(item["id"], error="account not found")
            return
        now = self.clock.now()
        try:
            message = password_changed_email(
                locale=_locale(payload.get("locale")),
                to=account.email,
                mail_from=self.settings.mail_from,
                changed_at=as_utc(item["created_at"]),
                reference=support_reference(attempt_id),
                name=account.name,
                recovery_page=f"{self.settings.public_base_url}/recovery",
                sent_at=now,
            )
        except ValueError:
            await self._finish(item["id"], error=UNUSABLE_ADDRESS)
            return
        error = await self._send(message)
        if error is None:
            await self._finish(item["id"])
        elif isinstance(error, PermanentMailError) or tries >= self.settings.mail_max_tries:
            log.warning("outbox item %s given up after %d tries: %s", item["id"], tries, error)
            await self._finish(item["id"], error=str(error))
        else:
            retry_at = self.clock.now() + self._backoff(tries)
            await self._finish(item["id"], error=str(error), retry_at=retry_at)

    def _account(self, account_id: uuid.UUID) -> Any:
        with self.db.transaction(write=False) as conn:
            return conn.execute(
                select(account_t.c.email, account_t.c.name).where(account_t.c.id == account_id)
            ).first()

    async def _finish(
        self, item_id: int, *, error: str | None = None, retry_at: datetime | None = None
    ) -> None:
        await self.db.run(self.engine.outbox_finish_sync, item_id, error=error, retry_at=retry_at)

    # -- sending -----------------------------------------------------------------

    def _backoff(self, tries: int) -> timedelta:
        return timedelta(seconds=self.settings.mail_retry_base_seconds * 2 ** (tries - 1))

    async def _send(self, message: EmailMessage) -> MailError | None:
        """Hand the message to the transport; the error if it was not accepted."""
        started = time.perf_counter()
        error: MailError | None = None
        try:
            await self.transport.send(message)
        except MailError as exc:
            error = exc
        except Exception as exc:
            # An unexpected transport failure may pass; it is retried like a 4xx.
            error = TemporaryMailError(f"transport failed: {describe(exc)}")
        outcome = (
            "sent"
            if error is None
            else "permanent"
            if isinstance(error, PermanentMailError)
            else "temporary"
        )
        if self.on_send is not None:
            try:
                self.on_send(time.perf_counter() - started, outcome)
            except Exception as exc:
                _log_failure("on_send callback", exc)
        return error
