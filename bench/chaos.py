"""The chaos run: several processes on one PostgreSQL, faults, and an account of every request.

`python -m bench.chaos` starts, all on loopback, a throwaway PostgreSQL
server, a Redis server (the shared rate-limit store), a real SMTP sink, two
API processes (`recovery serve --no-dispatcher`) and two mail dispatchers
(`recovery worker`). It sends 2,000 "Forgot password?" requests over HTTP,
paced and a bounded number at once, each for its own address (some with an
account, some without, some typed in another case), and meanwhile:

1. kills one dispatcher with SIGKILL and starts it again;
2. takes the SMTP sink down for 10 seconds and brings it back;
3. restarts PostgreSQL.

Only a 202 counts as accepted. A request that failed (a 5xx or a broken
connection while PostgreSQL restarts) is retried by the client, against the
other API process, as a real front end would; every try carries its own
request id in its User-Agent, which the product stores on the attempt, so
each attempt can be traced to the try that made it.

When the queue has drained (no attempt left in `requested`, within a bounded
time) it accounts for every accepted request:

- it has exactly one attempt (none: `lost`);
- that attempt's state is explained by its event log: the first event is
  `start` into the initial state, each accepted event leaves the state the
  previous one entered through a transition the flow defines, refused events
  change nothing, and the last state reached is the stored one;
- every attempt that reached `emailed` had its email arrive at the sink, to
  the address stored on its account (none arrived: `lost`; more than one
  copy: `duplicates`, which at-least-once delivery allows and this reports);
- no email went to an address without an account, or to another account
  than the attempt's (`wrong_recipient`);
- no attempt is left in `requested` (`stuck`).

It prints the accounting and writes `bench/chaos.json` with the keys
`accepted, attempts, lost, stuck, duplicates, wrong_recipient` and a
`details` object (requests, retries, states, faults, timings). The exit
status is 0 when nothing was lost, stuck, misdirected or unexplained.

The test suite runs the same scenario smaller (`Scenario.small()`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine as SqlEngine
from sqlalchemy import create_engine, func, insert, select, text

from api.accounts.addresses import normalise_email
from api.accounts.models import Account, RecoveryToken
from api.accounts.passwords import Argon2Hasher
from api.accounts.tokens import token_hash
from api.support.reference import support_reference
from bench.harness import percentile
from engine.clock import SystemClock
from engine.core import START_EVENT, attempt_t, event_t
from engine.db import normalise_url
from engine.flow import FlowSpec
from flows import registry
from flows.password_recovery import NAME
from tests.support.postgres import PostgresServer, free_port, running_postgres
from tests.support.redis import RedisServer, running_redis
from tests.support.service import (
    RunningService,
    command_env,
    recovery_command,
    run_recovery,
    start_service,
)
from tests.support.smtp import SmtpSink

OUT = Path(__file__).with_name("chaos.json")
DATABASE = "chaos"
USER_AGENT = "recovery-chaos/1 (request {request}; try {attempt})"
_USER_AGENT_RE = re.compile(r"^recovery-chaos/1 \(request (\d+); try (\d+)\)$")
# The support reference the recovery email carries (identity.support_reference).
_REFERENCE_RE = re.compile(r"\b([A-Z2-7]{4}-[A-Z2-7]{4})\b")
_LINK_TOKEN_RE = re.compile(r"/recovery/reset\?token=([A-Za-z0-9_-]+)")
account_t = Account.__table__
token_t = RecoveryToken.__table__
# What `recovery worker` logs once its dispatcher runs.
WORKER_READY = b"mail worker started"
READY_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class Scenario:
    """What one chaos run does; the defaults are issue 7's full run."""

    requests: int = 2000
    # Share of requests whose address has an account; a few of those are typed
    # in upper case, so mail must still go to the stored spelling.
    known_share: float = 0.6
    uppercase_share: float = 0.1
    concurrency: int = 16
    # Requests are paced so the faults land while traffic flows.
    requests_per_second: float = 40.0
    # When each fault starts, as a share of the requests sent so far.
    kill_dispatcher_at: float = 0.2
    # The killed dispatcher stays down at least this long, and most of a lease
    # (long enough to tell its claims from the survivor's).
    dispatcher_down_seconds: float = 3.0
    smtp_down_at: float = 0.35
    smtp_down_seconds: float = 10.0
    # What the mail server takes to answer (see MailRelay).
    smtp_latency_seconds: float = 0.15
    postgres_restart_at: float = 0.7
    # Client side: how long one try may take, and how long a request keeps retrying.
    try_timeout_seconds: float = 10.0
    request_give_up_seconds: float = 120.0
    drain_timeout_seconds: float = 240.0
    # Product settings that matter under faults. A short lease brings a killed
    # dispatcher's claims back sooner; 8 tries from 1 s cover ~2 minutes of outage.
    dispatch_lease_seconds: int = 10
    # At most half the lease (the product insists), and ample for a loopback relay.
    mail_timeout_seconds: float = 2.0
    mail_max_tries: int = 8
    mail_retry_base_seconds: float = 1.0
    seed: int = 7

    @classmethod
    def small(cls) -> Scenario:
        """The test suite's version: a few hundred requests, one fault of each kind, shorter."""
        return cls(
            requests=300,
            requests_per_second=25.0,
            kill_dispatcher_at=0.15,
            dispatcher_down_seconds=1.0,
            smtp_down_at=0.3,
            smtp_down_seconds=3.0,
            postgres_restart_at=0.65,
            drain_timeout_seconds=90.0,
            dispatch_lease_seconds=5,
        )


