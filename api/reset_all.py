"""`recovery reset-all`: a forced reset after a breach (SPEC §9, issue 17 §5).

Every account that existed when the run started (or those a file lists) is
taken in order of its id, `BATCH_SIZE` at a time, each batch in one
transaction that:

- makes the current password unusable (`UNUSABLE_PASSWORD`; the history is
  kept, so the old password cannot be chosen again) and bumps the credential
  version, so a sign-in that verified the old password a moment before opens
  nothing (`api.accounts.signin`);
- ends every session, revokes every link and forgets the remembered browsers;
- ends the account's live recovery journeys and queues one `password_recovery`
  attempt (`flows.password_recovery.forced_request`), which the worker emails
  like any other, without the throttles (a disabled account is reset but
  mailed nothing, as the flow would decide);
- moves the run's cursor (`ForcedReset.last_account_id`) past the batch, only
  if it still stands where this process left it (another process running the
  same run is refused, not doubled).

A run stopped anywhere (a crash, Ctrl-C, a lost database) loses at most its
uncommitted batch, which rolled back whole and mailed nobody (the worker only
mails committed attempts). The next `recovery reset-all` for the same accounts
resumes after the last committed batch: nobody is mailed twice, nobody is
skipped. A different selection is refused while a run is unfinished.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, func, insert, select, update

from api.accounts.addresses import InvalidEmail, normalise_email
from api.accounts.models import Account, ForcedReset, LoginDevice, LoginSession, RecoveryToken
from api.accounts.passwords import UNUSABLE_PASSWORD
from flows import password_recovery

if TYPE_CHECKING:
    from api.services import Services

BATCH_SIZE = 500
# How many listed addresses (or ids) are looked up per query.
LOOKUP_CHUNK = 500
EVERY_ACCOUNT = "all"
FILE_SOURCE = "file:"
# First key of the PostgreSQL advisory lock that orders starting runs.
RUN_LOCK_CLASS = 0x72737461  # "rsta"
END_REASON = {"reason": "forced_reset"}

account_t = Account.__table__
run_t = ForcedReset.__table__
session_t = LoginSession.__table__
token_t = RecoveryToken.__table__
device_t = LoginDevice.__table__

# Called after each committed batch with (accounts done, accounts in the run).
Progress = Callable[[int, int], None]


class ResetRefused(Exception):
    """A reset-all that cannot start or go on (bad list, another run): nothing changed."""


@dataclass(frozen=True)
class AccountList:
    """The accounts a file lists: what it is (its digest) and its entries, in order."""

    source: str
    addresses: tuple[str, ...]
    ids: tuple[uuid.UUID, ...]


@dataclass(frozen=True)
class Summary:
    """What a run did, over all its invocations (a resumed run counts its earlier ones)."""

    run_id: uuid.UUID
    resumed: bool
    total: int
    reset: int
    sessions_ended: int
    not_found: int
    emailed: int
    disabled: int


def read_account_list(path: Path) -> AccountList:
    """The accounts a file lists, one a line: an email address or an account id.

    Blank lines and lines starting with `#` are skipped. A line that is neither an
    address nor an id is refused with its line number, before anything changes.
    """
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ResetRefused(f"{path}: not UTF-8 text") from None
    addresses: list[str] = []
    ids: list[uuid.UUID] = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        try:
            ids.append(uuid.UUID(entry))
            continue
        except ValueError:
            pass
        try:
            addresses.append(normalise_email(entry))
        except InvalidEmail:
            raise ResetRefused(
                f"{path}, line {number}: neither an email address nor an account id"
            ) from None
    if not addresses and not ids:
        raise ResetRefused(f"{path}: lists no account")
    return AccountList(FILE_SOURCE + hashlib.sha256(raw).hexdigest(), tuple(addresses), tuple(ids))


def reset_all(
    app: Services,
    listed: AccountList | None = None,
    *,
    progress: Progress | None = None,
    batch_size: int = BATCH_SIZE,
) -> Summary:
    """Run (or resume) the forced reset of every account, or of the `listed` ones."""
    db = app.engine.db
    source = listed.source if listed is not None else EVERY_ACCOUNT
    chosen: list[uuid.UUID] | None = None
    not_found = 0
    if listed is not None:
        with db.transaction(write=False) as conn:
            chosen, not_found = _resolve(conn, listed)
    run, resumed = _open_run(app, source, chosen, not_found)
    done = run["reset"]
    if progress is not None:
        progress(done, run["total"])
    cursor: uuid.UUID | None = run["last_account_id"]
    while True:
        with db.transaction(write=False) as conn:
            batch = _next_batch(conn, run, chosen, cursor, batch_size)
        if not batch:
            break
        _reset_batch(app, run["id"], cursor, batch)
        cursor = batch[-1].id
        done += len(batch)
        if progress is not None:
            progress(done, run["total"])
    finished = _finish(app, run["id"])
    return Summary(
        run_id=run["id"],
        resumed=resumed,
        total=finished["total"],
        reset=finished["reset"],
        sessions_ended=finished["sessions_ended"],
        not_found=finished["not_found"],
        emailed=finished["emailed"],
        disabled=finished["reset"] - finished["emailed"],
    )


def _resolve(conn: Connection, listed: AccountList) -> tuple[list[uuid.UUID], int]:
    """The listed accounts' ids, sorted and without repeats, and how many entries name none."""
    found: set[uuid.UUID] = set()
    missing = 0
    for column, entries in (
        (account_t.c.email_normalized, sorted(set(listed.addresses))),
        (account_t.c.id, sorted(set(listed.ids))),
    ):
        for start in range(0, len(entries), LOOKUP_CHUNK):
            chunk: Sequence[Any] = entries[start : start + LOOKUP_CHUNK]
            rows = conn.execute(select(account_t.c.id).where(column.in_(chunk))).scalars().all()
            found.update(rows)
            missing += len(chunk) - len(rows)
    return sorted(found), missing


