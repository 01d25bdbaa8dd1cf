"""What support-handled recovery keeps beside its attempts: contact codes and notice tokens.

- A case's contact address is confirmed with a code of `CODE_DIGITS` digits sent to it.
  The row keeps the code's digest (SHA-256 of the case's id and the code, so one digest
  never stands for the same code in two cases), the normalised contact address the
  confirmation looks it up by, and how many wrong codes were typed against it: past
  `MAX_CODE_FAILURES` the code is dead.
- The links in the case's emails ("this wasn't me" in the notices to the account's
  address, the "more information" form) carry 256-bit tokens, kept as digests, each
  bound to one case and one purpose.

The functions taking a `Connection` run inside the caller's transaction (a
transition's effect); the others open their own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from api.accounts.models import ContactCode, NoticeToken
from api.accounts.tokens import plausible_token, token_hash, token_matches
from api.errors import UnknownToken
from engine import Database

code_t = ContactCode.__table__
notice_t = NoticeToken.__table__

CODE_DIGITS = 6
# Wrong codes typed against one case before its code stops working (5 in a million).
MAX_CODE_FAILURES = 5
# Cases one confirmation compares its code with: the newest unconfirmed ones of the address.
MAX_CANDIDATES = 5
CANCEL = "cancel"
ANSWER = "answer"
PURPOSES = (CANCEL, ANSWER)


@dataclass(frozen=True)
class SentCode:
    """A case's stored confirmation code."""

    attempt_id: uuid.UUID
    contact_normalized: str
    code_hash: str
    failures: int
    sent_at: datetime
    confirmed_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> SentCode:
        m = row._mapping
        return cls(**{name: m[name] for name in cls.__dataclass_fields__})

    @property
    def dead(self) -> bool:
        """Too many wrong codes were typed against it."""
        return self.failures >= MAX_CODE_FAILURES


@dataclass(frozen=True)
class Notice:
    """A stored notice token: whose case it is, what it may do, and whether it was used."""

    token_hash: str
    attempt_id: uuid.UUID
    purpose: str
    created_at: datetime
    used_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> Notice:
        m = row._mapping
        return cls(**{name: m[name] for name in cls.__dataclass_fields__})


# -- the contact address's code ---------------------------------------------------------


def new_code() -> str:
    """A fresh code of `CODE_DIGITS` decimal digits from `secrets` (leading zeros kept)."""
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def code_digest(attempt_id: uuid.UUID, code: str) -> str:
    """The digest stored for a case's code."""
    return hashlib.sha256(f"{attempt_id}:{code}".encode()).hexdigest()


def plausible_code(value: object) -> bool:
    """Exactly `CODE_DIGITS` ASCII digits."""
    return (
        isinstance(value, str) and len(value) == CODE_DIGITS and all("0" <= c <= "9" for c in value)
    )


def code_matches(sent: SentCode, code: str) -> bool:
    """Whether `code` is the case's, compared in constant time."""
    return hmac.compare_digest(code_digest(sent.attempt_id, code), sent.code_hash)


def store_code(
    db: Database, attempt_id: uuid.UUID, contact_normalized: str, code: str, now: datetime
) -> None:
    """The case's code, replacing the one of an earlier try that never went out."""
    with db.transaction() as conn:
        conn.execute(delete(code_t).where(code_t.c.attempt_id == attempt_id))
        conn.execute(
            insert(code_t).values(
                attempt_id=attempt_id,
                contact_normalized=contact_normalized,
                code_hash=code_digest(attempt_id, code),
                failures=0,
                sent_at=now,
            )
        )


def sent_since(db: Database, contact_normalized: str, since: datetime, exclude: uuid.UUID) -> int:
    """How many cases (but `exclude`) sent a code to this contact address after `since`."""
    with db.transaction(write=False) as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(code_t)
                .where(
                    code_t.c.contact_normalized == contact_normalized,
                    code_t.c.sent_at > since,
                    code_t.c.attempt_id != exclude,
                )
            ).scalar_one()
        )