# -- what the client saw ---------------------------------------------------------


@dataclass
class Try:
    """One HTTP try of a request."""

    number: int
    api: int
    outcome: str  # "202", another status code, or the transport error's type
    seconds: float
    at: float  # when it started, in seconds since the topology was up


@dataclass
class Request:
    """One "Forgot password?" request and its tries."""

    index: int
    address: str
    known: bool
    tries: list[Try] = field(default_factory=list)

    @property
    def accepted_try(self) -> int | None:
        for t in self.tries:
            if t.outcome == "202":
                return t.number
        return None


def plan_requests(scenario: Scenario) -> list[Request]:
    """Every request of the run, each for its own address (deterministic from the seed)."""
    rng = random.Random(scenario.seed)
    run = uuid.uuid4().hex[:6]
    requests = []
    for i in range(scenario.requests):
        known = rng.random() < scenario.known_share
        domain = "known.example.com" if known else "unknown.example.com"
        address = f"chaos-{run}-{i:05d}@{domain}"
        if known and rng.random() < scenario.uppercase_share:
            address = address.upper()
        requests.append(Request(i, address, known))
    return requests


# -- the processes ---------------------------------------------------------------


class Dispatcher:
    """A `recovery worker` subprocess; its output goes to a log file in the work dir."""

    def __init__(self, name: str, env: Mapping[str, str], cwd: Path) -> None:
        self.name = name
        self.env = dict(env)
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.exits: list[int] = []

    @property
    def log_path(self) -> Path:
        return self.cwd / f"{self.name}.log"

    def start(self, ready_timeout: float = READY_TIMEOUT_S) -> float:
        """Start it and wait until it says it works (bounded); the seconds that took.

        On a busy machine a Python process can take several seconds to import
        and migrate: a fault aimed at a dispatcher that has not started yet
        would prove nothing.
        """
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        began = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                recovery_command("worker"),
                env=command_env(self.env),
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        while True:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                if WORKER_READY in log.read():
                    return time.monotonic() - began
            status = self.process.poll()
            if status is not None:
                raise RuntimeError(f"{self.name} exited with status {status} before it was ready")
            if time.monotonic() - began > ready_timeout:
                raise RuntimeError(f"{self.name} was not ready within {ready_timeout} s")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no chance to finish its batch or release its leases."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.exits.append(self.process.wait(10))

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and the exit status (killed, and the status recorded, if it hangs)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        status = self.process.returncode
        self.exits.append(status)
        return status


class MailRelay:
    """A TCP relay in front of the sink that answers `latency` seconds late, like a real relay.

    Loopback SMTP answers in a millisecond, so a dispatcher would hold its
    claims for a few milliseconds per batch and a SIGKILL would almost never
    catch one mid-batch. A real mail server takes tens to hundreds of
    milliseconds; with that delay here, the kill lands while claims are held.
    `stop()` closes the listener and every open connection (connections are
    then refused, as with the sink itself down); `start()` listens again on
    the same port.
    """

    def __init__(self, upstream_port: int, latency: float) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.upstream_port = upstream_port
        self.latency = latency
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def start(self) -> MailRelay:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def serve() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._relay, self.host, self.port, reuse_address=True)
            )
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="mail-relay", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the mail relay did not start")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.close()
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = self._server = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # `stop()` cutting the connection is the outage, not an error.
        with contextlib.suppress(asyncio.CancelledError):
            await self._connect(reader, writer)

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await asyncio.sleep(self.latency)
            try:
                up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
            except OSError:
                return  # the sink is down: the client sees the connection drop
            self._writers.add(up_writer)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
                up_writer.close()
        finally:
            self._writers.discard(writer)
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        if writer.can_write_eof():
            writer.write_eof()


@dataclass
class Topology:
    """Everything the run started."""

    postgres: PostgresServer
    redis: RedisServer
    sink: SmtpSink
    relay: MailRelay
    database_url: str
    apis: list[RunningService]
    dispatchers: list[Dispatcher]