def _open_run(
    app: Services, source: str, chosen: list[uuid.UUID] | None, not_found: int
) -> tuple[dict[str, Any], bool]:
    """The unfinished run for `source` (resumed), or a new one; another source's refused."""
    db = app.engine.db
    now = app.engine.clock.now()
    with db.transaction() as conn:
        if not db.is_sqlite:
            # Two commands started together: the second waits, then resumes the first's run.
            conn.execute(select(func.pg_advisory_xact_lock(RUN_LOCK_CLASS, 0)))
        row = conn.execute(select(run_t).where(run_t.c.finished_at.is_(None))).first()
        if row is not None:
            run = dict(row._mapping)
            if run["source"] != source:
                raise ResetRefused(
                    f"an unfinished reset-all started at {run['started_at']:%Y-%m-%d %H:%M:%S} "
                    f"for {_describe(run['source'])} ({run['reset']} of {run['total']} done): "
                    "run it again with the same accounts to finish it first"
                )
            return run, True
        if chosen is None:
            total = conn.execute(
                select(func.count()).select_from(account_t).where(account_t.c.created_at <= now)
            ).scalar_one()
        else:
            total = len(chosen)
        run = {
            "id": uuid.uuid4(),
            "source": source,
            "started_at": now,
            "finished_at": None,
            "last_account_id": None,
            "total": int(total),
            "reset": 0,
            "sessions_ended": 0,
            "emailed": 0,
            "not_found": not_found,
        }
        conn.execute(insert(run_t).values(**run))
        return run, False


def _describe(source: str) -> str:
    return "every account" if source == EVERY_ACCOUNT else "the accounts of another list"


def _next_batch(
    conn: Connection,
    run: dict[str, Any],
    chosen: list[uuid.UUID] | None,
    cursor: uuid.UUID | None,
    batch_size: int,
) -> list[Account]:
    """The next accounts of the run after `cursor`, in order of id."""
    query = select(account_t).order_by(account_t.c.id).limit(batch_size)
    if chosen is None:
        query = query.where(account_t.c.created_at <= run["started_at"])
        if cursor is not None:
            query = query.where(account_t.c.id > cursor)
    else:
        ids = [i for i in chosen if cursor is None or i > cursor][:batch_size]
        if not ids:
            return []
        query = query.where(account_t.c.id.in_(ids))
    return [Account(**row._mapping) for row in conn.execute(query)]


def _reset_batch(
    app: Services, run_id: uuid.UUID, cursor: uuid.UUID | None, batch: list[Account]
) -> None:
    """Reset one batch and queue its emails, in one transaction."""
    ids = [account.id for account in batch]
    run = str(run_id)
    mailed = [password_recovery.forced_request(a, run) for a in batch if not a.disabled]

    def reset_accounts(conn: Connection, now: datetime) -> None:
        moved = conn.execute(
            update(run_t)
            .where(
                run_t.c.id == run_id,
                run_t.c.finished_at.is_(None),
                run_t.c.last_account_id.is_(None)
                if cursor is None
                else run_t.c.last_account_id == cursor,
            )
            .values(last_account_id=ids[-1], reset=run_t.c.reset + len(ids))
        )
        if moved.rowcount != 1:
            raise ResetRefused("another reset-all is running this run: let that one finish it")
        conn.execute(
            update(account_t)
            .where(account_t.c.id.in_(ids))
            .values(
                password_hash=UNUSABLE_PASSWORD,
                credential_version=account_t.c.credential_version + 1,
            )
        )
        ended = conn.execute(
            update(session_t)
            .where(
                session_t.c.account_id.in_(ids),
                session_t.c.revoked_at.is_(None),
                session_t.c.expires_at > now,
            )
            .values(revoked_at=now)
        ).rowcount
        conn.execute(
            update(session_t)
            .where(session_t.c.account_id.in_(ids), session_t.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        conn.execute(
            update(token_t)
            .where(
                token_t.c.account_id.in_(ids),
                token_t.c.used_at.is_(None),
                token_t.c.revoked_at.is_(None),
            )
            .values(revoked_at=now)
        )
        conn.execute(delete(device_t).where(device_t.c.account_id.in_(ids)))
        conn.execute(
            update(run_t)
            .where(run_t.c.id == run_id)
            .values(
                sessions_ended=run_t.c.sessions_ended + ended,
                emailed=run_t.c.emailed + len(mailed),
            )
        )

    app.engine.start_many_sync(
        password_recovery.NAME,
        mailed,
        actor=password_recovery.FORCED_RESET,
        end_journeys=END_REASON,
        in_tx=reset_accounts,
    )


def _finish(app: Services, run_id: uuid.UUID) -> dict[str, Any]:
    with app.engine.db.transaction() as conn:
        conn.execute(
            update(run_t)
            .where(run_t.c.id == run_id, run_t.c.finished_at.is_(None))
            .values(finished_at=app.engine.clock.now())
        )
        return dict(conn.execute(select(run_t).where(run_t.c.id == run_id)).one()._mapping)
