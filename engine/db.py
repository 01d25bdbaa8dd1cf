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
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError

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


# A transaction that reads then writes must hold the write lock from its start (see above).
_BEGIN_WRITE = "BEGIN IMMEDIATE"
_BEGIN_READ = "BEGIN DEFERRED"


class Lane:
    """Threads taking database work from one queue, each result handed back to the
    event loop that asked for it.

    What `loop.run_in_executor` does with a `ThreadPoolExecutor`, without its
    machinery (a concurrent future with its condition, a semaphore, chained
    callbacks): measured at about a third of the CPU per call, and the request
    path makes one call per request. Unlike the executor, work once queued runs
    even if whoever awaited it was cancelled (it may already be running anyway);
    its result is then dropped.
    """

    def __init__(self, threads: int, name: str, initializer: Callable[[], None]) -> None:
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._initializer = initializer
        self._closed = False
        # `submit_together`'s waiting items, per function that takes them all at once.
        self._together: dict[Callable[..., Any], list[_Item]] = {}
        self._together_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}_{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue `fn`; a future of the running loop that gets its result or its exception.

        After `shutdown`, RuntimeError (as an executor raises): no thread would run it.
        """
        if self._closed:
            raise RuntimeError("cannot schedule new work after shutdown")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, loop, future))
        return future

    def submit_together(
        self, fn_many: Callable[[list[Any]], list[Any]], item: Any, limit: int
    ) -> asyncio.Future[Any]:
        """Queue `item` for `fn_many`, which takes a list of items and gives one outcome
        for each, in order (an exception instance is raised to that item's awaiter).

        Items that arrive while the threads are busy wait and go together, up to `limit`
        at a time: the busier the lane, the fewer calls (a group commit), and an item that
        finds the lane idle goes alone at once.
        """
        if self._closed:
            raise RuntimeError("cannot schedule new work after shutdown")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._together_lock:
            waiting = self._together.setdefault(fn_many, [])
            waiting.append((item, loop, future))
            first = len(waiting) == 1
        if first:
            self._queue.put((functools.partial(self._run_together, fn_many, limit), None, None))
        return future

    def _run_together(self, fn_many: Callable[[list[Any]], list[Any]], limit: int) -> None:
        with self._together_lock:
            waiting = self._together.pop(fn_many)
            if len(waiting) > limit:
                self._together[fn_many] = waiting[limit:]
                waiting = waiting[:limit]
                self._queue.put((functools.partial(self._run_together, fn_many, limit), None, None))
        try:
            outcomes = fn_many([item for item, _, _ in waiting])
            if len(outcomes) != len(waiting):
                raise RuntimeError(f"{fn_many!r} gave {len(outcomes)} outcomes for {len(waiting)}")
        except BaseException as exc:
            for _, loop, future in waiting:
                _hand_back(loop, future, None, exc)
            return
        for (_, loop, future), outcome in zip(waiting, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                _hand_back(loop, future, None, outcome)
            else:
                _hand_back(loop, future, outcome, None)

    def _work(self) -> None:
        self._initializer()
        while (item := self._queue.get()) is not None:
            fn, loop, future = item
            if future is None:  # a group of `submit_together` items: it hands back itself
                fn()
                del item, fn
                continue
            try:
                result = fn()
            except BaseException as exc:  # handed to the awaiting task, as an executor does
                _hand_back(loop, future, None, exc)
            else:
                _hand_back(loop, future, result, None)
            del item, fn, loop, future

    def shutdown(self) -> None:
        """Let queued work finish, then stop the threads."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()


_Work = tuple[Callable[[], Any], asyncio.AbstractEventLoop | None, "asyncio.Future[Any] | None"]
_Item = tuple[Any, asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


def _hand_back(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    exc: BaseException | None,
) -> None:
    def settle() -> None:
        if future.cancelled():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    # A loop closed meanwhile has nobody waiting any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle)


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
        # Each of this database's own threads keeps one connection for its life
        # (`_kept`); other threads (the command line, tests) check one out per
        # transaction. A disconnect seen anywhere bumps `_generation`, and each kept
        # connection older than that is replaced before its next transaction.
        self._local = threading.local()
        self._kept: list[Connection] = []
        self._kept_lock = threading.Lock()
        self._generation = 0
        if self.is_sqlite:
            self.engine = self._sqlite_engine(sqlite_synchronous, sqlite_cache_mib, pool_size, echo)
            self._writer = self._executor(1, "db-writer")
            self._readers = self._executor(pool_size, "db-reader")
        else:
            self.engine = create_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=pool_size,
                # Checked on checkout: connections the kept ones replace, and those
                # of threads that check one out per transaction.
                pool_pre_ping=True,
                echo=echo,
            )
            self._writer = self._readers = self._executor(pool_size, "db")

    def _executor(self, threads: int, name: str) -> Lane:
        return Lane(threads, name, initializer=self._keeps)

    def _keeps(self) -> None:
        """Run first in each of this database's threads: it keeps a connection."""
        self._local.keeps = True

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
            # The writer's and the readers' kept connections, and as many again for
            # threads that check one out per transaction.
            pool_size=pool_size + 1,
            max_overflow=pool_size,
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
            # better). Per connection, so at most (2 x pool_size + 1) x this.
            cursor.execute(f"PRAGMA cache_size=-{int(cache_mib) * 1024}")
            cursor.close()

        return engine

    @contextlib.contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        kept = self._kept_connection()
        if kept is None:
            with self.engine.connect() as conn, self._begun(conn, write) as inner:
                yield inner
            return
        try:
            with self._begun(kept, write) as conn:
                yield conn
        except DBAPIError as exc:
            if exc.connection_invalidated:
                # The server went away: every kept connection is suspect now.
                self._generation += 1
            raise

    @contextlib.contextmanager
    def _begun(self, conn: Connection, write: bool) -> Iterator[Connection]:
        with conn.begin():
            if self.is_sqlite:
                # SQLAlchemy leaves beginning to the driver, which (isolation_level None)
                # begins nothing: the transaction starts here. Straight to the driver,
                # not through an engine "begin" event: that one statement then cost
                # about as much CPU as inserting an attempt, and any such event makes
                # SQLAlchemy dispatch events around every later statement too.
                driver = conn.connection.driver_connection
                driver.execute(_BEGIN_WRITE if write else _BEGIN_READ)  # type: ignore[union-attr]
            yield conn

    def _kept_connection(self) -> Connection | None:
        """This thread's kept connection, opened (again) if needed; None in a thread that
        keeps none, or while it is already in a transaction (a nested one gets its own).

        Measured: checking a connection out of SQLAlchemy's pool and back for each
        transaction cost about a tenth of the CPU of creating an attempt on SQLite,
        and on PostgreSQL the pre-ping added a round trip to every transaction.
        """
        local = self._local
        if not getattr(local, "keeps", False):
            return None
        conn: Connection | None = getattr(local, "conn", None)
        if conn is not None and (conn.closed or local.generation != self._generation):
            self._forget(conn)
            conn = None
        if conn is None:
            conn = self.engine.connect()
            local.conn, local.generation = conn, self._generation
            with self._kept_lock:
                self._kept.append(conn)
        if conn.in_transaction():
            return None
        return conn

    def _forget(self, conn: Connection) -> None:
        with self._kept_lock:
            if conn in self._kept:
                self._kept.remove(conn)
        with contextlib.suppress(Exception):  # it may be broken already
            conn.close()
        self._local.conn = None

    async def run(self, fn: Callable[..., T], *args: Any, write: bool = True, **kw: Any) -> T:
        """Run blocking database work on the right thread and await its result."""
        lane = self._writer if write else self._readers
        return await lane.submit(functools.partial(fn, *args, **kw) if args or kw else fn)

    async def run_together(
        self,
        fn_many: Callable[[list[Any]], list[Any]],
        item: Any,
        *,
        limit: int,
        write: bool = True,
    ) -> Any:
        """`item`'s outcome from `fn_many`, called with it and whatever other items are
        waiting for the same function (`Lane.submit_together`)."""
        lane = self._writer if write else self._readers
        return await lane.submit_together(fn_many, item, limit)

    def close(self) -> None:
        """Stop the threads and close every pooled connection."""
        self._writer.shutdown()
        if self._readers is not self._writer:
            self._readers.shutdown()
        with self._kept_lock:
            kept, self._kept = self._kept, []
        for conn in kept:
            with contextlib.suppress(Exception):
                conn.close()
        self.engine.dispose()