def _create_database(server: PostgresServer) -> str:
    admin = create_engine(normalise_url(server.url("postgres")), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{DATABASE}"'))
    finally:
        admin.dispose()
    return server.url(DATABASE)


def _seed_accounts(db: SqlEngine, requests: Sequence[Request]) -> int:
    """One account per known address, bulk-inserted (they never sign in: one real hash serves)."""
    digest = Argon2Hasher().hash_sync(f"chaos-{uuid.uuid4()}")
    now = SystemClock().now()
    rows = []
    for r in requests:
        if not r.known:
            continue
        stored = r.address.lower()
        rows.append(
            {
                "id": uuid.uuid4(),
                "email": stored,
                "email_normalized": normalise_email(stored),
                "name": f"Chaos {r.index}",
                "birth_date": None,
                "locale": "en",
                "password_hash": digest,
                "password_history": [digest],
                "disabled": False,
                "created_at": now,
                "password_changed_at": now,
            }
        )
    with db.begin() as conn:
        if rows:
            conn.execute(insert(account_t), rows)
    return len(rows)


def _service_env(scenario: Scenario, topology_urls: Mapping[str, str]) -> dict[str, str]:
    return {
        "RECOVERY_DATABASE_URL": topology_urls["database"],
        "RECOVERY_MAIL_URL": topology_urls["mail"],
        "RECOVERY_REDIS_URL": topology_urls["redis"],
        # Deployed as the README says, although only the JSON API is exercised.
        "RECOVERY_CSRF_SECRET": uuid.uuid4().hex,
        # All traffic comes from 127.0.0.1: the per-IP limit would refuse most of it.
        "RECOVERY_PUBLIC_RATE_LIMIT_PER_MINUTE": "1000000",
        "RECOVERY_DISPATCH_LEASE_SECONDS": str(scenario.dispatch_lease_seconds),
        "RECOVERY_DISPATCH_POLL_SECONDS": "0.2",
        "RECOVERY_MAIL_MAX_TRIES": str(scenario.mail_max_tries),
        "RECOVERY_MAIL_RETRY_BASE_SECONDS": str(scenario.mail_retry_base_seconds),
        "RECOVERY_MAIL_TIMEOUT_SECONDS": str(scenario.mail_timeout_seconds),
        "RECOVERY_LOG_LEVEL": "INFO",
    }


@contextlib.contextmanager
def running_topology(
    scenario: Scenario, requests: Sequence[Request], workdir: Path
) -> Iterator[Topology]:
    """PostgreSQL, Redis, the sink, 2 API processes and 2 dispatchers, stopped after the block."""
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(running_postgres())
        redis = stack.enter_context(running_redis())
        sink = stack.enter_context(SmtpSink())
        relay = MailRelay(sink.port, scenario.smtp_latency_seconds).start()
        stack.callback(relay.stop)
        url = _create_database(pg)
        urls = {"database": url, "mail": relay.url, "redis": redis.url}
        env = _service_env(scenario, urls)
        migrated = run_recovery("migrate", env=env, cwd=workdir)
        if migrated.returncode != 0:
            raise RuntimeError(f"recovery migrate failed: {migrated.stderr.strip()}")
        db = create_engine(normalise_url(url))
        try:
            _seed_accounts(db, requests)
        finally:
            db.dispose()
        apis: list[RunningService] = []
        dispatchers: list[Dispatcher] = []
        try:
            with ThreadPoolExecutor(2) as pool:
                starting = [
                    pool.submit(
                        start_service,
                        env,
                        cwd=workdir,
                        args=["--no-dispatcher"],
                        ready_timeout=READY_TIMEOUT_S,
                    )
                    for _ in range(2)
                ]
                for future in starting:
                    apis.append(future.result())
            worker_env = {**env, "RECOVERY_PUBLIC_BASE_URL": apis[0].base_url}
            dispatchers = [Dispatcher(f"dispatcher-{n}", worker_env, workdir) for n in (1, 2)]
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda d: d.start(), dispatchers))
            yield Topology(pg, redis, sink, relay, url, apis, dispatchers)
        finally:
            for api in apis:
                with contextlib.suppress(Exception):
                    api.stop()
            for dispatcher in dispatchers:
                if dispatcher.process is not None and dispatcher.process.poll() is None:
                    dispatcher.stop()


# -- load and faults -------------------------------------------------------------


