"""What the benchmarks run against: fresh databases, one PostgreSQL server, a real SMTP sink.

`BenchEnv` is opened once per `python -m bench` run. It starts a throwaway
PostgreSQL server from the installed binaries (the test suite's
`running_postgres`, which handles running as root) the first time a figure
asks for one, hands out fresh databases migrated to the product's real
schema, and bulk-loads attempts fast (executemany on SQLite, COPY on
PostgreSQL) so a million rows take seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text

from api import migrate
from bench.harness import Sizes
from engine import Database
from engine.core import attempt_t, event_t
from tests.support.postgres import PostgresServer, find_pg_bin, running_postgres
from tests.support.smtp import SmtpSink

BACKENDS = ("sqlite", "postgresql")

ATTEMPT_COLUMNS = (
    "id",
    "flow",
    "flow_version",
    "state",
    "version",
    "created_at",
    "updated_at",
    "deadline_at",
    "lease_until",
    "subject",
    "data",
)
EVENT_COLUMNS = (
    "attempt_id",
    "seq",
    "event",
    "from_state",
    "to_state",
    "actor",
    "at",
    "accepted",
    "detail",
)


class BenchEnv:
    """Resources shared by every figure of one run; close with `close()` (or `with`)."""

    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes
        self._stack = contextlib.ExitStack()
        self.tmp = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        self._pg: PostgresServer | None = None
        self._count = 0
        # What one section measured that a later section of the same run builds on
        # (the request path's capacity, for the mail figures), by name.
        self.measured: dict[str, Any] = {}

    # -- lifetime -------------------------------------------------------------

    def __enter__(self) -> BenchEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    # -- PostgreSQL --------------------------------------------------------------

    @property
    def has_postgresql(self) -> bool:
        return find_pg_bin() is not None

    @property
    def pg(self) -> PostgresServer:
        """The run's PostgreSQL server, started on first use."""
        if self._pg is None:
            # Its own directory (not under ours): the server runs as `postgres`.
            self._pg = self._stack.enter_context(running_postgres())
        return self._pg

    def postgresql_version(self) -> str | None:
        if not self.has_postgresql:
            return None
        engine = create_engine(self._driver_url(self.pg.url("postgres")))
        try:
            with engine.connect() as conn:
                return str(conn.execute(text("SHOW server_version")).scalar_one())
        finally:
            engine.dispose()

    @staticmethod
    def _driver_url(url: str) -> str:
        return url.replace("postgresql://", "postgresql+psycopg://", 1)

    # -- databases ----------------------------------------------------------------

    def fresh_url(self, backend: str, label: str) -> str:
        """A new, empty database of `backend` migrated to the product's schema."""
        self._count += 1
        name = f"{label}_{self._count}"
        if backend == "sqlite":
            url = f"sqlite:///{self.tmp / (name + '.db')}"
        elif backend == "postgresql":
            engine = create_engine(
                self._driver_url(self.pg.url("postgres")), isolation_level="AUTOCOMMIT"
            )
            try:
                with engine.connect() as conn:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
            finally:
                engine.dispose()
            url = self.pg.url(name)
        else:
            raise ValueError(f"unknown backend {backend!r}")
        migrate.upgrade(url)
        return url

    def clone(self, url: str, label: str) -> str:
        """A copy of a database nobody is connected to (a loaded template), under a new name.

        Loading a large table once and copying it per run is far cheaper than
        loading it again: a file copy on SQLite, `CREATE DATABASE ... TEMPLATE`
        on PostgreSQL.
        """
        self._count += 1
        name = f"{label}_{self._count}"
        if url.startswith("sqlite:"):
            source = Path(url.split("///", 1)[1])
            target = self.tmp / (name + ".db")
            shutil.copyfile(source, target)
            return f"sqlite:///{target}"
        template = url.rsplit("/", 1)[1]
        engine = create_engine(
            self._driver_url(self.pg.url("postgres")), isolation_level="AUTOCOMMIT"
        )
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        finally:
            engine.dispose()
        return self.pg.url(name)

    def drop(self, url: str) -> None:
        """Remove a database made by `fresh_url` or `clone` (its connections must be closed)."""
        if url.startswith("sqlite:"):
            path = Path(url.split("///", 1)[1])
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            return
        name = url.rsplit("/", 1)[1]
        engine = create_engine(
            self._driver_url(self.pg.url("postgres")), isolation_level="AUTOCOMMIT"
        )
        try:
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        finally:
            engine.dispose()

    @contextlib.contextmanager
    def database(self, backend: str, label: str, **kw: Any) -> Iterator[Database]:
        """A fresh database as the product's `Database`, closed afterwards."""
        db = Database(self.fresh_url(backend, label), **kw)
        try:
            yield db
        finally:
            db.close()

    def smtp_sink(self, *, keep_messages: bool = True) -> SmtpSink:
        """A started loopback SMTP server, stopped when the run ends.

        With `keep_messages=False` it records only receipts (time, envelope), not
        parsed messages: cheaper per message, for the figures that count and time mail.
        """
        sink = SmtpSink(keep_messages=keep_messages).start()
        self._stack.callback(sink.stop)
        return sink


# -- bulk loading ------------------------------------------------------------------


