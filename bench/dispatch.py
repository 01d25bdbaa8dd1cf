"""The mail dispatcher's throughput against the SMTP floor, and against the requests it must serve.

One or two `recovery worker` processes are started and left idle until they
are up; then one transaction commits N `requested` attempts for N distinct
addresses that each have an account (nothing is throttled), and the clock
runs until every one has left `requested` and the real SMTP sink on loopback
holds its N emails. On PostgreSQL (where several dispatchers share the queue
with `FOR UPDATE SKIP LOCKED`) with one and with two workers; on SQLite (the
embedded default, one writer) with one.

The floor (issue 17 §1) is the same number of recovery emails, rendered by the
dispatcher's own template code before the clock starts, sent with plain
aiosmtplib to the same sink by as many processes, each over as many
persistent connections as the dispatcher runs sends at once
(`MAX_CONCURRENT_SENDS`), every connection reused for every message
(`bench.floors`): the most mail that concurrency could carry. The older floor,
a connection per message as the SMTP transport sent before it kept its
connections (`python -m bench.dispatch send-floor`, below), is kept in the
details.

- `dispatch_emails_per_s_1w` (PostgreSQL), `dispatch_emails_per_s_1w_sqlite`,
  `dispatch_emails_per_s_2w` (PostgreSQL, with its scaling over one worker in
  the detail; the issue's goal is 1.7x): emails/s, each against its floor.
- `dispatch_vs_smtp_floor_ratio`: one worker on PostgreSQL over the
  persistent-connection floor, per run (SQLite's in the detail). Target `>= 0.7`.
- `dispatch_render_send_vs_smtp_floor_ratio`: the ceiling of the one above.
  One process renders each email with the dispatcher's template code inside
  the clock and sends it through the product's SMTP transport over the same
  number of kept connections (`python -m bench.dispatch render-send`), with no
  database, throttles, tokens or state machine, over the same floor. Reported
  (no target): what a dispatcher whose durable work cost nothing would reach.
- `dispatch_vs_request_ratio`: one worker's emails/s on PostgreSQL over the
  req/s `POST /api/recovery` accepted with known addresses on PostgreSQL in
  the same run (`bench.request_path.request_capacity`), run by run: whether
  the mail keeps up with the requests. Target `>= 1`.

The sink keeps receipts only (no parsing), so it costs both sides little.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import aiosmtplib
from sqlalchemy import func, select

from api.mail.transports import SmtpTransport
from bench.env import BenchEnv, attempt_row, bulk_insert, insert_accounts, start_event
from bench.floors import smtp_floor_seconds
from bench.harness import Figure, Floor
from bench.product import (
    MAX_CONCURRENT_SENDS,
    Database,
    attempt_t,
    child_env,
    recovery_command,
    recovery_message,
)
from bench.server import ROOT
from tests.support.smtp import SmtpSink

WORKER_READY = "mail worker started"
# Never verified on the dispatch path: any well-formed Argon2 hash will do.
PASSWORD_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"


def _wait_for_line(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in path.read_text(errors="replace"):
        if proc.poll() is not None:
            raise RuntimeError(f"process exited: {path.read_text(errors='replace')[-1500:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {needle!r} within {timeout} s")
        time.sleep(0.05)


def _requested(db: Database) -> int:
    with db.transaction(write=False) as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(attempt_t).where(attempt_t.c.state == "requested")
            ).scalar_one()
        )


def requested_rows(addresses: list[str]) -> list[dict[str, Any]]:
    """`requested` attempt rows for `addresses`, as `POST /api/recovery` would have left them."""
    now = datetime.now(UTC)
    return [
        attempt_row(
            state="requested",
            created_at=now + timedelta(microseconds=i),
            subject=address,
            deadline_at=now + timedelta(hours=24),
            data={
                "email_submitted": address,
                "client_ip": "127.0.0.1",
                "user_agent": "bench",
                "delivery": {"status": "queued", "tries": 0, "last_error": None, "sent_at": None},
            },
        )
        for i, address in enumerate(addresses)
    ]


def _product_run(
    env: BenchEnv, sink: SmtpSink, backend: str, workers: int, count: int, tag: str
) -> float:
    """Seconds for `workers` dispatcher processes to email `count` fresh requests."""
    url = env.fresh_url(backend, f"dispatch_{tag}")
    addresses = [f"d{tag}{i:06d}@example.com" for i in range(count)]
    db = Database(url, pool_size=2)
    procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
    try:
        insert_accounts(db, addresses, PASSWORD_HASH)
        settings = {
            "RECOVERY_DATABASE_URL": url,
            "RECOVERY_MAIL_URL": sink.url,
            "RECOVERY_LOG_LEVEL": "INFO",
        }
        for n in range(workers):
            log_path = env.tmp / f"worker-{tag}-{n}.log"
            log = log_path.open("wb")
            proc = subprocess.Popen(
                [*recovery_command(), "worker"],
                cwd=ROOT,
                env=child_env(settings),
                stdout=log,
                stderr=log,
            )
            procs.append((proc, log))
            _wait_for_line(log_path, WORKER_READY, proc, 60)
        before = len(sink.receipts)
        rows = requested_rows(addresses)
        started = time.perf_counter()
        bulk_insert(db, rows, [start_event(r) for r in rows], rebuild_indexes=False)
        sink.wait_for(before + count, timeout=600)
        while _requested(db):
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        for proc, _log in procs:
            proc.terminate()
        for proc, log in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        db.close()
    return elapsed


def _sender_run(sink: SmtpSink, command: str, count: int) -> float:
    """Seconds for one `python -m bench.dispatch COMMAND` process, started and left
    until it says it is ready, to hand `count` emails to the sink once told to go."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.dispatch",
            command,
            "--port",
            str(sink.port),
            "--count",
            str(count),
        ],
        cwd=ROOT,
        env=child_env({}),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the {command} sender did not start")
        before = len(sink.receipts)
        started = time.perf_counter()
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        sink.wait_for(before + count, timeout=600)
        elapsed = time.perf_counter() - started
        if proc.wait(timeout=60) != 0:
            raise RuntimeError(f"the {command} sender failed")
    finally:
        if proc.poll() is None:
            proc.kill()
    return elapsed