@dataclass
class Clockwork:
    """Seconds since the run started, and the fault timeline."""

    started: float = field(default_factory=time.monotonic)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    # The wall-clock time of each note, to compare with the Date of the emails.
    walls: dict[str, datetime] = field(default_factory=dict)

    def now(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def note(self, what: str, **facts: Any) -> None:
        entry = {"t": self.now(), "what": what, **facts}
        self.timeline.append(entry)
        self.walls[what] = SystemClock().now()
        print(f"  [{entry['t']:7.2f}s] {what}" + (f" {facts}" if facts else ""), flush=True)


async def _send_one(
    scenario: Scenario,
    request: Request,
    clients: Sequence[httpx.AsyncClient],
    clock: Clockwork,
) -> None:
    """Try until a 202 (switching API process after each failure), within bounds."""
    give_up = time.monotonic() + scenario.request_give_up_seconds
    number = 0
    while time.monotonic() < give_up:
        number += 1
        api = (request.index + number - 1) % len(clients)
        headers = {
            "User-Agent": USER_AGENT.format(request=request.index, attempt=number),
            "Accept-Language": "fr" if request.index % 5 == 0 else "en",
        }
        started, at = time.monotonic(), clock.now()
        try:
            response = await clients[api].post(
                "/api/recovery", json={"email": request.address}, headers=headers
            )
            outcome = str(response.status_code)
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        request.tries.append(Try(number, api, outcome, time.monotonic() - started, at))
        if outcome == "202":
            return
        if outcome == "400":
            return  # the product refused the input: retrying cannot help (a bug to report)
        await asyncio.sleep(min(2.0, 0.1 * 2 ** min(number, 5)))


class Phases:
    """Where each fault starts in the traffic, and which faults are over.

    Traffic does not pass a fault's starting point before the previous fault
    is over, so every fault happens while requests flow, however slowly this
    machine starts a process.
    """

    def __init__(self, scenario: Scenario) -> None:
        total = scenario.requests
        self.starts = [
            int(share * total)
            for share in (
                scenario.kill_dispatcher_at,
                scenario.smtp_down_at,
                scenario.postgres_restart_at,
            )
        ]
        self.done = [asyncio.Event() for _ in self.starts]
        self.sent = 0

    async def gate(self, index: int) -> None:
        """Wait, before sending request `index`, for the fault before the one it would start."""
        for k in range(1, len(self.starts)):
            if index >= self.starts[k]:
                await self.done[k - 1].wait()

    async def reached(self, k: int) -> None:
        """Wait until traffic reaches fault `k`'s starting point."""
        while self.sent < self.starts[k]:
            await asyncio.sleep(0.02)


async def _load(
    scenario: Scenario,
    topology: Topology,
    requests: Sequence[Request],
    phases: Phases,
    clock: Clockwork,
) -> None:
    slots = asyncio.Semaphore(scenario.concurrency)
    limits = httpx.Limits(max_connections=scenario.concurrency)
    timeout = httpx.Timeout(scenario.try_timeout_seconds)
    interval = 1.0 / scenario.requests_per_second
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=api.base_url, limits=limits, timeout=timeout)
            )
            for api in topology.apis
        ]

        async def one(request: Request) -> None:
            try:
                await _send_one(scenario, request, clients, clock)
            finally:
                slots.release()

        tasks = []
        next_at = time.monotonic()
        for request in requests:
            await phases.gate(request.index)
            now = time.monotonic()
            # After a pause, resume the pace instead of bursting to catch up.
            next_at = max(next_at, now - interval)
            if next_at > now:
                await asyncio.sleep(next_at - now)
            next_at += interval
            await slots.acquire()
            phases.sent += 1
            tasks.append(asyncio.create_task(one(request)))
        await asyncio.gather(*tasks)


def _leases(db: SqlEngine) -> dict[uuid.UUID, Any]:
    """The `requested` attempts a dispatcher holds a lease on right now, with the lease's end."""
    now = SystemClock().now()
    with db.connect() as conn:
        rows = conn.execute(
            select(attempt_t.c.id, attempt_t.c.lease_until).where(
                attempt_t.c.state == "requested", attempt_t.c.lease_until > now
            )
        )
        return {row.id: row.lease_until for row in rows}


async def _kill_dispatcher(
    scenario: Scenario, topology: Topology, db: SqlEngine, clock: Clockwork
) -> dict[str, Any]:
    """SIGKILL dispatcher-1 while claims are held, and find the claims it took down with it.

    Leases the survivor holds end with its batch (a second or so); the ones
    still held, unchanged, most of a lease later were the victim's: they wait
    for their lease to run out, then another pass takes them.
    """
    victim = topology.dispatchers[0]
    held: dict[uuid.UUID, Any] = {}
    aim_until = time.monotonic() + 5.0
    while time.monotonic() < aim_until:
        held = await asyncio.to_thread(_leases, db)
        if held:
            break
        await asyncio.sleep(0.01)
    await asyncio.to_thread(victim.kill)
    clock.note("dispatcher-1 SIGKILLed", claims_held_by_both=len(held))
    # Long enough for the survivor to finish its batch, short of the lease.
    await asyncio.sleep(
        max(scenario.dispatcher_down_seconds, 0.6 * scenario.dispatch_lease_seconds)
    )
    still = await asyncio.to_thread(_leases, db)
    orphaned = sorted(str(i) for i, until in still.items() if held.get(i) == until)
    ready = await asyncio.to_thread(victim.start)
    clock.note(
        "dispatcher-1 started again",
        claims_left_by_the_killed=len(orphaned),
        ready_after_seconds=round(ready, 2),
    )
    return {"claims_left_by_the_killed_dispatcher": orphaned}


