"""Accounts: creating them, finding them, and the one way a password changes.

`change_password` is what every route that sets a password runs (a reset
link today, support-handled recovery next), inside that route's transaction:
the new hash and history, a new credential version (so a sign-in that
verified the old password opens nothing afterwards: `api.accounts.signin`),
every session and every other link revoked (the applications are told:
`sessions.revoked`), the sign-in failures and the wrong recovery codes lifted,
and the remembered browsers forgotten. `change_address` is how support-handled
recovery gives the account its new address, in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import date, datetime

from sqlalchemy import Connection, delete, insert, select, update

from api.accounts import codes, links
from api.accounts.addresses import InvalidEmail, normalise_email
from api.accounts.models import Account, LoginDevice, LoginFailure, LoginSession
from api.accounts.passwords import PasswordHasher
from api.accounts.policy import HISTORY_SIZE, PasswordPolicy, PersonalData
from api.errors import AccountExists, InvalidInput, PolicyFailed
from api.events import SESSIONS_REVOKED, at, emit_in
from api.i18n import SUPPORTED
from engine import Database
from engine.clock import Clock

account_t = Account.__table__
session_t = LoginSession.__table__
failure_t = LoginFailure.__table__
device_t = LoginDevice.__table__


def revoke_sessions(
    conn: Connection, account_id: uuid.UUID, now: datetime, *, reason: str = "password_changed"
) -> int:
    """End every open session of an account; how many. The applications hear of it
    (`sessions.revoked`, when there was any), so their own sessions can end too."""
    ended = conn.execute(
        update(session_t)
        .where(session_t.c.account_id == account_id, session_t.c.revoked_at.is_(None))
        .values(revoked_at=now)
    ).rowcount
    if ended:
        emit_in(
            conn,
            now,
            SESSIONS_REVOKED,
            {
                "account_id": str(account_id),
                "sessions": ended,
                "reason": reason,
                "revoked_at": at(now),
            },
        )
    return int(ended)


def change_password(
    conn: Connection, account: Account, new_hash: str, now: datetime, *, keep_link: str
) -> int:
    """Store a new password (already hashed) and kill what the old one vouched for;
    the account's new credential version.

    The row lock orders this change with every sign-in that opens a session or
    writes a rehash (they lock the row too); the history is read under it, so two
    changes cannot drop each other's hash from it.
    """
    current = conn.execute(
        select(account_t.c.password_history, account_t.c.credential_version)
        .where(account_t.c.id == account.id)
        .with_for_update()
    ).one()
    version = int(current.credential_version) + 1
    conn.execute(
        update(account_t)
        .where(account_t.c.id == account.id)
        .values(
            password_hash=new_hash,
            password_history=[new_hash, *current.password_history][:HISTORY_SIZE],
            password_changed_at=now,
            credential_version=version,
        )
    )
    revoke_sessions(conn, account.id, now)
    links.revoke_account(conn, account.id, now, keep=keep_link)
    # The person proved they hold the address: the sign-in delays others' failures
    # built up are lifted, and no browser stays vouched for by the old password.
    conn.execute(delete(failure_t).where(failure_t.c.key == account.email_normalized))
    conn.execute(delete(device_t).where(device_t.c.account_id == account.id))
    # A successful recovery also ends the run of wrong recovery codes typed for it.
    codes.clear(conn, account.email_normalized)
    return version


def change_address(conn: Connection, account_id: uuid.UUID, email: str, normalised: str) -> None:
    """Give the account a new address (support-handled recovery, once its password is set).

    The normalised column is uniquely indexed: an address another account holds makes
    the caller's transaction fail rather than share it.
    """
    conn.execute(
        update(account_t)
        .where(account_t.c.id == account_id)
        .values(email=email.strip(), email_normalized=normalised)
    )


def credential_version(conn: Connection, account_id: uuid.UUID) -> int | None:
    """The account's credential version now (bumped by every password change), or None."""
    found = conn.execute(
        select(account_t.c.credential_version).where(account_t.c.id == account_id)
    ).scalar()
    return int(found) if found is not None else None


def address_taken(conn: Connection, normalised: str, *, besides: uuid.UUID | None = None) -> bool:
    """Whether an account (other than `besides`) has this normalised address."""
    query = select(account_t.c.id).where(account_t.c.email_normalized == normalised)
    if besides is not None:
        query = query.where(account_t.c.id != besides)
    return conn.execute(query).first() is not None


class Accounts:
    """Finding and creating accounts."""

    def __init__(
        self, db: Database, clock: Clock, hasher: PasswordHasher, policy: PasswordPolicy
    ) -> None:
        self.db = db
        self.clock = clock
        self.hasher = hasher
        self.policy = policy

    def by_id_sync(self, account_id: uuid.UUID) -> Account | None:
        with self.db.transaction(write=False) as conn:
            row = conn.execute(select(account_t).where(account_t.c.id == account_id)).first()
            return Account(**row._mapping) if row else None

    def by_address_sync(self, normalised: str) -> Account | None:
        """The account of a normalised address, disabled or not."""
        with self.db.transaction(write=False) as conn:
            row = conn.execute(
                select(account_t).where(account_t.c.email_normalized == normalised)
            ).first()
            return Account(**row._mapping) if row else None

    def by_addresses_sync(self, normalised: Iterable[str]) -> dict[str, Account]:
        """The accounts of normalised addresses (disabled or not), by address; an address
        with no account is absent."""
        wanted = list(dict.fromkeys(normalised))
        if not wanted:
            return {}
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(select(account_t).where(account_t.c.email_normalized.in_(wanted)))
            return {row.email_normalized: Account(**row._mapping) for row in rows}

    async def by_id(self, account_id: uuid.UUID) -> Account | None:
        return await self.db.run(self.by_id_sync, account_id, write=False)

    async def by_address(self, normalised: str) -> Account | None:
        return await self.db.run(self.by_address_sync, normalised, write=False)

    def create_sync(
        self,
        *,
        email: str,
        name: str,
        password: str,
        birth_date: date | None = None,
        locale: str = "en",
    ) -> Account:
        """Create an account (command line, demo); the password must pass the policy."""
        try:
            normalised = normalise_email(email)
        except InvalidEmail as exc:
            raise InvalidInput("email", str(exc)) from None
        if not name.strip():
            raise InvalidInput("name", "name must not be empty")
        if locale not in SUPPORTED:
            raise InvalidInput(
                "locale", "locale must be one of: {choices}", choices=", ".join(SUPPORTED)
            )
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
