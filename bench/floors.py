"""Floors outside the product (issue 17 §1): the cheapest versions of its work, same run.

The older floors (`bench.app`'s `/bench/noop` and `/bench/insert`) are
routes inside the product's own app: they share its middleware, its
`Database` and its writer thread, so whatever those cost is hidden in the
floor as well as in the figure. The floors here share nothing with the
product but the schema, the drivers and the server options:

- **bare INSERT** (`python -m bench.floors bare-insert --port N --database-url URL`):
  a Litestar app with no middleware at all (no host check, rate limit,
  security headers, access log, CSRF, OpenAPI) whose one route, `POST
  /api/recovery`, decodes the same JSON body and writes what the product's
  request path writes: the `attempt` row (same columns and values: flow,
  version, `requested`, timestamps, the 24 h deadline, the normalised
  address as subject, locale, the data object with the submitted address,
  client IP, user agent and queued delivery) and its `start` event row, in
  one transaction, through the product's own table definitions (so the same
  column types turn values into the same bytes). The driver settings are
  the product's: sync SQLAlchemy on SQLite through sqlite3 on one dedicated
  writer thread, WAL, `synchronous=NORMAL`, `foreign_keys=ON`, a 16 MiB page
  cache, `BEGIN IMMEDIATE`; on PostgreSQL psycopg 3 on a pool of 8 threads
  (the product's `db_pool_size`), one connection each. It answers 202
  `{"status": "accepted"}`. What it leaves out is exactly what the product
  adds: validation beyond NFKC + case-folding, the engine, the flow
  registry, the middleware stack, the pool checkout per transaction (each
  thread keeps its connection) and statements built per call (these are
  built once). That is the fair comparison for `POST /api/recovery`.
- **hello** (`python -m bench.floors hello --port N`): a Litestar app with no
  middleware answering `GET /hello` with `{"status": "ok"}` (a sync handler
  on the loop): the floor of any request through Litestar under uvicorn, and
  the fair comparison for `GET /health`, which does no more work than that
  but crosses the whole middleware stack.

Both run under uvicorn in their own process with the options `recovery
serve` passes (`UVICORN_OPTIONS`: uvloop and httptools picked by uvicorn's
"auto", one worker, access log off, no proxy headers, no server header), so
the process, the event loop and the HTTP parser are the product's.

- **SMTP over persistent connections** (`python -m bench.floors smtp --port P
  --count N --connections C`): plain aiosmtplib sends of rendered recovery
  emails (the dispatcher's own `recovery_email`, one distinct recipient per
  message, rendered before the clock starts) to the same SMTP sink, over C
  connections opened once and reused for every message, each taking the next
  message from one shared queue; a connection the server closed is opened
  again once (`SMTPServerDisconnected`). C is the number of sends the
  dispatcher runs at once (`MAX_CONCURRENT_SENDS`), so this is the most mail
  the dispatcher's concurrency could carry: the fair comparison for emails/s.
  With `--rate R` it sends open loop instead (message i is due at i/R
  seconds, and waits for a free connection if none is), writing when each
  was due to a file: the floor of time to inbox at that rate.

The process protocol of the SMTP floor is the old one's (`bench.dispatch`):
it prints `ready` once connected, and starts when it reads `go`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

from litestar import Litestar, Request, get, post
from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url

from bench.product import (
    FLOW,
    MAX_CONCURRENT_SENDS,
    REQUEST_TTL,
    START_EVENT,
    attempt_t,
    child_env,
    event_t,
    recovery_message,
)

T = TypeVar("T")

HELLO_PATH = "/hello"
INSERT_PATH = "/api/recovery"
# The product's defaults (RECOVERY_DB_POOL_SIZE, the SQLite page cache per connection).
PG_THREADS = 8
SQLITE_CACHE_MIB = 16
# The uvicorn options `recovery serve` passes (api/cli.py, _serve), one worker.
UVICORN_OPTIONS: dict[str, Any] = {
    "access_log": False,
    "log_config": None,
    "proxy_headers": False,
    "server_header": False,
    "timeout_graceful_shutdown": 10,
}
SMTP_TIMEOUT_S = 30.0


# -- the bare INSERT floor's database ------------------------------------------------


class FloorDatabase:
    """Sync SQLAlchemy with the product's driver settings, one kept connection per thread."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            self.engine = create_engine(
                parsed.set(drivername="sqlite"),
                connect_args={"check_same_thread": False, "timeout": 30},
            )

            @event.listens_for(self.engine, "connect")
            def _connect(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.isolation_level = None
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute("PRAGMA busy_timeout=30000")
                cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_MIB * 1024}")
                cursor.close()

            @event.listens_for(self.engine, "begin")
            def _begin(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

            threads = 1
        else:
            self.engine = create_engine(
                parsed.set(drivername="postgresql+psycopg"),
                pool_size=PG_THREADS,
                max_overflow=0,
            )
            threads = PG_THREADS
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="floor-db")
        self._local = threading.local()
        # Built once: SQLAlchemy compiles each once and caches it.
        self._insert_attempt = attempt_t.insert()
        self._insert_event = event_t.insert()

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.engine.connect()
        return conn

    def insert_request(
        self, subject: str, submitted: str, client_ip: str | None, user_agent: str
    ) -> None:
        """The two rows `POST /api/recovery` writes, in one transaction."""
        now = datetime.now(UTC)
        attempt_id = uuid.uuid4()
        conn = self._connection()
        with conn.begin():
            conn.execute(
                self._insert_attempt,
                {
                    "id": attempt_id,
                    "flow": FLOW,
                    "flow_version": 1,
                    "state": "requested",
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                    "deadline_at": now + REQUEST_TTL,
                    "lease_until": None,
                    "subject": subject,
                    "data": {
                        "email_submitted": submitted,
                        "locale": "en",
                        "client_ip": client_ip,
                        "user_agent": user_agent,
                        "delivery": {
                            "status": "queued",
                            "tries": 0,
                            "last_error": None,
                            "sent_at": None,
                        },
                    },
                },
            )
            conn.execute(
                self._insert_event,
                {
                    "attempt_id": attempt_id,
                    "seq": 1,
                    "event": START_EVENT,
                    "from_state": None,
                    "to_state": "requested",
                    "actor": "person",
                    "at": now,
                    "accepted": True,
                    "detail": {"client_ip": client_ip},
                },
            )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, fn, *args)