def _runs(env: BenchEnv, sink: SmtpSink, count: int) -> dict[str, list[float]]:
    """emails/s per run of every product configuration and floor, interleaved."""
    cells: dict[str, Callable[[int], float]] = {
        "pg 1w": lambda run: _product_run(env, sink, "postgresql", 1, count, f"pg1w{run}"),
        "sqlite 1w": lambda run: _product_run(env, sink, "sqlite", 1, count, f"sq1w{run}"),
        "floor 1p": lambda run: smtp_floor_seconds(sink, senders=1, count=count),
        "per-message floor 1p": lambda run: _sender_run(sink, "send-floor", count),
        "render+send 1p": lambda run: _sender_run(sink, "render-send", count),
        "pg 2w": lambda run: _product_run(env, sink, "postgresql", 2, count, f"pg2w{run}"),
        "floor 2p": lambda run: smtp_floor_seconds(sink, senders=2, count=count),
    }
    rates: dict[str, list[float]] = {cell: [] for cell in cells}
    for run in range(env.sizes.runs):
        # Alternate the order run by run, so drift favours neither side.
        order = list(cells) if run % 2 == 0 else list(reversed(cells))
        for cell in order:
            rates[cell].append(count / cells[cell](run))
            sink.clear()
    return rates


def _ratio(top: list[float], bottom: list[float]) -> list[float]:
    return [t / b for t, b in zip(top, bottom, strict=True)]


