"""Signing in and out, sessions, and the sign-in slow-down.

One generic failure for an unknown address and a wrong password alike, and
an unknown address still costs one Argon2 verification (against a dummy
hash). Failures slow further tries down with growing delays, never a
lock-out: per address among browsers without a known device cookie, and per
device cookie for a browser that signed in here before (OWASP's device
cookies), so a stranger typing wrong passwords never slows its owner down.

A sign-in reads the account's credential version with the hash it verifies,
and opens its session (or writes its rehash) only if the version is still
the same, under a lock on the account row: once a password change has
answered, no session opened with the old password exists.

After a sign-in has committed, each `SignedInHook` is told (the flows that
end at a sign-in move their attempt there).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from api.accounts.addresses import InvalidEmail, mask_email, normalise_email
from api.accounts.models import Account, LoginDevice, LoginFailure, LoginSession
from api.accounts.passwords import PasswordHasher
from api.accounts.policy import HISTORY_SIZE
from api.accounts.tokens import new_token, plausible_token, token_hash, token_matches
from api.errors import InvalidInput, LoginFailed, LoginSlowedDown, SessionInvalid
from api.settings import AccountSettings
from engine import Database
from engine.clock import Clock, as_utc
from engine.worker import log_failure

account_t = Account.__table__
session_t = LoginSession.__table__
failure_t = LoginFailure.__table__
device_t = LoginDevice.__table__

MAX_LOGIN_PASSWORD_CHARS = 4096
LOGIN_DELAY_CAP_SECONDS = 300

# Told after a sign-in committed: the account, and the credential version it used.
SignedInHook = Callable[[Account, int], Awaitable[None]]


@dataclass(frozen=True)
class SignedIn:
    """A new session: the bearer token is shown once, then only its hash is kept.

    `device_token` is set when the sign-in asked to remember its browser and came
    without a known device cookie: the page keeps it as that cookie until
    `device_expires_at`.
    """

    session_token: str
    expires_at: datetime
    account_id: uuid.UUID
    device_token: str | None = None
    device_expires_at: datetime | None = None


@dataclass(frozen=True)
class SessionInfo:
    """Who a live session belongs to."""

    account_id: uuid.UUID
    email_masked: str
    locale: str
    expires_at: datetime


def _same_device(device: str | None) -> Any:
    """Failures of one kind: from browsers without a known device cookie, or from one."""
    return failure_t.c.device.is_(None) if device is None else failure_t.c.device == device


class SignIn:
    """Sign-in, sign-out and sessions for the accounts of one database."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        hasher: PasswordHasher,
        settings: AccountSettings,
        hooks: Sequence[SignedInHook] = (),
    ) -> None:
        self.db = db
        self.clock = clock
        self.hasher = hasher
        self.settings = settings
        self.hooks = list(hooks)

    async def login(
        self,
        email: object,
        password: object,
        *,
        device: object = None,
        remember_device: bool = False,
    ) -> SignedIn:
        """Sign in: one generic failure for unknown address and wrong password alike.

        `device` is the browser's device cookie, if it sent one. With
        `remember_device`, a sign-in that succeeds without a known device cookie
        is given one (`SignedIn.device_token`).
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
        await self.db.run(
            self._open_session,
            account,
            key,
            token_hash(token),
            expires_at,
            rehashed,
            known,
            (token_hash(remembered[0]), remembered[1]) if remembered else None,
        )
        for hook in self.hooks:
            try:
                await hook(account, account.credential_version)
            except Exception as exc:
                # The person is signed in either way; what the flows record is theirs.
                log_failure("a sign-in hook", exc)
        if remembered is None:
            return SignedIn(token, expires_at, account.id)
        return SignedIn(token, expires_at, account.id, *remembered)

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
        """Seconds to wait before another try: 0, or growing after the free failures."""
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
    ) -> None:
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
        """Who a live session belongs to, or `SessionInvalid`."""
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
                select(
                    account_t.c.id,
                    account_t.c.email_normalized,
                    account_t.c.locale,
                    session_t.c.expires_at,
                )
                .join(account_t, account_t.c.id == session_t.c.account_id)
                .where(
                    session_t.c.token_hash == digest,
                    session_t.c.revoked_at.is_(None),
                    session_t.c.expires_at > now,
                )
            ).first()
        if row is None:
            return None
        return SessionInfo(row.id, mask_email(row.email_normalized), row.locale, as_utc(row[3]))

    # -- the slow-down, for the console's own sign-in and for support ---------------------

    def delay_sync(self, key: str, device: str | None = None) -> int:
        """Seconds before another sign-in may be tried at `key` (a normalised address, or
        another sign-in's own key), among browsers of `device`'s kind."""
        return self._login_delay(key, device)

    def record_failure_sync(self, key: str) -> None:
        """One failed sign-in at `key`, from a browser without a known device cookie."""
        self._record_failure(key, None)

    def clear_failures_sync(self, key: str) -> int:
        """Forget every failed sign-in at `key` (every device): the slow-down ends now."""
        with self.db.transaction() as conn:
            return int(conn.execute(delete(failure_t).where(failure_t.c.key == key)).rowcount)