# -- the two apps ---------------------------------------------------------------------


def bare_insert_app(database_url: str) -> Litestar:
    """Litestar, no middleware: POST /api/recovery does the product's two INSERTs, answers 202."""
    db = FloorDatabase(database_url)

    @post(INSERT_PATH, status_code=202)
    async def request_recovery(
        request: Request[Any, Any, Any], data: dict[str, Any]
    ) -> dict[str, str]:
        submitted = str(data["email"]).strip()
        subject = unicodedata.normalize("NFKC", submitted).casefold()
        client_ip = request.client.host if request.client else None
        user_agent = (request.headers.get("user-agent") or "")[:256]
        await db.run(db.insert_request, subject, submitted[:320], client_ip, user_agent)
        return {"status": "accepted"}

    return Litestar([request_recovery], openapi_config=None, logging_config=None, debug=False)


def hello_app() -> Litestar:
    """Litestar, no middleware: GET /hello answers a tiny JSON object."""

    @get(HELLO_PATH, sync_to_thread=False)
    def hello() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar([hello], openapi_config=None, logging_config=None, debug=False)


def _serve(app: Litestar, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, **UVICORN_OPTIONS)


def bare_insert_program(database_url: str) -> Callable[[int], list[str]]:
    """The argv of a bare INSERT floor server on a port (for `BenchServer(program=...)`)."""
    return lambda port: [
        sys.executable,
        "-m",
        "bench.floors",
        "bare-insert",
        "--port",
        str(port),
        "--database-url",
        database_url,
    ]


def hello_program(port: int) -> list[str]:
    """The argv of a hello floor server on a port (for `BenchServer(program=...)`)."""
    return [sys.executable, "-m", "bench.floors", "hello", "--port", str(port)]


# -- the SMTP floor -------------------------------------------------------------------


class _Connection:
    """One persistent aiosmtplib connection, opened again once if the server closed it."""

    def __init__(self, port: int) -> None:
        import aiosmtplib

        self._aiosmtplib = aiosmtplib
        self.smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=port,
            local_hostname="localhost",
            timeout=SMTP_TIMEOUT_S,
            start_tls=False,
        )

    async def open(self) -> None:
        await self.smtp.connect()

    async def send(self, message: EmailMessage, sender: str, recipient: str) -> None:
        try:
            if not self.smtp.is_connected:
                await self.smtp.connect()
            await self.smtp.send_message(message, sender=sender, recipients=[recipient])
        except self._aiosmtplib.SMTPServerDisconnected:
            await self.smtp.connect()
            await self.smtp.send_message(message, sender=sender, recipients=[recipient])

    async def close(self) -> None:
        if self.smtp.is_connected:
            await self.smtp.quit()


def _messages(prefix: str, count: int) -> list[tuple[str, EmailMessage]]:
    recipients = [f"{prefix}{i:07d}@example.com" for i in range(count)]
    return [(to, recovery_message(to)) for to in recipients]


async def _send_closed_loop(
    connections: list[_Connection], messages: list[tuple[str, EmailMessage]]
) -> None:
    queue = list(reversed(messages))

    async def drain(conn: _Connection) -> None:
        while queue:
            to, message = queue.pop()
            await conn.send(message, "no-reply@localhost", to)

    await asyncio.gather(*(drain(c) for c in connections))