async def _faults(
    scenario: Scenario,
    topology: Topology,
    db: SqlEngine,
    phases: Phases,
    clock: Clockwork,
    found: dict[str, Any],
) -> None:
    await phases.reached(0)
    found.update(await _kill_dispatcher(scenario, topology, db, clock))
    phases.done[0].set()

    await phases.reached(1)
    await asyncio.to_thread(topology.relay.stop)
    await asyncio.to_thread(topology.sink.stop)
    clock.note("SMTP sink down")
    await asyncio.sleep(scenario.smtp_down_seconds)
    await asyncio.to_thread(topology.sink.start)
    await asyncio.to_thread(topology.relay.start)
    clock.note("SMTP sink up")
    phases.done[1].set()

    await phases.reached(2)
    clock.note("PostgreSQL restarting")
    began = time.monotonic()
    await asyncio.to_thread(topology.postgres.restart)
    clock.note("PostgreSQL up", seconds=round(time.monotonic() - began, 2))
    phases.done[2].set()


async def _drive(
    scenario: Scenario,
    topology: Topology,
    requests: Sequence[Request],
    db: SqlEngine,
    clock: Clockwork,
    found: dict[str, Any],
) -> None:
    phases = Phases(scenario)
    faults = asyncio.create_task(_faults(scenario, topology, db, phases, clock, found))
    try:
        await _load(scenario, topology, requests, phases, clock)
        clock.note("all requests answered")
        await faults
    finally:
        if not faults.done():
            faults.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await faults


def _requested_count(db: SqlEngine) -> int:
    with db.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(attempt_t)
                .where(attempt_t.c.flow == NAME, attempt_t.c.state == "requested")
            ).scalar_one()
        )


def _drain(db: SqlEngine, timeout: float) -> tuple[bool, float]:
    """Wait until no attempt is `requested` (bounded); whether it drained, and how long it took."""
    began = time.monotonic()
    while True:
        try:
            if _requested_count(db) == 0:
                return True, time.monotonic() - began
        except Exception:
            pass  # the database may still be coming back; the loop is bounded
        if time.monotonic() - began > timeout:
            return False, time.monotonic() - began
        time.sleep(0.25)


# -- the accounting --------------------------------------------------------------


@dataclass(frozen=True)
class Mail:
    """One message the sink received: who it went to, which attempts it names, its link.

    Only the digest of the link's token is kept (it is compared with the
    stored digests), never the token.
    """

    recipients: tuple[str, ...]
    references: tuple[str, ...]
    link_digests: tuple[str, ...]
    sent_at: datetime | None = None  # its Date header (whole seconds)


def mail_of(message: Any) -> Mail:
    body = message.get_body(preferencelist=("plain",))
    content = body.get_content() if body is not None else ""
    date = message.get("Date")
    return Mail(
        tuple(message.envelope_rcpts),
        tuple(sorted(set(_REFERENCE_RE.findall(content)))),
        tuple(sorted({token_hash(t) for t in _LINK_TOKEN_RE.findall(content)})),
        parsedate_to_datetime(str(date)) if date else None,
    )


def duplicate_causes(
    duplicated: Sequence[str],
    attempts: Sequence[Mapping[str, Any]],
    mails: Sequence[Mail],
    walls: Mapping[str, datetime],
    killed_claims: set[str],
) -> dict[str, int]:
    """Which fault each attempt mailed more than once met, from when its first copy left.

    A claim the killed dispatcher left is its cause; otherwise the first
    copy's Date (whole seconds) falling in the SMTP outage or the PostgreSQL
    restart, give or take the Date's rounding, names the fault.
    """
    margin = timedelta(seconds=2)
    windows = {
        "smtp_outage": ("SMTP sink down", "SMTP sink up"),
        "postgres_restart": ("PostgreSQL restarting", "PostgreSQL up"),
    }
    reference_of = {str(a["id"]): support_reference(a["id"]) for a in attempts}
    causes: Counter[str] = Counter()
    for attempt_id in duplicated:
        if attempt_id in killed_claims:
            causes["dispatcher_kill"] += 1
            continue
        ref = reference_of.get(attempt_id)
        dates = [m.sent_at for m in mails if ref in m.references and m.sent_at is not None]
        first = min(dates) if dates else None
        cause = "other"
        for name, (begin, end) in windows.items():
            if (
                first is not None
                and begin in walls
                and end in walls
                and walls[begin] - margin <= first <= walls[end] + margin
            ):
                cause = name
        causes[cause] += 1
    return dict(sorted(causes.items()))


