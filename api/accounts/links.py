"""The tokens recovery links carry, as stored: one row per attempt, digests only.

A link's token (and the cancel-only token of its "this wasn't me" link) are
256 random bits shown once, in the email; the row keeps their SHA-256
digests, bound to one attempt and one account. Lookups go by digest (an
index); the comparison that decides is constant-time. A link dies when its
row is used (`used_at`, exactly once) or revoked (`revoked_at`), or when its
attempt leaves the states where it is live.

The functions taking a `Connection` run inside the caller's transaction (a
transition's effect); the others open their own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from api.accounts.models import RecoveryToken
from api.accounts.tokens import plausible_token, token_hash, token_matches
from api.errors import UnknownToken
from engine import Database

token_t = RecoveryToken.__table__


@dataclass(frozen=True)
class Link:
    """A stored link: whose it is and whether it may still be used."""

    token_hash: str
    cancel_hash: str | None
    attempt_id: uuid.UUID
    account_id: uuid.UUID
    created_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> Link:
        m = row._mapping
        return cls(**{name: m[name] for name in cls.__dataclass_fields__})

    @property
    def live(self) -> bool:
        """Neither used nor revoked (its attempt's state decides the rest)."""
        return self.used_at is None and self.revoked_at is None


def store(
    db: Database,
    attempt_id: uuid.UUID,
    account_id: uuid.UUID,
    digest: str,
    cancel_digest: str,
    now: datetime,
) -> None:
    """The attempt's link tokens, replacing those of an earlier try that never went out."""
    with db.transaction() as conn:
        conn.execute(delete(token_t).where(token_t.c.attempt_id == attempt_id))
        conn.execute(
            insert(token_t).values(
                token_hash=digest,
                cancel_hash=cancel_digest,
                attempt_id=attempt_id,
                account_id=account_id,
                created_at=now,
            )
        )


def find(db: Database, token: object, *, cancel: bool = False) -> Link:
    """The link a token opens (with `cancel`, also the link whose cancel-only token it is);
    `UnknownToken` for anything that is not one of ours."""
    if not plausible_token(token):
        raise UnknownToken()
    assert isinstance(token, str)
    digest = token_hash(token)
    with db.transaction(write=False) as conn:
        row = conn.execute(select(token_t).where(token_t.c.token_hash == digest)).first()
        if row is None and cancel:
            row = conn.execute(select(token_t).where(token_t.c.cancel_hash == digest)).first()
    if row is None:
        raise UnknownToken()
    link = Link.from_row(row)
    # The index found the row by digest; the decision is a constant-time compare.
    stored = link.cancel_hash if link.cancel_hash == digest else link.token_hash
    if stored is None or not token_matches(token, stored):
        raise UnknownToken()
    return link


def current_digest(conn: Connection, attempt_id: uuid.UUID) -> str | None:
    """The digest of the link stored for an attempt now (a later try replaces it)."""
    return conn.execute(
        select(token_t.c.token_hash).where(token_t.c.attempt_id == attempt_id)
    ).scalar()


def consume(conn: Connection, link: Link, now: datetime) -> bool:
    """Use the link up; False if it was used or revoked meanwhile (someone else won)."""
    done = conn.execute(
        update(token_t)
        .where(
            token_t.c.token_hash == link.token_hash,
            token_t.c.used_at.is_(None),
            token_t.c.revoked_at.is_(None),
        )
        .values(used_at=now)
    )
    return done.rowcount == 1


def revoke(conn: Connection, attempt_ids: Iterable[uuid.UUID], now: datetime) -> None:
    """Kill the links of these attempts."""
    ids = list(attempt_ids)
    if ids:
        conn.execute(
            update(token_t)
            .where(token_t.c.attempt_id.in_(ids), token_t.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )


def revoke_account(conn: Connection, account_id: uuid.UUID, now: datetime, keep: str) -> None:
    """Kill every other live link of an account (its password changed)."""
    conn.execute(
        update(token_t)
        .where(
            token_t.c.account_id == account_id,
            token_t.c.token_hash != keep,
            token_t.c.used_at.is_(None),
            token_t.c.revoked_at.is_(None),
        )
        .values(revoked_at=now)
    )


def drop(conn: Connection, attempt_id: uuid.UUID) -> None:
    """Forget an attempt's link altogether (its email never left)."""
    conn.execute(delete(token_t).where(token_t.c.attempt_id == attempt_id))


def attempts_of(conn: Connection, account_id: uuid.UUID) -> list[uuid.UUID]:
    """The attempts that ever emailed a link for an account."""
    return list(
        conn.execute(select(token_t.c.attempt_id).where(token_t.c.account_id == account_id))
        .scalars()
        .all()
    )


def forget_account(conn: Connection, account_id: uuid.UUID) -> None:
    """Delete every link row of an account (the account is being deleted)."""
    conn.execute(delete(token_t).where(token_t.c.account_id == account_id))
