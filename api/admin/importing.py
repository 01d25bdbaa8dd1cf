"""Bringing accounts in: many at once, all or nothing, every bad row named.

An import is a batch of rows, each `{"email", "name", "locale"?, "birth_date"?,
"password"? , "password_hash"?}` with exactly one of `password` (it must pass the
password policy, and is hashed with our Argon2) and `password_hash` (an Argon2 PHC
string, bcrypt or Django's `pbkdf2_sha256$`, kept until the account's first sign-in
rehashes it: `api.accounts.passwords`). Every row is checked before anything is
written; one bad row refuses the whole batch with `ImportRefused`, whose details
name each bad row (`{"row", "code", "message"}`, rows counted from 1: the line of an
NDJSON file), and nothing is created. A good batch is inserted in one transaction.

Bodies come as JSON (`{"accounts": [...]}`, or the list alone) or NDJSON (one row
per line, read as it streams in).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from api.accounts.accounts import Accounts
from api.accounts.addresses import InvalidEmail, normalise_email
from api.accounts.models import Account
from api.accounts.passwords import ARGON2, UnsupportedHash, imported_scheme
from api.accounts.policy import PersonalData
from api.errors import InvalidInput, RecoveryError
from api.i18n import SUPPORTED, gettext, ngettext

account_t = Account.__table__

FIELDS = ("email", "name", "locale", "birth_date", "password", "password_hash")
MAX_NAME_CHARS = 200
# Rows looked up (existing addresses) or inserted per statement.
CHUNK = 500
PLAIN = "plain"
# progress(stage, done, total): "check", "hash", "insert".
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class RowError:
    """One problem with one row: its number (from 1), a stable code, and an English
    message (a message id whose `{placeholders}` come from `params`)."""

    row: int
    code: str
    message: str
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, locale: str) -> dict[str, Any]:
        return {
            "row": self.row,
            "code": self.code,
            "message": gettext(locale, self.message, **self.params),
        }


class ImportRefused(RecoveryError):
    """Some rows are not valid: nothing was created; `details` name every bad row."""

    code = "import_refused"

    def __init__(self, errors: list[RowError]) -> None:
        self.errors = errors
        bad = len({e.row for e in errors})
        super().__init__(
            "no account was created: {count} row is not valid",
            plural="no account was created: {count} rows are not valid",
            params={"count": bad},
            details=[e.as_dict("en") for e in errors],
        )

    def details_in(self, locale: str) -> list[dict[str, Any]]:
        return [e.as_dict(locale) for e in self.errors]


@dataclass(frozen=True)
class NewAccount:
    """A row that passed every check."""

    row: int
    email: str
    normalised: str
    name: str
    locale: str
    birth_date: date | None
    password: str | None
    password_hash: str | None
    scheme: str


def rows_of_json(body: bytes) -> list[object]:
    """The rows of a JSON body: `{"accounts": [...]}` or the list alone."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("body", "the body is not valid JSON") from None
    if isinstance(parsed, dict) and set(parsed) == {"accounts"}:
        parsed = parsed["accounts"]
    if not isinstance(parsed, list):
        raise InvalidInput("accounts", 'the body must be {"accounts": [...]} or a list of rows')
    return parsed


class NotJsonLine:
    """An NDJSON line that does not parse (reported as its row's error)."""


def rows_of_ndjson_lines(lines: Iterable[bytes | str]) -> Iterator[object]:
    """The rows of NDJSON lines (blank lines skipped; a broken line is a `NotJsonLine`)."""
    for line in lines:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        if not text.strip():
            continue
        try:
            yield json.loads(text)
        except ValueError:
            yield NotJsonLine()


async def ndjson_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Lines of a streamed body, as they arrive."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line
    if pending:
        yield pending