def attempt_row(
    *,
    state: str,
    created_at: datetime,
    subject: str,
    deadline_at: datetime | None,
    data: dict[str, Any],
    flow: str = "password_recovery",
    version: int = 1,
    attempt_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """An attempt row as the engine would have written it."""
    return {
        "id": attempt_id or uuid.uuid4(),
        "flow": flow,
        "flow_version": 1,
        "state": state,
        "version": version,
        "created_at": created_at,
        "updated_at": created_at,
        "deadline_at": deadline_at,
        "lease_until": None,
        "subject": subject,
        "data": {"locale": "en", **data},
    }


def start_event(row: dict[str, Any]) -> dict[str, Any]:
    """The `start` event the engine logs when it creates an attempt."""
    return {
        "attempt_id": row["id"],
        "seq": 1,
        "event": "start",
        "from_state": None,
        "to_state": row["state"],
        "actor": "person",
        "at": row["created_at"],
        "accepted": True,
        "detail": {},
    }


def bulk_insert(
    db: Database,
    attempts: Iterable[dict[str, Any]],
    events: Iterable[dict[str, Any]] = (),
    *,
    chunk: int = 50_000,
    rebuild_indexes: bool = True,
) -> None:
    """Load attempt and event rows fast: executemany on SQLite, COPY on PostgreSQL.

    With `rebuild_indexes`, the attempt table's secondary indexes are dropped
    for the load and built again after it (what any bulk load does), from the
    same `Index` objects the migrations create, so the schema ends up exactly
    as it was. Leave it off while other processes use the database.
    """
    if rebuild_indexes:
        with db.transaction() as conn:
            for index in attempt_t.indexes:
                index.drop(conn)
    if db.is_sqlite:
        _sqlite_insert(db, attempt_t, attempts, chunk)
        _sqlite_insert(db, event_t, events, chunk)
    else:
        _pg_copy(db, "attempt", ATTEMPT_COLUMNS, attempts, ("data",))
        _pg_copy(db, "attempt_event", EVENT_COLUMNS, events, ("detail",))
    if rebuild_indexes:
        with db.transaction() as conn:
            for index in attempt_t.indexes:
                index.create(conn)
    if not db.is_sqlite:
        with db.transaction() as conn:
            # Fresh statistics, as autovacuum gives a table that grew this much.
            conn.execute(text("ANALYZE attempt"))
            conn.execute(text("ANALYZE attempt_event"))
    # No ANALYZE on SQLite: it never gathers statistics by itself and the
    # product does not ask for them, so the planner sees what it would in production.


def _chunks(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _sqlite_insert(db: Database, table: Any, rows: Iterable[dict[str, Any]], chunk: int) -> None:
    # The column types' own bind processors turn values into exactly the bytes
    # SQLAlchemy stores (UUID as hex, datetime as text, JSON as text); sqlite3's
    # executemany then skips SQLAlchemy's per-row work, ~5x faster.
    dialect = db.engine.dialect
    columns = [c for c in table.columns if c.name != "id" or table is attempt_t]
    names = [c.name for c in columns]
    processors = [c.type.dialect_impl(dialect).bind_processor(dialect) for c in columns]
    sql = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        # A big page cache for the load only (this connection is closed after it).
        cursor.execute("PRAGMA cache_size=-500000")
        for batch in _chunks(rows, chunk):
            values = [
                tuple(
                    p(row.get(n)) if p is not None else row.get(n)
                    for n, p in zip(names, processors, strict=True)
                )
                for row in batch
            ]
            cursor.execute("BEGIN IMMEDIATE")
            cursor.executemany(sql, values)
            cursor.execute("COMMIT")
        cursor.execute("PRAGMA cache_size=-2000")
    finally:
        raw.close()


def _pg_copy(
    db: Database,
    table: str,
    columns: tuple[str, ...],
    rows: Iterable[dict[str, Any]],
    json_columns: tuple[str, ...],
) -> None:
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        names = ", ".join(columns)
        with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(
                    [json.dumps(row[c]) if c in json_columns else row[c] for c in columns]
                )
        raw.commit()
    finally:
        raw.close()


def insert_accounts(db: Database, emails: Iterable[str], password_hash: str) -> None:
    """Accounts for the given (already normalised) addresses, all with one password hash.

    Hashing each password would cost ~0.1 s of Argon2 apiece; the request
    and dispatch paths never verify it, so one real hash shared is honest.
    """
    from api.accounts.models import Account

    now = datetime.now(UTC)
    rows = [
        {
            "id": uuid.uuid4(),
            "email": email,
            "email_normalized": email,
            "name": f"Person {i}",
            "birth_date": None,
            "locale": "en",
            "password_hash": password_hash,
            "password_history": [password_hash],
            "disabled": False,
            "created_at": now,
            "password_changed_at": now,
        }
        for i, email in enumerate(emails)
    ]
    if rows:
        with db.transaction() as conn:
            conn.execute(insert(Account.__table__), rows)


def opened_link(engine: Any, attempt_id: uuid.UUID) -> None:
    """Move a `requested` attempt through `dispatch` and `open_link` as the flow does: a link
    stored for it, the email accepted, the link opened (a realistic timeline to read back)."""
    from api.accounts import links
    from api.accounts.models import Account

    now = datetime.now(UTC)
    digest = uuid.uuid4().hex * 2
    account_id = uuid.uuid4()
    links.store(engine.db, attempt_id, account_id, digest, uuid.uuid4().hex * 2, now)
    someone = Account(
        id=account_id,
        email="someone@example.com",
        email_normalized="someone@example.com",
        name="Someone",
        password_hash="-",
        created_at=now,
        password_changed_at=now,
    )
    sent = {"status": "sent", "tries": 1, "last_error": None, "sent_at": now.isoformat()}
    engine.fire_sync(
        attempt_id,
        "dispatch",
        params={"account": someone, "sent": True, "link_digest": digest},
        data={"delivery": sent},
    )
    with engine.db.transaction(write=False) as conn:
        link = links.Link.from_row(
            conn.execute(
                links.token_t.select().where(links.token_t.c.attempt_id == attempt_id)
            ).one()
        )
    engine.fire_sync(
        attempt_id,
        "open_link",
        actor="person",
        params={"link": link},
        detail={"method": "GET", "repeat": False, "suspected_automated": False},
    )
