"""The recovery journey and sign-in, as the HTTP layer and the command line call them.

Each method gathers the facts a `password_recovery` event needs (is the token
known, live, unused? does the new password pass the policy?), then fires the
event through the engine; work that must commit with the transition (consume
the token, store the hash, revoke sessions, queue the notification) runs in
the engine's `in_tx` hook. Database work is sync code run on the database's
threads; Argon2 runs on the hasher's bounded threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from api.accounts.addresses import InvalidEmail, mask_email, normalise_email
from api.accounts.models import Account, LoginDevice, LoginFailure, LoginSession, RecoveryToken
from api.accounts.passwords import PasswordHasher
from api.accounts.policy import PasswordPolicy, PersonalData, check_history
from api.accounts.tokens import new_token, plausible_token, token_hash, token_matches
from api.errors import (
    DEAD_LINKS,
    AccountExists,
    InvalidInput,
    LinkDead,
    LinkUsed,
    LoginFailed,
    LoginSlowedDown,
    PolicyFailed,
    SessionInvalid,
    UnknownToken,
)
from api.settings import Settings
from api.support.reference import support_reference
from engine import ConflictError, Engine, EventRefused, Transaction
from engine.clock import as_utc
from engine.core import AttemptRecord, attempt_t
from flows.password_recovery import LIVE_STATES, NAME

account_t = Account.__table__
token_t = RecoveryToken.__table__
session_t = LoginSession.__table__
failure_t = LoginFailure.__table__
device_t = LoginDevice.__table__

PERSON = "person"
HISTORY_SIZE = 5
MAX_LOGIN_PASSWORD_CHARS = 4096
MAX_USER_AGENT_CHARS = 256
# A link opened this soon after sending, without cookies, is likely a mail scanner.
AUTOMATED_OPEN_WINDOW = timedelta(seconds=10)
LOGIN_DELAY_CAP_SECONDS = 300
# How long a link opened mid-send waits for the send to be recorded: 50 x 0.1 s.
SETTLE_POLLS = 50
SETTLE_POLL_SECONDS = 0.1
DEAD_REASONS = {
    "expired": "expired",
    "superseded": "superseded",
    "cancelled": "cancelled",
    "password_set": "used",
    "logged_in": "used",
}


@dataclass(frozen=True)
class OpenedLink:
    """A link that was opened and is live."""

    attempt: AttemptRecord
    expires_at: datetime | None
    reference: str


@dataclass(frozen=True)
class SignedIn:
    """A new session: the bearer token is shown once, then only its hash is kept.

    `device_token` is set when the sign-in asked to remember its browser and came
    without a known device cookie: the page keeps it as that cookie until
    `device_expires_at`.
    """

    session_token: str
    expires_at: datetime
    device_token: str | None = None
    device_expires_at: datetime | None = None


@dataclass(frozen=True)
class SessionInfo:
    email_masked: str
    expires_at: datetime


class RecoveryService:
    """The person-facing operations of the recovery flow, plus sign-in and sessions."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        hasher: PasswordHasher,
        policy: PasswordPolicy | None = None,
    ) -> None:
        self.engine = engine
        self.db = engine.db
        self.clock = engine.clock
        self.settings = settings
        self.hasher = hasher
        self.policy = policy or PasswordPolicy(settings.password_policy)

    # -- 1. "Forgot password?" -----------------------------------------

    async def request(
        self,
        email: object,
        *,
        locale: str,
        client_ip: str | None = None,
        user_agent: str | None = None,
    ) -> AttemptRecord:
        """Record a `requested` attempt; the same work whether or not the address has an account."""
        try:
            subject = normalise_email(email)
        except InvalidEmail as exc:
            raise InvalidInput("email", str(exc)) from None
        assert isinstance(email, str)
        return await self.engine.start(
            NAME,
            subject=subject,
            locale=locale,
            actor=PERSON,
            data={
                "email_submitted": email.strip()[:320],
                "client_ip": client_ip,
                "user_agent": (user_agent or "")[:MAX_USER_AGENT_CHARS],
                "delivery": {"status": "queued", "tries": 0, "last_error": None, "sent_at": None},
            },
            detail={"client_ip": client_ip},
        )

    # -- 2. opening the link -------------------------------------------

    async def open_link(
        self, token: object, *, method: str = "GET", has_cookies: bool = True
    ) -> OpenedLink:
        """Validate a link's token and record the open; never consumes the token."""
        row = await self._token_row(token)
        attempt = await self._settled(row["attempt_id"])
        sent_at = _parse_time(attempt.data.get("delivery", {}).get("sent_at"))
        automated = method.upper() == "HEAD" or (
            not has_cookies
            and sent_at is not None
            and self.clock.now() - sent_at <= AUTOMATED_OPEN_WINDOW
        )
        detail = {
            "method": method.upper(),
            "repeat": attempt.state == "link_opened",
            "suspected_automated": automated,
        }
        fired = await self._fire_for_token(
            row, attempt, "open_link", {"token_valid": _token_live(row)}, detail
        )
        return OpenedLink(
            fired.attempt, fired.attempt.deadline_at, support_reference(fired.attempt.id)
        )

    # -- 3. the new password -------------------------------------------

    async def set_password(
        self, token: object, password: str, confirmation: str, *, locale: str
    ) -> AttemptRecord:
        """Check the new password, then store it and consume the token, exactly once."""
        row = await self._token_row(token)
        attempt = await self._settled(row["attempt_id"])
        if attempt.state == "emailed":
            # An API client may submit without verifying first: that is an open too.
            attempt = (await self.open_link(token, method="POST")).attempt
        if attempt.state != "link_opened" or not _token_live(row):
            # A dead link is refused (and recorded) before any policy or history
            # work: neither its answer nor its cost may depend on the password typed.
            await self._fire_for_token(
                row,
                attempt,
                "set_password",
                {"token_valid": _token_live(row), "password_accepted": False},
                {},
            )
            raise _dead_link(attempt.state, row)
        account = await self.db.run(self._account_by_id, row["account_id"], write=False)
        # zxcvbn costs up to ~25 ms: keep it off the event loop (the policy is thread-safe).
        violations = await asyncio.to_thread(
            self.policy.check,
            password,
            confirmation,
            PersonalData(account.name, account.email, account.birth_date),
        )
        # The history last, and only for a password that passed every other rule, the
        # confirmation included: a mistyped confirmation must not tell whether a guess
        # is one of the last passwords, nor cost up to five Argon2 verifications.
        if not violations and await check_history(self.hasher, password, account.password_history):
            violations.append(self.policy.reused_violation())
        if violations:
            await self._fire_for_token(
                row,
                attempt,
                "set_password",
                {"token_valid": _token_live(row), "password_accepted": False},
                {"violations": [v.code for v in violations]},
            )
            raise PolicyFailed(violations, locale)
        new_hash = await self.hasher.hash(password)

        def apply(tx: Transaction) -> None:
            self._store_new_password(tx, row, account, new_hash)

        fired = await self._fire_for_token(
            row,
            attempt,
            "set_password",
            {"token_valid": _token_live(row), "password_accepted": True},
            {},
            in_tx=apply,
        )
        return fired.attempt

    def _store_new_password(
        self, tx: Transaction, row: dict[str, Any], account: Account, new_hash: str
    ) -> None:
        consumed = tx.conn.execute(
            update(token_t)
            .where(
                token_t.c.token_hash == row["token_hash"],
                token_t.c.used_at.is_(None),
                token_t.c.revoked_at.is_(None),
            )
            .values(used_at=tx.now)
        )
        if consumed.rowcount != 1:
            raise ConflictError(tx.attempt.id, "set_password")
        # The row lock orders this change with every sign-in that opens a session or
        # writes a rehash (they lock the row too, see `_open_session`); the history is
        # read under it, so two changes cannot drop each other's hash from it.
        current = tx.conn.execute(
            select(account_t.c.password_history, account_t.c.credential_version)
            .where(account_t.c.id == account.id)
            .with_for_update()
        ).one()
        tx.conn.execute(
            update(account_t)
            .where(account_t.c.id == account.id)
            .values(
                password_hash=new_hash,
                password_history=[new_hash, *current.password_history][:HISTORY_SIZE],
                password_changed_at=tx.now,
                credential_version=current.credential_version + 1,
            )
        )
        revoke_account_secrets(tx, account.id, keep_token=row["token_hash"])
        # The person proved they hold the address: the sign-in delays others' failures
        # built up are lifted, and no browser stays vouched for by the old password.
        tx.conn.execute(delete(failure_t).where(failure_t.c.key == account.email_normalized))
        tx.conn.execute(delete(device_t).where(device_t.c.account_id == account.id))
        others = tx.conn.execute(
            select(attempt_t.c.id).where(
                attempt_t.c.flow == NAME,
                attempt_t.c.subject == tx.attempt.subject,
                attempt_t.c.state.in_(LIVE_STATES),
                attempt_t.c.id != tx.attempt.id,
            )
        ).scalars()
        for other in list(others):
            tx.fire(other, "supersede", detail={"reason": "password_changed"})
        tx.enqueue(
            "password_changed",
            {
                "account_id": str(account.id),
                "attempt_id": str(tx.attempt.id),
                "locale": tx.attempt.locale,
            },
        )

    # -- "this wasn't me" ----------------------------------------------

    async def cancel_by_token(self, token: object) -> AttemptRecord:
        """The person says they did not ask: cancel the attempt and kill its link.

        Takes the email's cancel-only token (the "this wasn't me" link), or the link's
        own token (`POST /api/recovery/cancel` has always taken that one).
        """
        row = await self._token_row(token, cancel=True)
        attempt = await self._settled(row["attempt_id"])

        def revoke(tx: Transaction) -> None:
            tx.conn.execute(
                update(token_t)
                .where(token_t.c.token_hash == row["token_hash"], token_t.c.revoked_at.is_(None))
                .values(revoked_at=tx.now)
            )

        fired = await self._fire_for_token(
            row, attempt, "cancel", {}, {"via": "not_me_link"}, in_tx=revoke
        )
        return fired.attempt

    # -- tokens ----------------------------------------------------------

    async def _token_row(self, token: object, *, cancel: bool = False) -> dict[str, Any]:
        """The token's row by the link token; with `cancel`, by the cancel-only token too."""
        if not plausible_token(token):
            raise UnknownToken()
        assert isinstance(token, str)
        digest = token_hash(token)
        row = await self.db.run(self._find_token, digest, cancel, write=False)
        # The index found the row by digest; the decision is a constant-time compare.
        if row is None:
            raise UnknownToken()
        stored = row["cancel_hash"] if row["cancel_hash"] == digest else row["token_hash"]
        if not token_matches(token, stored):
            raise UnknownToken()
        return row

    async def _settled(self, attempt_id: uuid.UUID) -> AttemptRecord:
        """The token's attempt, once the send that carried the link has been recorded.

        The dispatcher stores the token just before the mail leaves and moves
        the attempt to `emailed` just after; a link opened in between waits
        for that (bounded: a send that never completes stays `requested`).
        """
        attempt = await self.engine.get(attempt_id)
        for _ in range(SETTLE_POLLS):
            if attempt.state != "requested":
                break
            await asyncio.sleep(SETTLE_POLL_SECONDS)
            attempt = await self.engine.get(attempt_id)
        return attempt

    def _find_token(self, digest: str, cancel: bool = False) -> dict[str, Any] | None:
        with self.db.transaction(write=False) as conn:
            row = conn.execute(select(token_t).where(token_t.c.token_hash == digest)).first()
            if row is None and cancel:
                row = conn.execute(select(token_t).where(token_t.c.cancel_hash == digest)).first()
            return dict(row._mapping) if row else None

    async def _fire_for_token(
        self,
        row: dict[str, Any],
        attempt: AttemptRecord,
        event: str,
        params: dict[str, Any],
        detail: dict[str, Any],
        in_tx: Any = None,
    ) -> Any:
        """Fire on the token's attempt; explain a refusal as a dead or used link."""
        try:
            return await self.engine.fire(
                attempt.id,
                event,
                actor=PERSON,
                params=params,
                detail=detail,
                in_tx=in_tx,
                expected_version=attempt.version,
            )
        except EventRefused as refused:
            if event == "set_password" and refused.state == "link_opened" and _token_live(row):
                # Refused by the policy guard: the caller raises PolicyFailed.
                return None
            raise _dead_link(refused.state, row) from None
        except ConflictError:
            # Someone else moved the attempt first (a concurrent submission).
            current = await self.engine.get(attempt.id)
            if event == "open_link" and current.state == "link_opened":
                return await self._fire_for_token(row, current, event, params, detail, in_tx)
            if event == "set_password":
                raise LinkUsed(support_reference(attempt.id)) from None
            raise _dead_link(current.state, row) from None

    def _account_by_id(self, account_id: uuid.UUID) -> Account:
        with self.db.transaction(write=False) as conn:
            row = conn.execute(select(account_t).where(account_t.c.id == account_id)).one()
            return Account(**row._mapping)

    # -- sign-in and sessions -------------------------------------------

    async def login(
        self,
        email: object,
        password: object,
        *,
        device: object = None,
        remember_device: bool = False,
    ) -> SignedIn:
        """Sign in: one generic failure for unknown address and wrong password alike.

        `device` is the browser's device cookie, if it sent one. A browser that signed
        in to this address before has its failures counted apart from everyone
        else's, so a stranger typing wrong passwords never slows it down (OWASP's
        device cookies). With `remember_device`, a sign-in that succeeds without a
        known device cookie is given one (`SignedIn.device_token`).
        """
        if not isinstance(email, str) or not isinstance(password, str):
            raise InvalidInput(
                "email" if not isinstance(email, str) else "password", "must be a string"
            )
        if len(password) > MAX_LOGIN_PASSWORD_CHARS:
            raise InvalidInput("password", "password is too long")
        try:
            key = normalise_email(email)
        except InvalidEmail:
            key = email.strip().casefold()[:320]
        known = await self.db.run(self._known_device, key, device, write=False)
        retry_after = await self.db.run(self._login_delay, key, known, write=False)
        if retry_after > 0:
            raise LoginSlowedDown(retry_after)
        account = await self.db.run(self._account_by_email, key, write=False)
        if account is None or account.disabled:
            await self.hasher.verify_dummy(password)
            await self.db.run(self._record_failure, key, known)
            raise LoginFailed()
        if not await self.hasher.verify(account.password_hash, password):
            await self.db.run(self._record_failure, key, known)
            raise LoginFailed()
        rehashed = (
            await self.hasher.hash(password)
            if self.hasher.needs_rehash(account.password_hash)
            else None
        )
        token = new_token()
        now = self.clock.now()
        expires_at = now + timedelta(minutes=self.settings.session_ttl_minutes)
        remembered = None
        if remember_device and known is None:
            remembered = (new_token(), now + timedelta(days=self.settings.login_device_days))
        attempt_id = await self.db.run(
            self._open_session,
            account,
            key,
            token_hash(token),
            expires_at,
            rehashed,
            known,
            (token_hash(remembered[0]), remembered[1]) if remembered else None,
        )
        if attempt_id is not None:
            # Another sign-in may have recorded it first: that is fine.
            with contextlib.suppress(EventRefused, ConflictError):
                await self.engine.fire(
                    attempt_id, "log_in", actor=PERSON, params={"signed_in": True}
                )
        if remembered is None:
            return SignedIn(token, expires_at)
        return SignedIn(token, expires_at, *remembered)

    def _known_device(self, key: str, device: object) -> str | None:
        """The digest of `device` if it is a live device cookie of the account at `key`."""
        if not plausible_token(device):
            return None
        assert isinstance(device, str)
        digest = token_hash(device)
        with self.db.transaction(write=False) as conn:
            found = conn.execute(
                select(device_t.c.token_hash)
                .join(account_t, account_t.c.id == device_t.c.account_id)
                .where(
                    device_t.c.token_hash == digest,
                    device_t.c.expires_at > self.clock.now(),
                    account_t.c.email_normalized == key,
                )
            ).scalar()
        return digest if found is not None and token_matches(device, found) else None

    def _login_delay(self, key: str, device: str | None) -> int:
        """Seconds to wait before another try: 0, or growing after the free failures.

        Failures count per address among browsers without a known device cookie, and
        per device cookie for a browser that has one.
        """
        now = self.clock.now()
        since = now - timedelta(minutes=self.settings.login_failure_window_minutes)
        with self.db.transaction(write=False) as conn:
            count, last = conn.execute(
                select(func.count(), func.max(failure_t.c.at)).where(
                    failure_t.c.key == key, _same_device(device), failure_t.c.at > since
                )
            ).one()
        if count < self.settings.login_free_failures or last is None:
            return 0
        delay = min(2 ** (count - self.settings.login_free_failures), LOGIN_DELAY_CAP_SECONDS)
        remaining = (as_utc(last) + timedelta(seconds=delay) - now).total_seconds()
        return max(0, math.ceil(remaining))

    def _record_failure(self, key: str, device: str | None) -> None:
        with self.db.transaction() as conn:
            conn.execute(insert(failure_t).values(key=key, device=device, at=self.clock.now()))

    def _account_by_email(self, key: str) -> Account | None:
        with self.db.transaction(write=False) as conn:
            row = conn.execute(select(account_t).where(account_t.c.email_normalized == key)).first()
            return Account(**row._mapping) if row else None

    def _open_session(
        self,
        account: Account,
        key: str,
        digest: str,
        expires_at: datetime,
        rehashed: str | None,
        device: str | None = None,
        new_device: tuple[str, datetime] | None = None,
    ) -> uuid.UUID | None:
        """Open the session (and store the rehash) if the password verified is still the
        account's; `LoginFailed` if a password change committed since it was read.

        The account row is locked first: a password change committing meanwhile either
        came before (its new `credential_version` is seen here, nothing is written) or
        waits for this transaction and then revokes the session inserted here.
        """
        now = self.clock.now()
        with self.db.transaction() as conn:
            version = conn.execute(
                select(account_t.c.credential_version)
                .where(account_t.c.id == account.id)
                .with_for_update()
            ).scalar()
            if version != account.credential_version:
                raise LoginFailed()
            conn.execute(
                insert(session_t).values(
                    token_hash=digest, account_id=account.id, created_at=now, expires_at=expires_at
                )
            )
            # Success clears the failures of its own kind only: a sign-in from a known
            # browser gives a stranger no fresh free tries.
            conn.execute(delete(failure_t).where(failure_t.c.key == key, _same_device(device)))
            if new_device is not None:
                conn.execute(
                    insert(device_t).values(
                        token_hash=new_device[0],
                        account_id=account.id,
                        created_at=now,
                        expires_at=new_device[1],
                    )
                )
            if rehashed is not None:
                # The same password under new parameters: the version stays, so
                # other sign-ins with it that are under way still succeed.
                conn.execute(
                    update(account_t)
                    .where(
                        account_t.c.id == account.id,
                        account_t.c.credential_version == account.credential_version,
                    )
                    .values(
                        password_hash=rehashed,
                        password_history=[rehashed, *account.password_history[1:]][:HISTORY_SIZE],
                    )
                )
            return conn.execute(
                select(attempt_t.c.id)
                .where(
                    attempt_t.c.flow == NAME,
                    attempt_t.c.subject == account.email_normalized,
                    attempt_t.c.state == "password_set",
                )
                .order_by(attempt_t.c.updated_at.desc())
                .limit(1)
            ).scalar()

    async def logout(self, session_token: object) -> None:
        """Revoke the session; `SessionInvalid` if it is not a live session."""
        if not plausible_token(session_token):
            raise SessionInvalid()
        assert isinstance(session_token, str)
        if not await self.db.run(self._revoke_session, token_hash(session_token)):
            raise SessionInvalid()

    def _revoke_session(self, digest: str) -> bool:
        now = self.clock.now()
        with self.db.transaction() as conn:
            result = conn.execute(
                update(session_t)
                .where(
                    session_t.c.token_hash == digest,
                    session_t.c.revoked_at.is_(None),
                    session_t.c.expires_at > now,
                )
                .values(revoked_at=now)
            )
            return result.rowcount == 1

    async def session(self, session_token: object) -> SessionInfo:
        """Who a live session belongs to (masked), or `SessionInvalid`."""
        if not plausible_token(session_token):
            raise SessionInvalid()
        assert isinstance(session_token, str)
        found = await self.db.run(self._session_info, token_hash(session_token), write=False)
        if found is None:
            raise SessionInvalid()
        return found

    def _session_info(self, digest: str) -> SessionInfo | None:
        now = self.clock.now()
        with self.db.transaction(write=False) as conn:
            row = conn.execute(
                select(account_t.c.email_normalized, session_t.c.expires_at)
                .join(account_t, account_t.c.id == session_t.c.account_id)
                .where(
                    session_t.c.token_hash == digest,
                    session_t.c.revoked_at.is_(None),
                    session_t.c.expires_at > now,
                )
            ).first()
        return SessionInfo(mask_email(row[0]), as_utc(row[1])) if row else None

    # -- accounts --------------------------------------------------------

    def create_account_sync(
        self,
        *,
        email: str,
        name: str,
        password: str,
        birth_date: date | None = None,
        locale: str = "en",
    ) -> Account:
        """Create an account (command line); the password must pass the policy."""
        try:
            normalised = normalise_email(email)
        except InvalidEmail as exc:
            raise InvalidInput("email", str(exc)) from None
        if not name.strip():
            raise InvalidInput("name", "name must not be empty")
        if locale not in ("en", "fr"):
            raise InvalidInput("locale", "locale must be en or fr")
        violations = self.policy.check(password, password, PersonalData(name, email, birth_date))
        if violations:
            raise PolicyFailed(violations, locale)
        digest = self.hasher.hash_sync(password)
        now = self.clock.now()
        account = Account(
            email=email.strip(),
            email_normalized=normalised,
            name=name.strip(),
            birth_date=birth_date,
            locale=locale,
            password_hash=digest,
            password_history=[digest],
            created_at=now,
            password_changed_at=now,
        )
        with self.db.transaction() as conn:
            exists = conn.execute(
                select(account_t.c.id).where(account_t.c.email_normalized == normalised)
            ).first()
            if exists:
                raise AccountExists()
            conn.execute(insert(account_t).values(**account.model_dump()))
        return account


