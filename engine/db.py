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
import os
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


class Database:
    """A database plus the threads that talk to it."""

    def __init__(
        self,
        url: str | URL,
        *,
        pool_size: int = 8,
        sqlite_synchronous: str = "NORMAL",
        echo: bool = False,
    ) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            self.engine = self._sqlite_engine(sqlite_synchronous, pool_size, echo)
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

    def _sqlite_engine(self, synchronous: str, pool_size: int, echo: bool) -> Engine:
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
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
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


def default_sqlite_url(base: str | os.PathLike[str] = "var") -> str:
    """The embedded default: a SQLite file under ./var/."""
    return f"sqlite:///{Path(base) / 'recovery.db'}"
