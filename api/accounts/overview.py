"""What support may know of an account, and the two things it may do to one.

Support (never the public) may learn whether an account exists for an
address; then its name, its masked address, when it last signed in, its
sign-in slow-down (failures in the window, and how long a browser without a
device cookie must wait), and its open sessions. It may clear the slow-down
and revoke one session.

A session is named by a short reference derived one way from its stored digest
(`session_ref`): neither the token nor the digest is ever shown, and the
reference opens nothing.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from api.accounts.addresses import InvalidEmail, mask_email, normalise_email
from api.accounts.models import Account, LoginFailure, LoginSession
from api.accounts.signin import SignIn
from api.errors import InvalidInput, RecoveryError
from api.settings import AccountSettings
from engine import Database
from engine.clock import Clock, as_utc

account_t = Account.__table__
session_t = LoginSession.__table__
failure_t = LoginFailure.__table__

SESSION_REF_CHARS = 12
MAX_SESSIONS_SHOWN = 50


class AccountNotFound(RecoveryError):
    """No account has this id (support's account pages only: the public never asks)."""

    code = "account_not_found"

    def __init__(self) -> None:
        super().__init__("no account has this id")


class SessionNotFound(RecoveryError):
    """The account has no open session with this reference."""

    code = "session_not_found"

    def __init__(self) -> None:
        super().__init__("the account has no open session with this reference")


def session_ref(digest: str) -> str:
    """A session's name for support: derived one way from its stored digest."""
    return hashlib.sha256(f"support-session-ref:{digest}".encode()).hexdigest()[:SESSION_REF_CHARS]


@dataclass(frozen=True)
class OpenSession:
    ref: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class SlowDown:
    """Failed sign-ins at the address within the window, and the wait they impose now on
    a browser without a device cookie (0: not slowed down)."""

    failures: int
    retry_after: int


@dataclass(frozen=True)
class AccountFacts:
    id: uuid.UUID
    address: str  # normalised: what the account's journeys are recorded under
    email_masked: str
    name: str
    locale: str
    disabled: bool
    created_at: datetime
    password_changed_at: datetime
    last_sign_in_at: datetime | None
    slow_down: SlowDown
    sessions: list[OpenSession]


class Overview:
    """Support's reads of accounts, and clearing a slow-down or revoking a session."""

    def __init__(
        self, db: Database, clock: Clock, signin: SignIn, settings: AccountSettings
    ) -> None:
        self.db = db
        self.clock = clock
        self.signin = signin
        self.settings = settings

    def find_sync(self, email: str) -> AccountFacts | None:
        """The account of an exact address (normalised), or None; `InvalidInput` for
        something that is not one address."""
        try:
            key = normalise_email(email)
        except InvalidEmail as exc:
            raise InvalidInput("email", str(exc)) from None
        return self._facts(account_t.c.email_normalized == key)

    def by_id_sync(self, account_id: uuid.UUID | str) -> AccountFacts:
        try:
            ident = account_id if isinstance(account_id, uuid.UUID) else uuid.UUID(account_id)
        except ValueError:
            raise AccountNotFound() from None
        found = self._facts(account_t.c.id == ident)
        if found is None:
            raise AccountNotFound()
        return found

    def _facts(self, where: object) -> AccountFacts | None:
        now = self.clock.now()
        since = now - timedelta(minutes=self.settings.login_failure_window_minutes)
        with self.db.transaction(write=False) as conn:
            row = conn.execute(select(account_t).where(where)).first()  # type: ignore[arg-type]
            if row is None:
                return None
            last = conn.execute(
                select(func.max(session_t.c.created_at)).where(session_t.c.account_id == row.id)
            ).scalar()
            failures = conn.execute(
                select(func.count()).where(
                    failure_t.c.key == row.email_normalized, failure_t.c.at > since
                )
            ).scalar_one()
            sessions = conn.execute(
                select(session_t.c.token_hash, session_t.c.created_at, session_t.c.expires_at)
                .where(
                    session_t.c.account_id == row.id,
                    session_t.c.revoked_at.is_(None),
                    session_t.c.expires_at > now,
                )
                .order_by(session_t.c.created_at.desc())
                .limit(MAX_SESSIONS_SHOWN)
            ).all()
        return AccountFacts(
            id=row.id,
            address=row.email_normalized,
            email_masked=mask_email(row.email_normalized),
            name=row.name,
            locale=row.locale,
            disabled=bool(row.disabled),
            created_at=as_utc(row.created_at),
            password_changed_at=as_utc(row.password_changed_at),
            last_sign_in_at=as_utc(last) if last is not None else None,
            slow_down=SlowDown(int(failures), self.signin.delay_sync(row.email_normalized)),
            sessions=[
                OpenSession(session_ref(s.token_hash), as_utc(s.created_at), as_utc(s.expires_at))
                for s in sessions
            ],
        )

    def clear_slow_down_sync(self, account_id: uuid.UUID | str) -> int:
        """Forget the failed sign-ins at the account's address: it may sign in at once."""
        facts = self.by_id_sync(account_id)
        return self.signin.clear_failures_sync(facts.address)

    def revoke_session_sync(self, account_id: uuid.UUID | str, ref: str) -> None:
        """Revoke the account's open session called `ref`; `SessionNotFound` if none is."""
        facts = self.by_id_sync(account_id)
        now = self.clock.now()
        with self.db.transaction() as conn:
            digests = conn.execute(
                select(session_t.c.token_hash).where(
                    session_t.c.account_id == facts.id,
                    session_t.c.revoked_at.is_(None),
                    session_t.c.expires_at > now,
                )
            ).scalars()
            match = next((d for d in digests if session_ref(d) == ref), None)
            if match is None:
                raise SessionNotFound()
            conn.execute(
                update(session_t).where(session_t.c.token_hash == match).values(revoked_at=now)
            )