def revoke_account_secrets(tx: Transaction, account_id: uuid.UUID, keep_token: str) -> None:
    """A password change kills every session and every other link of the account."""
    tx.conn.execute(
        update(session_t)
        .where(session_t.c.account_id == account_id, session_t.c.revoked_at.is_(None))
        .values(revoked_at=tx.now)
    )
    tx.conn.execute(
        update(token_t)
        .where(
            token_t.c.account_id == account_id,
            token_t.c.token_hash != keep_token,
            token_t.c.used_at.is_(None),
            token_t.c.revoked_at.is_(None),
        )
        .values(revoked_at=tx.now)
    )


def _same_device(device: str | None) -> Any:
    """Failures of one kind: from browsers without a known device cookie, or from one."""
    return failure_t.c.device.is_(None) if device is None else failure_t.c.device == device


def _token_live(row: dict[str, Any]) -> bool:
    return row["used_at"] is None and row["revoked_at"] is None


def _dead_link(state: str, row: dict[str, Any]) -> LinkDead:
    """Why the token's link no longer works, from its attempt's state and the token row."""
    reason = "used" if row["used_at"] is not None else DEAD_REASONS.get(state, "revoked")
    return DEAD_LINKS[reason](support_reference(row["attempt_id"]))


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        return None


__all__: Sequence[str] = ("OpenedLink", "RecoveryService", "SessionInfo", "SignedIn")
