"""The accounts admin API's work: read, list, create, import, change, disable, delete.

Every action is recorded in the audit log under the admin key's name (the support
audit log: one record of who did what). What changes an account the applications
must hear of is emitted as an event in the same transaction (`api.events`):

- a new address: the account's links die, the old address gets a notice (after the
  commit, from the worker), `account.email_changed`, and the journeys that were live
  for the old address end (their end event, fired like `tx.end_journeys` does);
- disabled: its sessions and links are revoked (`sessions.revoked`,
  `account.disabled`), its live journeys end; from then on it gets no recovery mail
  and cannot sign in, and every public answer stays what it is for any address;
- deleted: the account, its sessions, links, remembered browsers and sign-in
  failures are deleted (`account.deleted`), and its attempts lose what identified the
  person (their subject and the data each flow names in its `personal_data` hook),
  keeping their states and events for the statistics.

Sync code, run on the database's threads by the admin routes.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, delete, select, tuple_, update
from sqlalchemy.exc import IntegrityError

from api import events
from api.accounts import links
from api.accounts.accounts import Accounts, revoke_sessions
from api.accounts.addresses import InvalidEmail, mask_email, normalise_email
from api.accounts.models import Account, LoginDevice, LoginFailure, LoginSession
from api.accounts.passwords import scheme_of
from api.accounts.policy import PersonalData
from api.admin.importing import Importer, ImportRefused, NewAccount, RowError
from api.errors import AccountExists, InvalidInput, PolicyFailed, RecoveryError
from api.i18n import SUPPORTED
from api.mail.delivery import UNUSABLE_ADDRESS, Mail
from api.mail.messages import email_changed_email
from api.settings import Settings
from api.support.audit import Audit
from api.support.cursors import decode_cursor, encode_cursor
from engine import ConflictError, Engine, EventRefused
from engine.clock import as_utc
from engine.core import enqueue

T = TypeVar("T")

account_t = Account.__table__
session_t = LoginSession.__table__
device_t = LoginDevice.__table__
failure_t = LoginFailure.__table__

# The outbox kind of the notice to an account's old address.
EMAIL_CHANGED_NOTICE = "account_email_changed_notice"
ERASED_PREFIX = "erased:"
MAX_PAGE = 200
DEFAULT_PAGE = 50
MAX_NAME_CHARS = 200
# Where a row error of a single create points, and as which error.
ROW_FIELDS = {
    "invalid_email": "email",
    "invalid_name": "name",
    "invalid_locale": "locale",
    "invalid_birth_date": "birth_date",
    "password_or_hash": "password",
    "invalid_password": "password",
    "unsupported_hash": "password_hash",
    "hash_too_costly": "password_hash",
    "unknown_field": "body",
}


class AccountNotFound(RecoveryError):
    """No account has this id."""

    code = "account_not_found"

    def __init__(self) -> None:
        super().__init__("no account has this id")


@dataclass(frozen=True)
class Page:
    """One page of accounts, newest first, and the cursor of the next one."""

    items: list[dict[str, Any]]
    next_cursor: str | None


class App(Protocol):
    """What the notice to an old address needs from the application."""

    settings: Settings
    engine: Engine
    accounts: Accounts
    mail: Mail


def item(row: Any) -> dict[str, Any]:
    """An account in a list: masked."""
    return {
        "id": str(row.id),
        "email_masked": mask_email(row.email_normalized),
        "locale": row.locale,
        "disabled": bool(row.disabled),
        "created_at": as_utc(row.created_at),
    }


def detail(row: Any) -> dict[str, Any]:
    """One account as an admin reads it: never its hash or history."""
    return {
        "id": str(row.id),
        "email": row.email,
        "name": row.name,
        "locale": row.locale,
        "birth_date": row.birth_date.isoformat() if row.birth_date else None,
        "disabled": bool(row.disabled),
        "created_at": as_utc(row.created_at),
        "password_changed_at": as_utc(row.password_changed_at),
        "password_scheme": scheme_of(row.password_hash) or "unknown",
    }


def _account_id(value: object) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise AccountNotFound() from None


class AdminAccounts:
    """The accounts admin API's operations (see the module)."""

    def __init__(self, engine: Engine, accounts: Accounts, importer: Importer) -> None:
        self.engine = engine
        self.db = engine.db
        self.clock = engine.clock
        self.accounts = accounts
        self.importer = importer
        self.audit = Audit(self.db, self.clock)

    def audited(
        self, who: str, action: str, target: str | None, info: dict[str, Any], work: Callable[[], T]
    ) -> T:
        return self.audit.audited(who, f"admin.{action}", target, info, work)

    # -- reading -------------------------------------------------------------

    def _row(self, conn: Connection, account_id: object, *, lock: bool = False) -> Any:
        query = select(account_t).where(account_t.c.id == _account_id(account_id))
        if lock:
            query = query.with_for_update()
        found = conn.execute(query).first()
        if found is None:
            raise AccountNotFound()
        return found

    def get_sync(self, who: str, account_id: object) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            with self.db.transaction(write=False) as conn:
                return detail(self._row(conn, account_id))

        return self.audited(who, "accounts.read", str(account_id)[:64], {}, work)

    def list_sync(
        self,
        who: str,
        *,
        email: str | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> Page:
        """Accounts, newest first, masked; one keyset page at a time."""

        def work() -> Page:
            if not 1 <= limit <= MAX_PAGE:
                raise InvalidInput("limit", "limit must be between 1 and {most}", most=MAX_PAGE)
            query = (
                select(account_t)
                .order_by(account_t.c.created_at.desc(), account_t.c.id.desc())
                .limit(limit + 1)
            )
            if email is not None:
                try:
                    query = query.where(account_t.c.email_normalized == normalise_email(email))
                except InvalidEmail as exc:
                    raise InvalidInput("email", str(exc)) from None
            if cursor is not None:
                after = decode_cursor(cursor)
                query = query.where(tuple_(account_t.c.created_at, account_t.c.id) < after)
            with self.db.transaction(write=False) as conn:
                rows = conn.execute(query).all()
            more = len(rows) > limit
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
            return Page([item(r) for r in rows], next_cursor)

        info = {"filtered": email is not None, "limit": limit}
        return self.audited(who, "accounts.list", None, info, work)

    # -- creating ------------------------------------------------------------

    def create_sync(self, who: str, row: Mapping[str, Any], locale: str) -> dict[str, Any]:
        """One account, from the same row an import takes; 400, 409 or 422 like a person's
        own mistakes would be."""

        def work() -> dict[str, Any]:
            try:
                ready = self.importer.check_sync([dict(row)])
                [account_id] = self.importer.insert_sync(ready, self.importer.hash_sync(ready))
            except ImportRefused as refused:
                raise _single(refused, ready=row, importer=self.importer, locale=locale) from None
            with self.db.transaction(write=False) as conn:
                return detail(self._row(conn, account_id))

        return self.audited(who, "accounts.create", None, {}, work)

    # -- changing ------------------------------------------------------------

    def update_sync(
        self, who: str, account_id: object, changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Change any of email, name, locale, birth_date, disabled (see the module)."""

        def work() -> dict[str, Any]:
            return self._update(account_id, changes)

        fields = sorted(changes)
        return self.audited(who, "accounts.update", str(account_id)[:64], {"fields": fields}, work)

    def _update(self, account_id: object, changes: Mapping[str, Any]) -> dict[str, Any]:
        values = _checked_changes(changes)
        now = self.clock.now()
        ended_subject = None
        try:
            with self.db.transaction() as conn:
                row = self._row(conn, account_id, lock=True)
                if (
                    "email_normalized" in values
                    and values["email_normalized"] != row.email_normalized
                ):
                    self._new_address(conn, row, values, now)
                    ended_subject = row.email_normalized
                else:
                    values.pop("email", None)
                    values.pop("email_normalized", None)
                disabling = values.get("disabled") is True and not row.disabled
                enabling = values.get("disabled") is False and row.disabled
                if values:
                    conn.execute(update(account_t).where(account_t.c.id == row.id).values(**values))
                if disabling:
                    revoke_sessions(conn, row.id, now, reason="account_disabled")
                    links.revoke_account(conn, row.id, now, keep="")
                    events.emit_in(conn, now, events.ACCOUNT_DISABLED, _about(row.id, now))
                    ended_subject = ended_subject or row.email_normalized
                if enabling:
                    events.emit_in(conn, now, events.ACCOUNT_ENABLED, _about(row.id, now))
                updated = detail(self._row(conn, row.id))
        except IntegrityError:
            raise AccountExists() from None
        if ended_subject is not None:
            reason = "email_changed" if "email_normalized" in values else "account_disabled"
            self.end_journeys(ended_subject, reason)
        return updated

    def _new_address(
        self, conn: Connection, row: Any, values: dict[str, Any], now: datetime
    ) -> None:
        """The account moves to a new address: its links die, the old address is told."""
        taken = conn.execute(
            select(account_t.c.id).where(account_t.c.email_normalized == values["email_normalized"])
        ).first()
        if taken is not None:
            raise AccountExists()
        links.revoke_account(conn, row.id, now, keep="")
        events.emit_in(conn, now, events.EMAIL_CHANGED, _about(row.id, now, "changed_at"))
        enqueue(
            conn,
            EMAIL_CHANGED_NOTICE,
            {
                "account_id": str(row.id),
                "old_email": row.email,
                "locale": values.get("locale", row.locale),
                "name": values.get("name", row.name),
            },
            now=now,
        )

    def end_journeys(self, subject: str, reason: str) -> list[uuid.UUID]:
        """End every live journey of `subject` in every exclusive group of the flows (what
        `tx.end_journeys` does inside a transition, here outside one)."""
        ended = []
        groups = {spec.exclusive.group for spec in self.engine.flows if spec.exclusive}
        for group in sorted(groups):
            for attempt in self.engine.queries.live_sync(group, subject):
                spec = self.engine.spec_of(attempt)
                assert spec.exclusive is not None
                try:
                    self.engine.fire_sync(
                        attempt.id, spec.exclusive.end_event, detail={"reason": reason}
                    )
                except (EventRefused, ConflictError):
                    continue  # it ended by itself meanwhile
                ended.append(attempt.id)
        return ended

    # -- deleting ------------------------------------------------------------

    def delete_sync(self, who: str, account_id: object) -> None:
        def work() -> None:
            self._delete(account_id)

        self.audited(who, "accounts.delete", str(account_id)[:64], {}, work)

    def _delete(self, account_id: object) -> None:
        now = self.clock.now()
        with self.db.transaction() as conn:
            row = self._row(conn, account_id, lock=True)
            attempt_ids = links.attempts_of(conn, row.id)
            revoke_sessions(conn, row.id, now, reason="account_deleted")
            conn.execute(delete(session_t).where(session_t.c.account_id == row.id))
            conn.execute(delete(device_t).where(device_t.c.account_id == row.id))
            conn.execute(delete(failure_t).where(failure_t.c.key == row.email_normalized))
            links.forget_account(conn, row.id)
            conn.execute(delete(account_t).where(account_t.c.id == row.id))
            events.emit_in(conn, now, events.ACCOUNT_DELETED, _about(row.id, now))
        subjects = {row.email_normalized}
        for attempt_id in attempt_ids:
            try:
                subjects.add(self.engine.read_sync(attempt_id).subject)
            except RecoveryError:
                continue
        personal = {spec.name: hook for spec, hook in self.engine.flows.hooked("personal_data")}
        data_keys = {flow: tuple(hook.get("data", ())) for flow, hook in personal.items()}
        detail_keys = {flow: tuple(hook.get("detail", ())) for flow, hook in personal.items()}
        # One pseudonym for all of the person's attempts: they stay countable together,
        # and nothing ties them to anyone any more.
        pseudonym = ERASED_PREFIX + secrets.token_hex(8)
        for subject in sorted(s for s in subjects if not s.startswith(ERASED_PREFIX)):
            self.engine.rewrite_subject_sync(
                subject, pseudonym, data_keys=data_keys, detail_keys=detail_keys
            )
        self.end_journeys(pseudonym, "account_deleted")


def _about(account_id: uuid.UUID, now: datetime, key: str = "at") -> dict[str, Any]:
    return {"account_id": str(account_id), key: events.at(now)}


def _checked_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The columns a change writes, each value checked; `InvalidInput` otherwise."""
    values: dict[str, Any] = {}
    if not changes:
        raise InvalidInput("body", "name at least one field to change")
    if "email" in changes:
        try:
            values["email_normalized"] = normalise_email(changes["email"])
        except InvalidEmail as exc:
            raise InvalidInput("email", str(exc)) from None
        values["email"] = str(changes["email"]).strip()
    if "name" in changes:
        name = changes["name"]
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME_CHARS:
            raise InvalidInput("name", "name must be 1 to {most} characters", most=MAX_NAME_CHARS)
        values["name"] = name.strip()
    if "locale" in changes:
        if changes["locale"] not in SUPPORTED:
            raise InvalidInput(
                "locale", "locale must be one of: {choices}", choices=", ".join(SUPPORTED)
            )
        values["locale"] = changes["locale"]
    if "birth_date" in changes:
        value = changes["birth_date"]
        if value is not None and not isinstance(value, date):
            raise InvalidInput("birth_date", "birth_date must be a date such as 1985-03-14")
        values["birth_date"] = value
    if "disabled" in changes:
        if not isinstance(changes["disabled"], bool):
            raise InvalidInput("disabled", "disabled must be true or false")
        values["disabled"] = changes["disabled"]
    return values


def _single(
    refused: ImportRefused, *, ready: Mapping[str, Any], importer: Importer, locale: str
) -> RecoveryError:
    """A single create's refusal, as the error its first problem is."""
    first: RowError = refused.errors[0]
    if first.code in ("account_exists", "duplicate_email"):
        return AccountExists()
    if first.code == "password_policy":
        email, name = str(ready.get("email", "")), str(ready.get("name", ""))
        password = str(ready.get("password", ""))
        violations = importer.policy.check(password, password, _personal(email, name, ready))
        return PolicyFailed(violations, locale)
    return InvalidInput(ROW_FIELDS.get(first.code, "body"), first.message, **first.params)


def _personal(email: str, name: str, row: Mapping[str, Any]) -> PersonalData:
    birth = row.get("birth_date")
    try:
        born = date.fromisoformat(birth) if isinstance(birth, str) else None
    except ValueError:
        born = None
    return PersonalData(name, email, born)


# -- the notice to the old address (an outbox handler the worker runs) --------------------


async def send_email_changed_notice(app: App, item: dict[str, Any]) -> None:
    """ "The address of your account was changed", to the old address, in the account's
    language; retried like every email, then given up."""
    engine = app.engine
    tries = int(item["tries"]) + 1
    payload = item["payload"] or {}

    async def finish(error: str | None = None, retry_at: datetime | None = None) -> None:
        await engine.db.run(engine.outbox_finish_sync, item["id"], error=error, retry_at=retry_at)

    locale = payload.get("locale") if payload.get("locale") in SUPPORTED else "en"
    try:
        message = email_changed_email(
            locale=str(locale),
            to=str(payload["old_email"]),
            mail_from=app.mail.sender,
            changed_at=as_utc(item["created_at"]),
            name=str(payload.get("name") or ""),
            recovery_page=f"{app.settings.public_base_url}/recovery",
            sent_at=engine.clock.now(),
        )
    except KeyError:
        await finish("malformed payload")
        return
    except ValueError:
        await finish(UNUSABLE_ADDRESS)
        return
    error = await app.mail.send(message)
    if error is None:
        await finish()
    elif app.mail.gives_up(error, tries):
        await finish(str(error))
    else:
        await finish(str(error), engine.clock.now() + app.mail.backoff(tries))


__all__ = ["AccountNotFound", "AdminAccounts", "NewAccount", "send_email_changed_notice"]