def measure(env: BenchEnv) -> list[Figure]:
    """The dispatcher's figures (needs PostgreSQL); the request rate comes from this run."""
    from bench.request_path import request_capacity

    if not env.has_postgresql:
        raise RuntimeError("the dispatcher figures need PostgreSQL")
    count = env.sizes.dispatch_emails
    sink = env.smtp_sink(keep_messages=False)
    rates = _runs(env, sink, count)
    requests_pg = request_capacity(env, "postgresql")
    requests_sqlite = request_capacity(env, "sqlite")
    conns = MAX_CONCURRENT_SENDS

    def floor(processes: int) -> Floor:
        return Floor(
            f"plain aiosmtplib sends by {processes} process(es), {conns} persistent "
            "connections each (python -m bench.floors smtp)",
            "emails/s",
            rates[f"floor {processes}p"],
        )

    def what(backend: str, workers: int) -> str:
        return (
            f"{count:,} requested attempts for known addresses dispatched by {workers} "
            f"`recovery worker` process(es) on {backend} to a real SMTP sink on loopback "
            "(throttle checks, account lookup, token, rendering in the attempt's language, "
            "send, `dispatch` transition with the token stored)."
        )

    per_message = rates["per-message floor 1p"]
    render_send = rates["render+send 1p"]
    ceiling = _ratio(render_send, rates["floor 1p"])
    pg1, sq1, pg2 = rates["pg 1w"], rates["sqlite 1w"], rates["pg 2w"]
    return [
        Figure(
            name="dispatch_emails_per_s_1w",
            unit="emails/s",
            runs=pg1,
            floor=floor(1),
            ratio_runs=_ratio(pg1, rates["floor 1p"]),
            description=what("PostgreSQL", 1),
            detail={
                "sqlite emails/s": sq1,
                f"floor with a connection per message, {conns} at a time, emails/s": per_message,
                "ratio to the connection-per-message floor": _ratio(pg1, per_message),
            },
        ),
        Figure(
            name="dispatch_emails_per_s_1w_sqlite",
            unit="emails/s",
            runs=sq1,
            floor=floor(1),
            ratio_runs=_ratio(sq1, rates["floor 1p"]),
            description=what("SQLite", 1),
        ),
        Figure(
            name="dispatch_emails_per_s_2w",
            unit="emails/s",
            runs=pg2,
            floor=floor(2),
            ratio_runs=_ratio(pg2, rates["floor 2p"]),
            description=what("PostgreSQL", 2),
            detail={"two workers over one, per run (goal 1.7x)": _ratio(pg2, pg1)},
        ),
        Figure(
            name="dispatch_vs_smtp_floor_ratio",
            unit="x",
            runs=_ratio(pg1, rates["floor 1p"]),
            target=">= 0.7",
            better="higher",
            threshold=0.7,
            floor=floor(1),
            ratio_runs=_ratio(pg1, rates["floor 1p"]),
            description=(
                "One `recovery worker` on PostgreSQL, emails/s over the persistent-connection "
                f"SMTP floor's, per run ({count:,} emails each)."
            ),
            detail={
                "dispatcher emails/s": pg1,
                "sqlite ratio": _ratio(sq1, rates["floor 1p"]),
                "the most it could be (dispatch_render_send_vs_smtp_floor_ratio)": ceiling,
            },
        ),
        Figure(
            name="dispatch_render_send_vs_smtp_floor_ratio",
            unit="x",
            runs=ceiling,
            floor=floor(1),
            ratio_runs=ceiling,
            description=(
                "What one dispatcher would reach if its database, throttles, tokens and state "
                "machine cost nothing: one process (`python -m bench.dispatch render-send`) "
                "that renders each recovery email with the dispatcher's template code, inside "
                "the clock, and sends it through the product's SMTP transport, "
                f"{conns} at a time over kept connections, emails/s over the persistent-"
                f"connection floor's, per run ({count:,} emails each). "
                "`dispatch_vs_smtp_floor_ratio` cannot be higher."
            ),
            detail={
                "render-and-send emails/s": render_send,
                "one worker on PostgreSQL over render-and-send": _ratio(pg1, render_send),
            },
        ),
        Figure(
            name="dispatch_vs_request_ratio",
            unit="x",
            runs=_ratio(pg1, requests_pg),
            target=">= 1",
            better="higher",
            threshold=1.0,
            floor=Floor(
                "POST /api/recovery req/s, known addresses, PostgreSQL, this run "
                "(recovery serve --no-dispatcher, wrk)",
                "req/s",
                requests_pg,
            ),
            ratio_runs=_ratio(pg1, requests_pg),
            description=(
                "Emails/s of one `recovery worker` on PostgreSQL over the req/s the API accepts "
                "on PostgreSQL, run by run: below 1, a sustained load grows the queue without "
                "bound."
            ),
            detail={
                "dispatcher emails/s": pg1,
                "sqlite: emails/s over req/s": _ratio(sq1, requests_sqlite),
            },
        ),
    ]


# -- the floor's sender process ---------------------------------------------------------


async def _send_all(port: int, count: int) -> None:
    message = recovery_message("someone@example.com")
    slots = asyncio.Semaphore(MAX_CONCURRENT_SENDS)

    async def one(i: int) -> None:
        async with slots:
            await aiosmtplib.send(
                message,  # type: ignore[arg-type]
                sender="no-reply@localhost",
                recipients=[f"f{i:06d}@example.com"],
                hostname="127.0.0.1",
                port=port,
                local_hostname="localhost",
                timeout=30,
            )

    await asyncio.gather(*(one(i) for i in range(count)))


# -- the render-and-send process: a dispatcher without a database -----------------------


async def _render_and_send(port: int, count: int) -> int:
    """Once 'go' is read: render `count` recovery emails, each just before it is sent
    (as the dispatcher does), and send them through the product's SMTP transport,
    `MAX_CONCURRENT_SENDS` at a time over as many kept connections."""
    transport = SmtpTransport(f"smtp://127.0.0.1:{port}", kept=MAX_CONCURRENT_SENDS)
    # The connections are open before the clock starts, as the floor's are.
    warm = [recovery_message(f"r{n}@example.com") for n in range(MAX_CONCURRENT_SENDS)]
    await asyncio.gather(*(transport.send(message) for message in warm))
    print("ready", flush=True)
    if await asyncio.to_thread(sys.stdin.readline) != "go\n":
        return 1
    waiting = list(range(count))

    async def drain() -> None:
        while waiting:
            await transport.send(recovery_message(f"r{waiting.pop():07d}@example.com"))

    await asyncio.gather(*(drain() for _ in range(MAX_CONCURRENT_SENDS)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, what in (
        ("send-floor", "send N emails, a connection each, once 'go' is read on stdin"),
        ("render-send", "render and send N emails over kept connections once 'go' is read"),
    ):
        command = commands.add_parser(name, help=what)
        command.add_argument("--port", type=int, required=True)
        command.add_argument("--count", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "render-send":
        return asyncio.run(_render_and_send(args.port, args.count))
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    asyncio.run(_send_all(args.port, args.count))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
