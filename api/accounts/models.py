"""Tables of accounts and sign-in: accounts, link tokens, sessions, failures, devices,
the wrong recovery codes typed per address, the contact codes and notice tokens of
support-handled recovery, and the runs of `recovery reset-all`.

Secrets are never stored: tokens, session tokens and support keys are kept as
SHA-256 hex digests, passwords as Argon2id hashes.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel


class Account(SQLModel, table=True):
    """A person who can sign in."""

    __tablename__ = "account"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    email: str = Field(max_length=320)
    # NFKC + case-folded in Python, so both databases compare the same bytes.
    email_normalized: str = Field(max_length=320, unique=True, index=True)
    name: str = Field(max_length=200)
    birth_date: date | None = Field(default=None)
    locale: str = Field(default="en", max_length=16)
    password_hash: str = Field(max_length=255)
    # The last five hashes, newest first (the current one included).
    password_history: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    disabled: bool = Field(default=False)
    created_at: datetime
    password_changed_at: datetime
    # Bumped by every password change. A sign-in reads it with the hash it verifies and
    # opens its session (or writes its rehash) only if it is unchanged, under a lock on
    # the row: a sign-in that verified a password a reset has replaced opens nothing.
    credential_version: int = Field(default=0)


class RecoveryToken(SQLModel, table=True):
    """The hash of the token a recovery link carries, bound to one attempt and account.

    `cancel_hash` is the hash of the "this wasn't me" link's own token: it can cancel
    the attempt and nothing else (it opens no form and sets no password).

    The one-time code the same email carries (flow version 2) lives on the same row,
    so it dies with the link: `code_hash` is its keyed digest (`api.accounts.codes`),
    `code_failures` the wrong codes judged against it, and `code_token_hash` the digest
    of the token a right code was exchanged for (only the newest one works), which
    opens the same password form as the link.
    """

    __tablename__ = "recovery_token"

    token_hash: str = Field(primary_key=True, max_length=64)
    cancel_hash: str | None = Field(default=None, max_length=64, unique=True, index=True)
    attempt_id: uuid.UUID = Field(index=True, unique=True)
    account_id: uuid.UUID = Field(index=True)
    created_at: datetime
    used_at: datetime | None = Field(default=None)
    revoked_at: datetime | None = Field(default=None)
    code_hash: str | None = Field(default=None, max_length=64)
    code_failures: int = Field(default=0)
    code_token_hash: str | None = Field(default=None, max_length=64, unique=True, index=True)


class LoginSession(SQLModel, table=True):
    """A signed-in session; the bearer token's hash is the key."""

    __tablename__ = "login_session"

    token_hash: str = Field(primary_key=True, max_length=64)
    account_id: uuid.UUID = Field(index=True)
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = Field(default=None)


class LoginFailure(SQLModel, table=True):
    """One failed sign-in, keyed by the normalised address typed (account or not).

    `device` is the digest of the browser's device cookie when it came from a browser
    that signed in to this account before (see `LoginDevice`), else None: the two are
    counted apart, so a stranger's failures never slow such a browser down.
    """

    __tablename__ = "login_failure"
    __table_args__ = (Index("ix_login_failure_key_device_at", "key", "device", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=320)
    device: str | None = Field(default=None, max_length=64)
    at: datetime


class LoginDevice(SQLModel, table=True):
    """A browser that signed in to an account: the digest of its device cookie.

    OWASP's "device cookies": sign-in failures from a browser carrying one are counted
    for that browser alone. A password change forgets the account's devices.
    """

    __tablename__ = "login_device"

    token_hash: str = Field(primary_key=True, max_length=64)
    account_id: uuid.UUID = Field(index=True)
    created_at: datetime
    expires_at: datetime


class RecoveryCodeFailures(SQLModel, table=True):
    """Wrong recovery codes judged for one normalised address (account or not), across
    its attempts, since its last successful recovery: past a cap no code is judged.

    Kept per typed address whether or not an account has it, so the cap behaves the
    same for every address and tells nobody which ones exist.
    """

    __tablename__ = "recovery_code_failures"

    key: str = Field(primary_key=True, max_length=320)
    failures: int = Field(default=0)
    updated_at: datetime


class ContactCode(SQLModel, table=True):
    """The confirmation code sent to the contact address of a support-handled recovery
    case (one per case), stored as a digest bound to the case; `failures` counts wrong
    codes typed against it (past the limit the code is dead)."""

    __tablename__ = "contact_code"
    __table_args__ = (Index("ix_contact_code_contact_sent", "contact_normalized", "sent_at"),)

    attempt_id: uuid.UUID = Field(primary_key=True)
    # NFKC + case-folded, like account addresses: the confirmation looks cases up by it.
    contact_normalized: str = Field(max_length=320)
    code_hash: str = Field(max_length=64)
    failures: int = Field(default=0)
    sent_at: datetime
    confirmed_at: datetime | None = Field(default=None)


class NoticeToken(SQLModel, table=True):
    """The digest of a token carried by a link in a support-handled recovery email: a
    notice's "this wasn't me" (`purpose` "cancel"), which cancels the case and nothing
    else, or the "more information" form's (`purpose` "answer"), used once."""

    __tablename__ = "notice_token"

    token_hash: str = Field(primary_key=True, max_length=64)
    attempt_id: uuid.UUID = Field(index=True)
    purpose: str = Field(max_length=16)
    created_at: datetime
    used_at: datetime | None = Field(default=None)


class ForcedReset(SQLModel, table=True):
    """One run of `recovery reset-all`: which accounts, how far it got, what it did.

    The accounts are taken in order of their id; `last_account_id` is the last one
    done, written in the same transaction as that batch's resets, so a run stopped
    anywhere resumes exactly after the last batch that committed. At most one run is
    unfinished (`finished_at` None) at a time.
    """

    __tablename__ = "forced_reset"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    # "all", or "file:" and the SHA-256 of the list's bytes.
    source: str = Field(max_length=80)
    started_at: datetime
    finished_at: datetime | None = Field(default=None)
    last_account_id: uuid.UUID | None = Field(default=None)
    total: int = Field(default=0)
    reset: int = Field(default=0)
    sessions_ended: int = Field(default=0)
    # Recovery attempts queued (a disabled account is reset but not emailed).
    emailed: int = Field(default=0)
    not_found: int = Field(default=0)
