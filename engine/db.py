"""How the engine reaches its database.

Every statement runs as synchronous SQLAlchemy on threads that the event loop
awaits (`Database.run`). This is chosen by measurement (README, architecture):
through aiosqlite each SQLite statement costs ~10x the CPU of sync sqlite3, and
a whole sync transaction on one dedicated writer thread served 4x the
requests. So on SQLite all writes go through one writer thread, each in a
`BEGIN IMMEDIATE` transaction (a read-then-write transaction that starts with a
plain `BEGIN` fails with "database is locked" once another writer commits);
reads use a small pool of their own, since WAL lets readers run beside the
writer. On PostgreSQL (psycopg 3) a pool of threads, one pooled connection
each, serves reads and writes alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import URL, Engine, make_url

T = TypeVar("T")


def normalise_url(url: str | URL) -> URL:
    """Map a plain SQLAlchemy URL onto the sync driver the engine uses."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.drivername in ("sqlite+pysqlite", "sqlite+aiosqlite"):
        parsed = parsed.set(drivername="sqlite")
    if parsed.drivername not in ("sqlite", "postgresql+psycopg"):
        raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}")
    return parsed


# Switching a new file to WAL: up to 3000 tries, 10 ms apart (~30 s, the busy timeout).
WAL_SWITCH_TRIES = 3000
WAL_SWITCH_PAUSE_S = 0.01


def _use_wal(cursor: sqlite3.Cursor) -> None:
    """Put the database file in WAL mode, waiting for other connections if needed.

    On a brand-new file, the switch needs a lock that SQLite's busy handler does
    not wait for: a second process connecting meanwhile gets "database is locked"
    at once (seen when servers start together on a fresh file). Once the file is
    in WAL mode, the pragma is a no-op. Tries are counted rather than timed so a
    frozen clock (freezegun) cannot make this loop forever.
    """
    for attempt in range(WAL_SWITCH_TRIES):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == WAL_SWITCH_TRIES - 1:
                raise
            time.sleep(WAL_SWITCH_PAUSE_S)


class Database:
    """A database plus the threads that talk to it."""

    def __init__(
        self,
        url: str | URL,
        *,
        pool_size: int = 8,
        sqlite_synchronous: str = "NORMAL",
        sqlite_cache_mib: int = 16,
        echo: bool = False,
    ) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            self.engine = self._sqlite_engine(sqlite_synchronous, sqlite_cache_mib, pool_size, echo)
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="db-writer")
            self._readers = ThreadPoolExecutor(pool_size, thread_name_prefix="db-reader")
        else:
            self.engine = create_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                echo=echo,
            )
            self._writer = self._readers = ThreadPoolExecutor(pool_size, thread_name_prefix="db")

    @property
    def backend(self) -> str:
        """`sqlite` or `postgresql`."""
        return "sqlite" if self.is_sqlite else "postgresql"

    def _sqlite_engine(
        self, synchronous: str, cache_mib: int, pool_size: int, echo: bool
    ) -> Engine:
        database = self.url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            self.url,
            pool_size=pool_size + 1,
            max_overflow=0,
            connect_args={"check_same_thread": False, "timeout": 30},
            echo=echo,
        )

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the driver, decide when transactions begin.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            _use_wal(cursor)
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            # The 2 MiB default thrashes once indexes outgrow it: sweeping 100,000
            # attempts took 2.7 s of CPU with it and 2.3 s with 16 MiB (64 MiB: no
            # better). Per connection, so at most (pool_size + 1) x this.
            cursor.execute(f"PRAGMA cache_size=-{int(cache_mib) * 1024}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine

    @contextlib.contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self.engine.connect() as conn:
            if self.is_sqlite and not write:
                conn = conn.execution_options(sqlite_begin="DEFERRED")
            with conn.begin():
                yield conn

    async def run(self, fn: Callable[..., T], *args: Any, write: bool = True, **kw: Any) -> T:
        """Run blocking database work on the right thread and await its result."""
        executor = self._writer if write else self._readers
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(fn, *args, **kw))

    def close(self) -> None:
        """Stop the threads and close every pooled connection."""
        self._writer.shutdown(wait=True)
        if self._readers is not self._writer:
            self._readers.shutdown(wait=True)
        self.engine.dispose()