async def _send_open_loop(
    connections: list[_Connection], messages: list[tuple[str, EmailMessage]], rate: float
) -> dict[str, float]:
    """Message i is due at i/rate s; returns each recipient's due time (time.time())."""
    queue: asyncio.Queue[tuple[str, EmailMessage] | None] = asyncio.Queue()
    due: dict[str, float] = {}

    async def drain(conn: _Connection) -> None:
        while (item := await queue.get()) is not None:
            await conn.send(item[1], "no-reply@localhost", item[0])

    workers = [asyncio.create_task(drain(c)) for c in connections]
    start_wall, start = time.time(), time.perf_counter()
    for i, item in enumerate(messages):
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        due[item[0]] = start_wall + i / rate
        queue.put_nowait(item)
    for _ in connections:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return due


async def _smtp_main(args: argparse.Namespace) -> int:
    messages = _messages(args.prefix, args.count)
    connections = [_Connection(args.port) for _ in range(args.connections)]
    await asyncio.gather(*(c.open() for c in connections))
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        return 1
    if args.rate:
        due = await _send_open_loop(connections, messages, args.rate)
        Path(args.times_out).write_text(json.dumps(due))
    else:
        await _send_closed_loop(connections, messages)
    await asyncio.gather(*(c.close() for c in connections))
    return 0


class SmtpFloor:
    """Parent side of the SMTP floor: sender processes started, connected, then released at once."""

    def __init__(
        self,
        sink_port: int,
        *,
        senders: int,
        count: int,
        connections: int = MAX_CONCURRENT_SENDS,
        rate: float | None = None,
        times_dir: Path | None = None,
        tag: str = "f",
    ) -> None:
        self.count = count
        self.rate = rate
        self.times_paths: list[Path] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        for n in range(senders):
            share = count // senders + (1 if n < count % senders else 0)
            cmd = [
                sys.executable,
                "-m",
                "bench.floors",
                "smtp",
                "--port",
                str(sink_port),
                "--count",
                str(share),
                "--connections",
                str(connections),
                "--prefix",
                f"{tag}{n}x",
            ]
            if rate is not None:
                assert times_dir is not None
                path = times_dir / f"smtp-floor-{tag}-{n}.json"
                self.times_paths.append(path)
                cmd += ["--rate", str(rate / senders), "--times-out", str(path)]
            self.procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=Path(__file__).resolve().parent.parent,
                    env=child_env(),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
        for proc in self.procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                self.kill()
                raise RuntimeError("SMTP floor sender did not start")

    def go(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()

    def wait(self, timeout: float = 600) -> None:
        for proc in self.procs:
            if proc.wait(timeout=timeout) != 0:
                raise RuntimeError("SMTP floor sender failed")

    def due_times(self) -> dict[str, float]:
        """Open loop: when each recipient's message was due (time.time())."""
        due: dict[str, float] = {}
        for path in self.times_paths:
            due.update(json.loads(path.read_text()))
        return due

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def smtp_floor_seconds(
    sink: Any, *, senders: int, count: int, connections: int = MAX_CONCURRENT_SENDS
) -> float:
    """Seconds for `senders` processes to hand `count` recovery emails to the sink, persistently."""
    floor = SmtpFloor(sink.port, senders=senders, count=count, connections=connections)
    try:
        before = len(sink.receipts)
        started = time.perf_counter()
        floor.go()
        sink.wait_for(before + count, timeout=600)
        elapsed = time.perf_counter() - started
        floor.wait()
    finally:
        floor.kill()
    return elapsed


# -- the command line -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floors", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    bare = commands.add_parser("bare-insert", help="serve the bare INSERT floor")
    bare.add_argument("--host", default="127.0.0.1")
    bare.add_argument("--port", type=int, required=True)
    bare.add_argument("--database-url", required=True)
    hello = commands.add_parser("hello", help="serve the bare hello floor")
    hello.add_argument("--host", default="127.0.0.1")
    hello.add_argument("--port", type=int, required=True)
    smtp = commands.add_parser(
        "smtp", help="send N recovery emails over persistent connections once 'go' is read"
    )
    smtp.add_argument("--port", type=int, required=True)
    smtp.add_argument("--count", type=int, required=True)
    smtp.add_argument("--connections", type=int, default=MAX_CONCURRENT_SENDS)
    smtp.add_argument("--prefix", default="f", help="recipients are PREFIX0000000@example.com...")
    smtp.add_argument("--rate", type=float, help="send open loop at this many messages/s")
    smtp.add_argument("--times-out", help="with --rate: write each recipient's due time here")
    args = parser.parse_args(argv)
    if args.command == "bare-insert":
        _serve(bare_insert_app(args.database_url), args.host, args.port)
        return 0
    if args.command == "hello":
        _serve(hello_app(), args.host, args.port)
        return 0
    if args.rate and not args.times_out:
        parser.error("--rate needs --times-out")
    return asyncio.run(_smtp_main(args))


if __name__ == "__main__":
    raise SystemExit(main())