class Importer:
    """Checks and inserts batches of accounts for one database."""

    def __init__(self, accounts: Accounts, *, max_rows: int) -> None:
        self.accounts = accounts
        self.db = accounts.db
        self.hasher = accounts.hasher
        self.policy = accounts.policy
        self.max_rows = max_rows

    # -- checking ------------------------------------------------------------

    def check_sync(self, rows: list[object], progress: Progress | None = None) -> list[NewAccount]:
        """Every row checked (fields, policy, hash form, duplicates, existing accounts);
        `ImportRefused` naming every bad row, or the rows ready to insert."""
        if not rows:
            raise InvalidInput("accounts", "name at least one account")
        if len(rows) > self.max_rows:
            raise InvalidInput("accounts", "at most {most} accounts per import", most=self.max_rows)
        errors: list[RowError] = []
        ready: list[NewAccount] = []
        first_row: dict[str, int] = {}
        for index, raw in enumerate(rows, start=1):
            checked = self._check_row(index, raw, errors)
            if checked is not None:
                seen = first_row.setdefault(checked.normalised, index)
                if seen != index:
                    errors.append(
                        RowError(
                            index,
                            "duplicate_email",
                            "the same address is on row {first}",
                            {"first": seen},
                        )
                    )
                else:
                    ready.append(checked)
            if progress is not None and (index % CHUNK == 0 or index == len(rows)):
                progress("check", index, len(rows))
        with self.db.transaction(write=False) as conn:
            errors += self._existing(conn, ready)
        if errors:
            raise ImportRefused(sorted(errors, key=lambda e: e.row))
        return ready

    def _check_row(self, index: int, raw: object, errors: list[RowError]) -> NewAccount | None:
        if isinstance(raw, NotJsonLine):
            errors.append(RowError(index, "invalid_json", "the line is not valid JSON"))
            return None
        if not isinstance(raw, dict):
            errors.append(RowError(index, "invalid_row", "a row must be a JSON object"))
            return None
        before = len(errors)
        unknown = sorted(str(k)[:100] for k in raw if k not in FIELDS)
        for name in unknown:
            errors.append(
                RowError(index, "unknown_field", "unknown field {field!r}", {"field": name})
            )
        email = raw.get("email")
        try:
            normalised = normalise_email(email)
        except InvalidEmail as exc:
            errors.append(RowError(index, "invalid_email", str(exc)))
            normalised = ""
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME_CHARS:
            errors.append(
                RowError(
                    index,
                    "invalid_name",
                    "name must be 1 to {most} characters",
                    {"most": MAX_NAME_CHARS},
                )
            )
        locale = raw.get("locale", "en")
        if locale not in SUPPORTED:
            errors.append(
                RowError(
                    index,
                    "invalid_locale",
                    "locale must be one of: {choices}",
                    {"choices": ", ".join(SUPPORTED)},
                )
            )
        birth_date = _birth_date(raw.get("birth_date"))
        if birth_date is False:
            errors.append(
                RowError(
                    index, "invalid_birth_date", "birth_date must be a date such as 1985-03-14"
                )
            )
        password, password_hash = raw.get("password"), raw.get("password_hash")
        scheme = PLAIN
        if (password is None) == (password_hash is None):
            errors.append(
                RowError(
                    index, "password_or_hash", "give exactly one of password and password_hash"
                )
            )
        elif password_hash is not None:
            try:
                scheme = imported_scheme(password_hash)
            except UnsupportedHash as exc:
                errors.append(RowError(index, exc.code, HASH_MESSAGES[exc.code]))
        elif not isinstance(password, str):
            errors.append(RowError(index, "invalid_password", "password must be a string"))
        if len(errors) > before:
            return None
        assert isinstance(email, str) and isinstance(name, str) and isinstance(locale, str)
        if isinstance(password, str):
            violations = self.policy.check(
                password, password, PersonalData(name, email, birth_date or None)
            )
            if violations:
                codes = ", ".join(v.code for v in violations)
                errors.append(
                    RowError(
                        index,
                        "password_policy",
                        "the password breaks the policy: {codes}",
                        {"codes": codes},
                    )
                )
                return None
        return NewAccount(
            row=index,
            email=email.strip(),
            normalised=normalised,
            name=name.strip(),
            locale=locale,
            birth_date=birth_date or None,
            password=password if isinstance(password, str) else None,
            password_hash=password_hash if isinstance(password_hash, str) else None,
            scheme=scheme,
        )

    def _existing(self, conn: Connection, ready: list[NewAccount]) -> list[RowError]:
        """A row for each address that already has an account."""
        errors = []
        for start in range(0, len(ready), CHUNK):
            chunk = ready[start : start + CHUNK]
            taken = set(
                conn.execute(
                    select(account_t.c.email_normalized).where(
                        account_t.c.email_normalized.in_([a.normalised for a in chunk])
                    )
                ).scalars()
            )
            errors += [
                RowError(
                    a.row, "account_exists", "an account with this email address already exists"
                )
                for a in chunk
                if a.normalised in taken
            ]
        return errors

    # -- writing -------------------------------------------------------------

    def insert_sync(
        self, ready: list[NewAccount], hashes: dict[int, str], progress: Progress | None = None
    ) -> list[uuid.UUID]:
        """Insert every row in one transaction (`hashes`: our hash of each plain password,
        by row); the new ids. An address taken meanwhile refuses the whole batch."""
        now = self.accounts.clock.now()
        values = []
        for account in ready:
            digest = account.password_hash if account.password_hash else hashes[account.row]
            values.append(
                {
                    "id": uuid.uuid4(),
                    "email": account.email,
                    "email_normalized": account.normalised,
                    "name": account.name,
                    "birth_date": account.birth_date,
                    "locale": account.locale,
                    "password_hash": digest,
                    "password_history": [digest],
                    "disabled": False,
                    "created_at": now,
                    "password_changed_at": now,
                    "credential_version": 0,
                }
            )
        try:
            with self.db.transaction() as conn:
                for start in range(0, len(values), CHUNK):
                    conn.execute(insert(account_t), values[start : start + CHUNK])
                    if progress is not None:
                        progress("insert", min(start + CHUNK, len(values)), len(values))
        except IntegrityError:
            with self.db.transaction(write=False) as conn:
                errors = self._existing(conn, ready)
            raise ImportRefused(errors) from None
        return [v["id"] for v in values]

    def hash_sync(
        self, ready: list[NewAccount], progress: Progress | None = None
    ) -> dict[int, str]:
        """Our Argon2 hash of each plain password, by row (command line: one at a time)."""
        plain = [a for a in ready if a.password is not None]
        hashes = {}
        for done, account in enumerate(plain, start=1):
            assert account.password is not None
            hashes[account.row] = self.hasher.hash_sync(account.password)
            if progress is not None:
                progress("hash", done, len(plain))
        return hashes

    async def hash(self, ready: list[NewAccount]) -> dict[int, str]:
        """The same, off the event loop on the hasher's bounded pool."""
        plain = [(a.row, a.password) for a in ready if a.password is not None]
        digests = await asyncio.gather(*(self.hasher.hash(password) for _, password in plain))
        return {row: digest for (row, _), digest in zip(plain, digests, strict=True)}

    def import_sync(self, rows: list[object], progress: Progress | None = None) -> Summary:
        """Check, hash and insert a batch in the calling thread (the command line)."""
        ready = self.check_sync(rows, progress)
        hashes = self.hash_sync(ready, progress)
        self.insert_sync(ready, hashes, progress)
        return Summary.of(ready)

    async def import_rows(self, rows: list[object]) -> Summary:
        """Check, hash and insert a batch (the admin API)."""
        ready = await self.db.run(self.check_sync, rows, write=False)
        hashes = await self.hash(ready)
        await self.db.run(self.insert_sync, ready, hashes)
        return Summary.of(ready)


