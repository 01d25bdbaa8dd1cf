"""The tokens recovery links carry, as stored: one row per attempt, digests only.

A link's token (and the cancel-only token of its "this wasn't me" link) are
256 random bits shown once, in the email; the row keeps their SHA-256
digests, bound to one attempt and one account. The email's one-time code
(`api.accounts.codes`) lives on the same row, and so does the digest of the
token a right code was exchanged for: that token opens what the link opens,
and both die with the row. Lookups go by digest (an
index); the comparison that decides is constant-time. A link dies when its
row is used (`used_at`, exactly once) or revoked (`revoked_at`), or when its
attempt leaves the states where it is live.

The functions taking a `Connection` run inside the caller's transaction (a
transition's effect); the others open their own.

Several flows hand out links of this one form (`/recovery/reset?token=…`): each
says what using one does through its `links` hook (`LinkActions`), and the pages
and the JSON API call the actions of the flow the link's attempt runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from api.accounts.models import RecoveryToken
from api.accounts.tokens import plausible_token, token_hash, token_matches
from api.errors import DEAD_LINKS, LinkDead, UnknownToken
from api.support.reference import support_reference
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
    code_hash: str | None = None
    code_failures: int = 0
    code_token_hash: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> Link:
        m = row._mapping
        return cls(**{name: m[name] for name in cls.__dataclass_fields__})

    @property
    def live(self) -> bool:
        """Neither used nor revoked (its attempt's state decides the rest)."""
        return self.used_at is None and self.revoked_at is None


@dataclass(frozen=True)
class LinkActions:
    """A flow's `links` hook: what opening one of its links does (never consuming it),
    setting the password with it (exactly once), and cancelling with it.

    Each takes the application and the token as `flows.password_recovery` does:
    `open(app, token, *, method, has_cookies)` answers an object with `attempt` and
    `expires_at`; `set_password(app, token, password, confirmation, *, locale)` and
    `cancel(app, token)` answer the attempt.
    """

    open: Callable[..., Awaitable[Any]]
    set_password: Callable[..., Awaitable[Any]]
    cancel: Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class NewLink:
    """The tokens of one link about to be emailed (their digests only)."""

    attempt_id: uuid.UUID
    account_id: uuid.UUID
    digest: str
    cancel_digest: str
    created_at: datetime
    code_digest: str | None = None


def store(
    db: Database,
    attempt_id: uuid.UUID,
    account_id: uuid.UUID,
    digest: str,
    cancel_digest: str,
    now: datetime,
    code_digest: str | None = None,
) -> None:
    """The attempt's link tokens (and its code's digest, if the email carries one),
    replacing those of an earlier try that never went out."""
    store_many(db, [NewLink(attempt_id, account_id, digest, cancel_digest, now, code_digest)])


def store_many(db: Database, new: Sequence[NewLink]) -> None:
    """`store` for the links of many attempts, in one transaction."""
    if not new:
        return
    with db.transaction() as conn:
        conn.execute(delete(token_t).where(token_t.c.attempt_id.in_([n.attempt_id for n in new])))
        conn.execute(
            insert(token_t),
            [
                {
                    "token_hash": n.digest,
                    "cancel_hash": n.cancel_digest,
                    "attempt_id": n.attempt_id,
                    "account_id": n.account_id,
                    "created_at": n.created_at,
                    "code_hash": n.code_digest,
                    "code_failures": 0,
                }
                for n in new
            ],
        )


def find(db: Database, token: object, *, cancel: bool = False) -> Link:
    """The link a token opens: the link's own token, or the one a right code was exchanged
    for (with `cancel`, also the link whose cancel-only token it is); `UnknownToken` for
    anything that is not one of ours."""
    if not plausible_token(token):
        raise UnknownToken()
    assert isinstance(token, str)
    digest = token_hash(token)
    with db.transaction(write=False) as conn:
        row = conn.execute(select(token_t).where(token_t.c.token_hash == digest)).first()
        if row is None:
            row = conn.execute(select(token_t).where(token_t.c.code_token_hash == digest)).first()
        if row is None and cancel:
            row = conn.execute(select(token_t).where(token_t.c.cancel_hash == digest)).first()
    if row is None:
        raise UnknownToken()
    link = Link.from_row(row)
    # The index found the row by digest; the decision is a constant-time compare.
    stored = next(
        (h for h in (link.cancel_hash, link.code_token_hash) if h == digest), link.token_hash
    )
    if stored is None or not token_matches(token, stored):
        raise UnknownToken()
    return link


def of_attempts(db: Database, attempt_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Link]:
    """The links stored for these attempts, by attempt (one emailed nothing: none)."""
    with db.transaction(write=False) as conn:
        rows = conn.execute(select(token_t).where(token_t.c.attempt_id.in_(list(attempt_ids))))
        return {row.attempt_id: Link.from_row(row) for row in rows}


def opened_by_code(token: str, link: Link) -> bool:
    """Whether `token` is the one a right code was exchanged for (not the link's own)."""
    return link.code_token_hash is not None and token_matches(token, link.code_token_hash)


def keep_code_token(conn: Connection, link: Link, digest: str) -> bool:
    """Make `digest` the link's code token (the previous one stops working); False if
    the link was used or revoked meanwhile."""
    return _update_if_live(conn, link, code_token_hash=digest)


# Built once: every batch of `dispatch`es runs it, and building a statement costs more than
# running it.
_CURRENT_DIGESTS = select(token_t.c.attempt_id, token_t.c.token_hash).where(
    token_t.c.attempt_id.in_(bindparam("attempt_ids", expanding=True))
)


def current_digests(conn: Connection, attempt_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The digest of the link stored for each attempt now (a later try replaces it), by
    attempt; an attempt without a link is absent."""
    rows = conn.execute(_CURRENT_DIGESTS, {"attempt_ids": list(attempt_ids)})
    return {row.attempt_id: row.token_hash for row in rows}


def consume(conn: Connection, link: Link, now: datetime) -> bool:
    """Use the link up; False if it was used or revoked meanwhile (someone else won)."""
    return _update_if_live(conn, link, used_at=now)


def _update_if_live(conn: Connection, link: Link, **values: Any) -> bool:
    """Write `values` on the link's row if it is neither used nor revoked; whether it was."""
    done = conn.execute(
        update(token_t)
        .where(
            token_t.c.token_hash == link.token_hash,
            token_t.c.used_at.is_(None),
            token_t.c.revoked_at.is_(None),
        )
        .values(**values)
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


def dead_link(link: Link, state: str, reasons: Mapping[str, str]) -> LinkDead:
    """Why the link no longer works: used, else its attempt's state told by the flow's
    `reasons` (a state it does not name: revoked)."""
    reason = "used" if link.used_at is not None else reasons.get(state, "revoked")
    return DEAD_LINKS[reason](support_reference(link.attempt_id))
