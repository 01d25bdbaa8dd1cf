"""The one-time code a recovery email carries beside its link, and the bounds on guessing it.

A code is `code_digits` decimal digits from `secrets` (6 by default: NIST SP
800-63B rev 4 counts an emailed code of at least 6 digits as a recovery code,
throttled). It is stored only as a keyed digest on its link's row,
HMAC-SHA256 keyed by that row's link-token digest, so the same code in two
emails never gives the same digest and no table of the million digests can be
built in advance; it is compared in constant time.

Guessing is bounded twice, and both bounds hold under concurrent tries:

- per attempt: past `per_attempt` wrong codes judged against a link's code, no
  try of it is judged any more (the link itself keeps working);
- per address: past `per_account` wrong codes judged for a normalised address,
  across all its attempts, no try for it is judged until a successful recovery
  clears the count (`clear`, run by every password change). The count is kept
  for every typed address, account or not, so it behaves the same for all.

`judge` decides, in one write transaction that locks the link's row and then
the address's row (the order every other writer of both follows), whether a
try is judged and, if it is wrong, counts it. A try that is not judged is
refused whatever code it carries: after the limit, no answer tells a right
code from a wrong one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from api.accounts.models import RecoveryCodeFailures, RecoveryToken
from engine import Database

token_t = RecoveryToken.__table__
failures_t = RecoveryCodeFailures.__table__

# What a try of no link is compared against, so every try costs one keyed digest and
# one constant-time comparison.
_NO_KEY = "0" * 64
_NO_DIGEST = "f" * 64
# The separators a person may type inside a code ("123 456"): dropped before checking.
_SEPARATORS = str.maketrans("", "", " -\u00a0\u202f")


class Verdict(StrEnum):
    """What became of one try of a code, as the attempt's event log records it."""

    right = "right_code"
    wrong = "wrong_code"
    # Not judged: the attempt's code, or the address, is past its limit of wrong codes.
    attempt_limit = "too_many_wrong_codes"
    account_limit = "too_many_wrong_codes_for_the_address"

    @property
    def judged(self) -> bool:
        return self in (Verdict.right, Verdict.wrong)


@dataclass(frozen=True)
class Judgement:
    """A try's verdict, and the wrong codes its link's code has had since (None: no link)."""

    verdict: Verdict
    wrong_codes: int | None


def new_code(digits: int) -> str:
    """A fresh code of exactly `digits` decimal digits (leading zeros kept)."""
    return f"{secrets.randbelow(10**digits):0{digits}d}"


def code_digest(code: str, key: str) -> str:
    """The stored form of `code` on the row whose link-token digest is `key`."""
    return hmac.new(key.encode("ascii"), code.encode("ascii"), hashlib.sha256).hexdigest()


def normalise_code(value: object, digits: int) -> str | None:
    """The code a person typed, separators removed, or None if it cannot be one of ours."""
    if not isinstance(value, str) or len(value) > 4 * digits:
        return None
    code = value.strip().translate(_SEPARATORS)
    if len(code) != digits or not (code.isascii() and code.isdigit()):
        return None
    return code


def matches(code: str, key: str | None, stored: str | None) -> bool:
    """Whether `code` is the one stored on a row, compared in constant time; the same
    work when there is no row or no code on it (then never a match)."""
    if key is None or stored is None:
        hmac.compare_digest(code_digest(code, _NO_KEY), _NO_DIGEST)
        return False
    return hmac.compare_digest(code_digest(code, key), stored)


def _ensure_counter(conn: Connection, key: str, now: datetime) -> None:
    """The address's row of wrong codes, created at zero if it does not exist yet."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(failures_t)
        .values(key=key, failures=0, updated_at=now)
        .on_conflict_do_nothing(index_elements=[failures_t.c.key])
    )


def judge(
    db: Database,
    key: str,
    link_token_hash: str | None,
    right: bool,
    *,
    per_attempt: int,
    per_account: int,
    now: datetime,
) -> Judgement:
    """Judge one try for the normalised address `key` against the code on the row of
    `link_token_hash` (None: no code to try); a judged wrong code is counted on both."""
    row = link_token_hash or _NO_KEY
    with db.transaction() as conn:
        attempt_failures = conn.execute(
            select(token_t.c.code_failures).where(token_t.c.token_hash == row).with_for_update()
        ).scalar()
        _ensure_counter(conn, key, now)
        account_failures = conn.execute(
            select(failures_t.c.failures).where(failures_t.c.key == key).with_for_update()
        ).scalar_one()
        if account_failures >= per_account:
            return Judgement(Verdict.account_limit, attempt_failures)
        if attempt_failures is not None and attempt_failures >= per_attempt:
            return Judgement(Verdict.attempt_limit, attempt_failures)
        if right:
            return Judgement(Verdict.right, attempt_failures)
        conn.execute(
            update(failures_t)
            .where(failures_t.c.key == key)
            .values(failures=failures_t.c.failures + 1, updated_at=now)
        )
        conn.execute(
            update(token_t)
            .where(token_t.c.token_hash == row)
            .values(code_failures=token_t.c.code_failures + 1)
        )
        return Judgement(
            Verdict.wrong, attempt_failures + 1 if attempt_failures is not None else None
        )


def wrong_codes(db: Database, link_token_hash: str) -> int:
    """How many wrong codes were judged against a link's code."""
    with db.transaction(write=False) as conn:
        found = conn.execute(
            select(token_t.c.code_failures).where(token_t.c.token_hash == link_token_hash)
        ).scalar()
    return int(found or 0)


def clear(conn: Connection, key: str) -> None:
    """Forget an address's wrong codes (a successful recovery), in the caller's transaction."""
    conn.execute(delete(failures_t).where(failures_t.c.key == key))