@dataclass(frozen=True)
class Summary:
    """What an import created: how many, and by kind of password."""

    created: int
    by_scheme: dict[str, int]

    @classmethod
    def of(cls, ready: list[NewAccount]) -> Summary:
        counts: dict[str, int] = {}
        for account in ready:
            counts[account.scheme] = counts.get(account.scheme, 0) + 1
        return cls(len(ready), counts)

    def describe(self, locale: str = "en") -> str:
        parts = ", ".join(f"{n} {scheme}" for scheme, n in sorted(self.by_scheme.items()))
        text = ngettext(locale, "created {count} account", "created {count} accounts", self.created)
        return f"{text} ({parts})" if parts else text


HASH_MESSAGES = {
    "unsupported_hash": (
        "password_hash must be an Argon2 PHC string, a bcrypt $2b$ hash or a Django "
        "pbkdf2_sha256$ hash"
    ),
    "hash_too_costly": "password_hash costs more than a sign-in may spend",
}


def _birth_date(value: object) -> date | bool | None:
    """The date, None when absent, or False when malformed."""
    if value is None:
        return None
    if not isinstance(value, str):
        return False
    try:
        return date.fromisoformat(value) if len(value) == len("1985-03-14") else False
    except ValueError:
        return False


__all__ = [
    "ARGON2",
    "ImportRefused",
    "Importer",
    "NewAccount",
    "RowError",
    "Summary",
    "ndjson_lines",
    "rows_of_json",
    "rows_of_ndjson_lines",
]