def arrows(spec: FlowSpec) -> dict[tuple[str, str], set[str]]:
    """Every (state, event) of the flow and the states it may lead to (guards choose one)."""
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for t in spec.transitions:
        found[(t.source, t.event)].add(t.target)
    return dict(found)


def explain(
    spec: FlowSpec,
    moves: Mapping[tuple[str, str], set[str]],
    stored_state: str,
    events: Sequence[Mapping[str, Any]],
) -> tuple[bool, list[str]]:
    """Replay an event log: whether it explains the stored state, and the states it went through.

    `moves` is `arrows(spec)`.
    """
    if not events:
        return False, []
    first = events[0]
    if (
        first["event"] != START_EVENT
        or first["from_state"] is not None
        or first["to_state"] != spec.initial_state
        or not first["accepted"]
    ):
        return False, []
    state = spec.initial_state
    path = [state]
    for expected_seq, e in enumerate(events, start=1):
        if e["seq"] != expected_seq:
            return False, path
        if expected_seq == 1:
            continue
        if e["from_state"] != state:
            return False, path
        if not e["accepted"]:
            if e["to_state"] is not None:
                return False, path
            continue
        # A guarded event (dispatch) has several targets: the logged one must be among them.
        if e["to_state"] not in moves.get((state, e["event"]), set()):
            return False, path
        state = e["to_state"]
        path.append(state)
    return state == stored_state, path


