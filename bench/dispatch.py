"""`dispatch_emails_per_s_1w`, `dispatch_emails_per_s_2w`: the mail dispatcher's throughput.

On PostgreSQL (where several dispatchers share the queue with `FOR UPDATE
SKIP LOCKED`), one or two `recovery worker` processes are started and left
idle until they are up; then one transaction commits N `requested` attempts
for N distinct addresses that each have an account (nothing is throttled),
and the clock runs until every one has left `requested` and the real SMTP
sink on loopback holds its N emails.

The floor is the same number of plain SMTP sends of a rendered recovery
email to the same sink, by as many processes, each with the dispatcher's
number of concurrent sends (`MAX_CONCURRENT_SENDS`), one connection per
message as the SMTP transport does: the cost of the mail alone.

`python -m bench.dispatch send-floor ...` is that floor's sender process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import aiosmtplib
from sqlalchemy import func, select

from api.mail.messages import recovery_email
from api.services import MAX_CONCURRENT_SENDS
from bench.env import BenchEnv, attempt_row, bulk_insert, insert_accounts, start_event
from bench.harness import Figure, Floor
from bench.server import ROOT
from engine import Database
from engine.core import attempt_t
from tests.support.smtp import SmtpSink

WORKER_READY = "mail worker started"
# Never verified on the dispatch path: any well-formed Argon2 hash will do.
PASSWORD_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"


def _message(to: str) -> object:
    now = datetime.now(UTC)
    token = "x" * 43
    return recovery_email(
        locale="en",
        to=to,
        mail_from="Account recovery <no-reply@localhost>",
        link=f"http://127.0.0.1:8000/recovery/reset?token={token}",
        cancel_link=f"http://127.0.0.1:8000/recovery/cancel?token={token}",
        expires_at=now + timedelta(hours=1),
        reference="ABCD-EFGH",
        name="Person",
        sent_at=now,
    )


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECOVERY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _recovery_command() -> list[str]:
    return [sys.executable, "-c", "from api.cli import main; raise SystemExit(main())"]


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


def _product_run(env: BenchEnv, sink: SmtpSink, workers: int, count: int, tag: str) -> float:
    """Seconds for `workers` dispatcher processes to email `count` fresh requests."""
    url = env.fresh_url("postgresql", f"dispatch_{tag}")
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
                [*_recovery_command(), "worker"],
                cwd=ROOT,
                env=_child_env(settings),
                stdout=log,
                stderr=log,
            )
            procs.append((proc, log))
            _wait_for_line(log_path, WORKER_READY, proc, 60)
        before = len(sink.messages)
        now = datetime.now(UTC)
        rows = [
            attempt_row(
                state="requested",
                created_at=now + timedelta(microseconds=i),
                subject=address,
                deadline_at=now + timedelta(hours=24),
                data={
                    "email_submitted": address,
                    "client_ip": "127.0.0.1",
                    "user_agent": "bench",
                    "delivery": {
                        "status": "queued",
                        "tries": 0,
                        "last_error": None,
                        "sent_at": None,
                    },
                },
            )
            for i, address in enumerate(addresses)
        ]
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


def _floor_run(env: BenchEnv, sink: SmtpSink, senders: int, count: int) -> float:
    """Seconds for `senders` processes to hand `count` recovery emails to the sink."""
    procs = []
    for n in range(senders):
        share = count // senders + (1 if n < count % senders else 0)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.dispatch",
                "send-floor",
                "--port",
                str(sink.port),
                "--count",
                str(share),
            ],
            cwd=ROOT,
            env=_child_env({}),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        procs.append(proc)
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("floor sender did not start")
    before = len(sink.messages)
    started = time.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    sink.wait_for(before + count, timeout=600)
    elapsed = time.perf_counter() - started
    for proc in procs:
        if proc.wait(timeout=60) != 0:
            raise RuntimeError("floor sender failed")
    return elapsed


def measure(env: BenchEnv) -> list[Figure]:
    if not env.has_postgresql:
        raise RuntimeError("the dispatcher figures need PostgreSQL")
    sizes = env.sizes
    count = sizes.dispatch_emails
    sink = env.smtp_sink()
    figures = []
    for workers in (1, 2):
        product: list[float] = []
        floor: list[float] = []
        for run in range(sizes.runs):
            tag = f"{workers}w{run}"
            if run % 2 == 0:
                product.append(count / _product_run(env, sink, workers, count, tag))
                floor.append(count / _floor_run(env, sink, workers, count))
            else:
                floor.append(count / _floor_run(env, sink, workers, count))
                product.append(count / _product_run(env, sink, workers, count, tag))
            sink.clear()
        figures.append(
            Figure(
                name=f"dispatch_emails_per_s_{workers}w",
                unit="emails/s",
                runs=product,
                floor=Floor(
                    f"plain SMTP sends by {workers} process(es), {MAX_CONCURRENT_SENDS} at a time "
                    "each",
                    "emails/s",
                    floor,
                ),
                ratio_runs=[p / f for p, f in zip(product, floor, strict=True)],
                description=(
                    f"{count:,} requested attempts for known addresses dispatched by {workers} "
                    "`recovery worker` process(es) on PostgreSQL to a real SMTP sink on loopback "
                    "(throttle checks, account lookup, token, rendering in the attempt's language, "
                    "send, `dispatch` transition with the token stored)."
                ),
            )
        )
    return figures


# -- the floor's sender process ---------------------------------------------------------


async def _send_all(port: int, count: int) -> None:
    message = _message("someone@example.com")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch")
    commands = parser.add_subparsers(dest="command", required=True)
    floor = commands.add_parser("send-floor", help="send N emails once 'go' is read on stdin")
    floor.add_argument("--port", type=int, required=True)
    floor.add_argument("--count", type=int, required=True)
    args = parser.parse_args(argv)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    asyncio.run(_send_all(args.port, args.count))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