def unconfirmed(db: Database, contact_normalized: str) -> list[SentCode]:
    """The newest cases whose code went to this address and was not confirmed yet."""
    with db.transaction(write=False) as conn:
        rows = conn.execute(
            select(code_t)
            .where(
                code_t.c.contact_normalized == contact_normalized,
                code_t.c.confirmed_at.is_(None),
            )
            .order_by(code_t.c.sent_at.desc())
            .limit(MAX_CANDIDATES)
        )
        return [SentCode.from_row(r) for r in rows]


def count_failure(db: Database, attempt_ids: list[uuid.UUID]) -> None:
    """A wrong code was typed against these cases."""
    if attempt_ids:
        with db.transaction() as conn:
            conn.execute(
                update(code_t)
                .where(code_t.c.attempt_id.in_(attempt_ids))
                .values(failures=code_t.c.failures + 1)
            )


def mark_confirmed(conn: Connection, attempt_id: uuid.UUID, now: datetime) -> None:
    """The code was typed right: the contact address is the person's."""
    conn.execute(update(code_t).where(code_t.c.attempt_id == attempt_id).values(confirmed_at=now))


def confirmed_cases(db: Database, contact_normalized: str) -> list[uuid.UUID]:
    """The cases whose contact address this is, confirmed."""
    with db.transaction(write=False) as conn:
        return list(
            conn.execute(
                select(code_t.c.attempt_id).where(
                    code_t.c.contact_normalized == contact_normalized,
                    code_t.c.confirmed_at.is_not(None),
                )
            ).scalars()
        )


def contact_of(db: Database, attempt_id: uuid.UUID) -> SentCode | None:
    """The case's stored code, if one was sent."""
    with db.transaction(write=False) as conn:
        row = conn.execute(select(code_t).where(code_t.c.attempt_id == attempt_id)).first()
    return SentCode.from_row(row) if row else None


# -- the tokens of the links in its emails ---------------------------------------------------


def store_token(
    db: Database, attempt_id: uuid.UUID, purpose: str, digest: str, now: datetime
) -> None:
    """Keep a token's digest for one case and purpose."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}")
    with db.transaction() as conn:
        conn.execute(
            insert(notice_t).values(
                token_hash=digest, attempt_id=attempt_id, purpose=purpose, created_at=now
            )
        )


def find_token(db: Database, token: object, purpose: str) -> Notice:
    """The stored token of that purpose; `UnknownToken` for anything that is not one."""
    if not plausible_token(token):
        raise UnknownToken()
    assert isinstance(token, str)
    digest = token_hash(token)
    with db.transaction(write=False) as conn:
        row = conn.execute(
            select(notice_t).where(notice_t.c.token_hash == digest, notice_t.c.purpose == purpose)
        ).first()
    if row is None:
        raise UnknownToken()
    notice = Notice.from_row(row)
    # The index found the row by digest; the decision is a constant-time compare.
    if not token_matches(token, notice.token_hash):
        raise UnknownToken()
    return notice


def use_token(conn: Connection, digest: str, now: datetime) -> bool:
    """Use a token up; False if it was used meanwhile (someone else won)."""
    done = conn.execute(
        update(notice_t)
        .where(notice_t.c.token_hash == digest, notice_t.c.used_at.is_(None))
        .values(used_at=now)
    )
    return done.rowcount == 1


def retire_tokens(conn: Connection, attempt_id: uuid.UUID, purpose: str, now: datetime) -> None:
    """Use up every unused token of a case for one purpose (a question answered, or replaced)."""
    conn.execute(
        update(notice_t)
        .where(
            notice_t.c.attempt_id == attempt_id,
            notice_t.c.purpose == purpose,
            notice_t.c.used_at.is_(None),
        )
        .values(used_at=now)
    )