def account_for(
    requests: Sequence[Request],
    attempts: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    account_emails: Mapping[str, str],
    mails: Sequence[Mail],
    spec: FlowSpec,
    stored_digests: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The accounting of issue 7, from what the client saw and what the database and sink hold.

    `account_emails` maps each account's normalised address to its stored one;
    `stored_digests` holds the token digests the database kept (a mail whose
    link's digest is not among them carries a link that does not work: an
    attempt keeps the token of its newest email only).
    """
    by_try: dict[tuple[int, int], list[Mapping[str, Any]]] = defaultdict(list)
    foreign = 0
    for a in attempts:
        match = _USER_AGENT_RE.match(str((a["data"] or {}).get("user_agent") or ""))
        if match is None:
            foreign += 1
            continue
        by_try[(int(match[1]), int(match[2]))].append(a)
    events_of: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for e in events:
        events_of[e["attempt_id"]].append(e)

    explained: dict[Any, bool] = {}
    was_emailed: dict[Any, bool] = {}
    moves = arrows(spec)
    for a in attempts:
        ok, path = explain(spec, moves, a["state"], events_of[a["id"]])
        explained[a["id"]] = ok
        was_emailed[a["id"]] = "emailed" in path

    mails_per_reference: Counter[str] = Counter()
    wrong_recipient = 0
    reference_of = {support_reference(a["id"]): a for a in attempts}
    unmatched_mails = 0
    # Exactly the stored spelling: mail to the typed variant of an address is misdirected too.
    stored_addresses = set(account_emails.values())
    for mail in mails:
        refs = [r for r in mail.references if r in reference_of]
        if not refs:
            unmatched_mails += 1
        for rcpt in mail.recipients:
            if rcpt not in stored_addresses:
                wrong_recipient += 1
                continue
            for ref in refs:
                owner = account_emails.get(reference_of[ref]["subject"], "")
                if rcpt != owner:
                    wrong_recipient += 1
        for ref in refs:
            mails_per_reference[ref] += 1

    accepted = [r for r in requests if r.accepted_try is not None]
    missing = multiple = unexplained = emailed_without_mail = 0
    accepted_states: Counter[str] = Counter()
    for r in accepted:
        found = by_try.get((r.index, r.accepted_try or 0), [])
        if not found:
            missing += 1
            continue
        if len(found) > 1:
            multiple += 1
        for a in found:
            accepted_states[a["state"]] += 1
    for a in attempts:
        if not explained[a["id"]]:
            unexplained += 1
        if was_emailed[a["id"]] and mails_per_reference[support_reference(a["id"])] == 0:
            emailed_without_mail += 1
    emailed_ids = {support_reference(a["id"]) for a in attempts if was_emailed[a["id"]]}
    duplicates = sum(max(0, n - 1) for n in mails_per_reference.values())
    dead_links = sum(
        1 for m in mails if m.link_digests and not set(m.link_digests) & stored_digests
    )
    sent_not_emailed = sum(n for ref, n in mails_per_reference.items() if ref not in emailed_ids)
    accepted_tries = {(r.index, r.accepted_try) for r in accepted}
    orphans = sum(len(v) for k, v in by_try.items() if k not in accepted_tries)
    states = Counter(a["state"] for a in attempts)
    known_accepted = sum(1 for r in accepted if r.known)
    return {
        "accepted": len(accepted),
        "attempts": len(attempts),
        "lost": missing + emailed_without_mail,
        "stuck": states.get("requested", 0),
        "duplicates": duplicates,
        "wrong_recipient": wrong_recipient,
        "details": {
            "accepted_known_address": known_accepted,
            "accepted_unknown_address": len(accepted) - known_accepted,
            "accepted_without_attempt": missing,
            "accepted_with_several_attempts": multiple,
            "emailed_without_mail": emailed_without_mail,
            "unexplained_by_history": unexplained,
            "attempts_of_failed_tries": orphans,
            "attempts_not_from_this_run": foreign,
            "accepted_by_state": dict(sorted(accepted_states.items())),
            "attempts_by_state": dict(sorted(states.items())),
            "throttled": states.get("throttled", 0),
            "unknown_account": states.get("unknown_account", 0),
            "undeliverable": states.get("undeliverable", 0),
            "mails_received": len(mails),
            "mails_without_a_known_reference": unmatched_mails,
            "mails_for_attempts_not_emailed": sent_not_emailed,
            "attempts_mailed_more_than_once": sorted(
                str(reference_of[ref]["id"]) for ref, n in mails_per_reference.items() if n > 1
            ),
            "mails_whose_link_does_not_work": dead_links,
        },
    }


def _read_outcome(
    db: SqlEngine,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str], frozenset[str]]:
    """Attempts, their events, accounts (normalised → stored address), stored token digests."""
    with db.connect() as conn:
        attempts = [
            dict(r._mapping)
            for r in conn.execute(
                select(
                    attempt_t.c.id,
                    attempt_t.c.state,
                    attempt_t.c.subject,
                    attempt_t.c.data,
                ).where(attempt_t.c.flow == NAME)
            )
        ]
        events = [
            dict(r._mapping)
            for r in conn.execute(
                select(
                    event_t.c.attempt_id,
                    event_t.c.seq,
                    event_t.c.event,
                    event_t.c.from_state,
                    event_t.c.to_state,
                    event_t.c.accepted,
                ).order_by(event_t.c.attempt_id, event_t.c.seq)
            )
        ]
        accounts = {
            row.email_normalized: row.email
            for row in conn.execute(select(account_t.c.email_normalized, account_t.c.email))
        }
        digests = frozenset(conn.execute(select(token_t.c.token_hash)).scalars())
    return attempts, events, accounts, digests


def _client_facts(requests: Sequence[Request]) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    failed = [t for r in requests for t in r.tries if t.outcome != "202"]
    for t in failed:
        outcomes[t.outcome] += 1
    accepted_latency = [t.seconds * 1000 for r in requests for t in r.tries if t.outcome == "202"]
    return {
        "sent": len(requests),
        "never_accepted": sum(1 for r in requests if r.accepted_try is None),
        "tries": sum(len(r.tries) for r in requests),
        "retried_requests": sum(1 for r in requests if len(r.tries) > 1),
        "failed_tries_by_outcome": dict(sorted(outcomes.items())),
        # From the start of the first failed try to the answer of the last, in the
        # faults' time: to compare with the PostgreSQL restart.
        "failed_tries_span_seconds": (
            [round(min(t.at for t in failed), 2), round(max(t.at + t.seconds for t in failed), 2)]
            if failed
            else None
        ),
        "accepted_latency_ms": {
            "p50": round(percentile(accepted_latency, 50), 2) if accepted_latency else None,
            "p99": round(percentile(accepted_latency, 99), 2) if accepted_latency else None,
            "max": round(max(accepted_latency), 2) if accepted_latency else None,
        },
    }


def _mail_retries(attempts: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    tries = Counter(
        int(((a["data"] or {}).get("delivery") or {}).get("tries") or 0) for a in attempts
    )
    return {
        "attempts_mailed_after_a_failed_try": sum(n for t, n in tries.items() if t > 1),
        "most_tries": max(tries) if tries else 0,
    }


# -- the run ---------------------------------------------------------------------


def run_chaos(scenario: Scenario, workdir: Path) -> dict[str, Any]:
    """Run the whole scenario with its processes' logs under `workdir`; the accounting."""
    workdir.mkdir(parents=True, exist_ok=True)
    requests = plan_requests(scenario)
    clock = Clockwork()
    print(
        f"chaos: {scenario.requests} requests, 2 API processes, 2 dispatchers, "
        f"PostgreSQL, Redis, SMTP sink (logs in {workdir})",
        flush=True,
    )
    with running_topology(scenario, requests, workdir) as topology:
        clock = Clockwork()
        clock.note("topology up", apis=[a.base_url for a in topology.apis])
        db = create_engine(normalise_url(topology.database_url), pool_pre_ping=True)
        try:
            found: dict[str, Any] = {}
            asyncio.run(_drive(scenario, topology, requests, db, clock, found))
            drained, drain_seconds = _drain(db, scenario.drain_timeout_seconds)
            clock.note("queue drained" if drained else "queue did NOT drain in time")
            attempts, events, accounts, digests = _read_outcome(db)
        finally:
            db.dispose()
        exits: dict[str, Any] = {
            f"api-{n}": api.stop() for n, api in enumerate(topology.apis, start=1)
        }
        for dispatcher in topology.dispatchers:
            dispatcher.stop()
            exits[dispatcher.name] = dispatcher.exits
        mails = [mail_of(m) for m in list(topology.sink.messages)]
    report = account_for(requests, attempts, events, accounts, mails, registry().get(NAME), digests)
    orphaned = set(found.get("claims_left_by_the_killed_dispatcher", []))
    report["details"].update(
        {
            "claims_left_by_the_killed_dispatcher": {
                "count": len(orphaned),
                "mailed_more_than_once": len(
                    orphaned & set(report["details"]["attempts_mailed_more_than_once"])
                ),
                "final_states": dict(
                    Counter(a["state"] for a in attempts if str(a["id"]) in orphaned)
                ),
            },
            "duplicates_by_fault": duplicate_causes(
                report["details"]["attempts_mailed_more_than_once"],
                attempts,
                mails,
                clock.walls,
                orphaned,
            ),
            "requests": _client_facts(requests),
            "mail_delivery": _mail_retries(attempts),
            "faults": clock.timeline,
            "drained": drained,
            "drain_seconds": round(drain_seconds, 2),
            "run_seconds": clock.now(),
            "process_exit_statuses": exits,
            "scenario": asdict(scenario),
        }
    )
    return report


def healthy(report: Mapping[str, Any]) -> bool:
    """Nothing lost, stuck, misdirected, unexplained, doubled up, and the queue drained."""
    d = report["details"]
    return (
        report["lost"] == 0
        and report["stuck"] == 0
        and report["wrong_recipient"] == 0
        and d["unexplained_by_history"] == 0
        and d["accepted_with_several_attempts"] == 0
        and d["drained"]
    )


def summary(report: Mapping[str, Any]) -> str:
    """The accounting as a few lines for people."""
    d = report["details"]
    req = d["requests"]
    lines = [
        "accounting",
        f"  accepted         {report['accepted']} of {req['sent']} requests "
        f"({req['retried_requests']} retried by the client, "
        f"{req['never_accepted']} never accepted)",
        f"  attempts         {report['attempts']} "
        f"({d['attempts_of_failed_tries']} from tries that got no 202)",
        f"  lost             {report['lost']}",
        f"  stuck            {report['stuck']}",
        f"  duplicates       {report['duplicates']} "
        f"({len(d['attempts_mailed_more_than_once'])} attempts mailed twice or more, "
        f"by fault {d['duplicates_by_fault']}; "
        f"{d['mails_whose_link_does_not_work']} mails carry a link that does not work)",
        f"  wrong_recipient  {report['wrong_recipient']}",
        f"  unexplained      {d['unexplained_by_history']}",
        f"  accepted states  {d['accepted_by_state']}",
        f"  throttled {d['throttled']}, unknown_account {d['unknown_account']}, "
        f"undeliverable {d['undeliverable']}",
        f"  mails received   {d['mails_received']}; "
        f"{d['mail_delivery']['attempts_mailed_after_a_failed_try']} attempts needed a retry",
        f"  failed tries     {req['failed_tries_by_outcome']} "
        f"from t={(req['failed_tries_span_seconds'] or ['-', '-'])[0]} "
        f"to t={(req['failed_tries_span_seconds'] or ['-', '-'])[1]} s; accepted p50 "
        f"{req['accepted_latency_ms']['p50']} ms, p99 {req['accepted_latency_ms']['p99']} ms",
        f"  killed dispatcher left {d['claims_left_by_the_killed_dispatcher']['count']} claims, "
        f"which ended {d['claims_left_by_the_killed_dispatcher']['final_states']}",
        f"  drained          {d['drained']} in {d['drain_seconds']} s; run {d['run_seconds']} s",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--requests", type=int, default=Scenario.requests, help="how many (default: %(default)s)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=Scenario.requests_per_second,
        help="requests started per second (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the JSON")
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)
    if args.requests < 10 or args.rate <= 0:
        parser.error("--requests must be at least 10 and --rate positive")
    scenario = Scenario(requests=args.requests, requests_per_second=args.rate)
    workdir = Path(tempfile.mkdtemp(prefix="recovery-chaos-"))
    report = run_chaos(scenario, workdir)
    print(summary(report))
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    if args.out.resolve() == OUT.resolve():
        from bench import readme

        readme.update(("chaos",))
    ok = healthy(report)
    if ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"process logs kept in {workdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
