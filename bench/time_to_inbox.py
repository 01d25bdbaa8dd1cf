"""`time_to_inbox_p99_s`: from a request's 202 to its email accepted by the SMTP server, under load.

The deployment is the production one on PostgreSQL (SQLite when no server is
installed): `recovery serve --no-dispatcher` answering the API, one `recovery
worker` sending the mail, a real SMTP sink on loopback that stamps each
message when it accepts it. Every address the load uses has an account and
is used once, so every request leads to exactly one email (no throttle
fires) and the email's recipient says which request it answers.

Per run, an open-loop load (`python -m bench.lean_http open-loop`, its own
process) sends `POST /api/recovery` at 80 % of the capacity measured earlier
in the same run (`bench.request_path.request_capacity`: known addresses,
same backend, wrk at 16 connections) for `inbox_seconds` (60 s; a second in
`--quick`): request i is due at i/rate whatever the server does, as real
users are. Then the run waits for the queue to drain (at most
`inbox_drain_timeout_s`). For each accepted request, time to inbox is the
sink's acceptance time minus the time its 202 arrived (one wall clock, one
machine). A message still missing when the wait ends counts with the time
waited so far, a lower bound, and the detail says how many (`censored`).
Meanwhile a thread counts the `requested` attempts in the database every
`QUEUE_SAMPLE_S`: the queue depth, whose maximum is reported (bounded, or
growing with the load?).

The value is the median over runs of each run's p99 (p50 in the detail);
target `< 2` s. The floor is the mail leg alone at the same rate: the SMTP
floor of `bench.floors` sending rendered recovery emails open loop at that
rate over the dispatcher's number of persistent connections, from when each
is due to when the sink accepts it, p99, interleaved with the runs.

A run that leaves mail behind gets a fresh database, server and worker for
the next one, so no run starts on another's backlog.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import func, select

from bench.env import BenchEnv
from bench.floors import SmtpFloor
from bench.harness import Figure, Floor, median, percentile
from bench.product import (
    FLOW,
    MAX_CONCURRENT_SENDS,
    Database,
    attempt_t,
    child_env,
    recovery_command,
)
from bench.request_path import product_program, request_capacity, seed_accounts
from bench.server import ROOT, BenchServer
from tests.support.smtp import SmtpSink

LOAD_SHARE = 0.8
QUEUE_SAMPLE_S = 0.25
WORKER_READY = "mail worker started"
ADDRESS_FORMAT = "i%08d@example.com"


def queue_depth(db: Database) -> int:
    """Attempts of the recovery flow still `requested` (waiting for the dispatcher)."""
    with db.transaction(write=False) as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(attempt_t)
                .where(attempt_t.c.flow == FLOW, attempt_t.c.state == "requested")
            ).scalar_one()
        )


class QueueSampler:
    """A thread counting the queue every `interval` seconds: (time.time(), depth) samples."""

    def __init__(self, url: str, interval: float = QUEUE_SAMPLE_S) -> None:
        self.db = Database(url, pool_size=1)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a busy moment must not end the sampling
                self.samples.append((time.time(), queue_depth(self.db)))
            self._stop.wait(self.interval)

    def start(self) -> QueueSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.db.close()

    def max_between(self, start: float, end: float) -> int:
        return max((d for t, d in self.samples if start <= t <= end), default=0)


@dataclass
class Deployment:
    """One database, one API server, one worker, one queue sampler."""

    url: str
    server: BenchServer
    worker: subprocess.Popen[bytes]
    worker_log: IO[bytes]
    sampler: QueueSampler
    next_address: int = 0

    def stop(self) -> None:
        self.sampler.stop()
        self.worker.terminate()
        try:
            self.worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait()
        self.worker_log.close()
        self.server.stop()


def _deploy(env: BenchEnv, backend: str, sink: SmtpSink, accounts: int, tag: str) -> Deployment:
    url = env.fresh_url(backend, f"inbox_{tag}")
    seed_accounts(url, [ADDRESS_FORMAT % i for i in range(accounts)])
    settings = {"RECOVERY_DATABASE_URL": url, "RECOVERY_MAIL_URL": sink.url}
    server = BenchServer(
        settings,
        dispatcher=False,
        log_dir=env.tmp,
        label=f"inbox-{tag}",
        program=product_program("--no-dispatcher"),
    ).spawn()
    log_path = env.tmp / f"inbox-worker-{tag}.log"
    log = log_path.open("wb")
    worker = subprocess.Popen(
        [*recovery_command(), "worker"],
        cwd=ROOT,
        env=child_env({**settings, "RECOVERY_PUBLIC_BASE_URL": server.base_url}),
        stdout=log,
        stderr=log,
    )
    try:
        server.wait_ready()
        deadline = time.monotonic() + 60
        while WORKER_READY not in log_path.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {log_path.read_text()[-1500:]}")
            time.sleep(0.05)
    except BaseException:
        worker.kill()
        worker.wait()
        log.close()
        server.stop()
        raise
    sampler = QueueSampler(url).start()
    return Deployment(url, server, worker, log, sampler)


@dataclass
class RunOutcome:
    p50_s: float
    p99_s: float
    accepted: int
    refused: int
    censored: int
    queue_max: int
    queue_at_load_end: int
    generator_late_s: float
    connections: int
    most_at_once: int


def _load(
    env: BenchEnv, deployment: Deployment, rate: float, count: int, tag: str
) -> dict[str, Any]:
    out = env.tmp / f"inbox-load-{tag}.json"
    with (env.tmp / f"inbox-load-{tag}.log").open("wb") as log:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.lean_http",
                "open-loop",
                "--port",
                str(deployment.server.port),
                "--rate",
                f"{rate:.3f}",
                "--count",
                str(count),
                "--email-format",
                ADDRESS_FORMAT,
                "--offset",
                str(deployment.next_address),
                "--out",
                str(out),
            ],
            cwd=ROOT,
            env=child_env(),
            stdout=log,
            stderr=log,
            check=True,
            timeout=count / rate + 300,
        )
    deployment.next_address += count
    return dict(json.loads(out.read_text()))


def _run(
    env: BenchEnv, deployment: Deployment, sink: SmtpSink, rate: float, count: int, tag: str
) -> RunOutcome:
    sink.clear()
    load_started = time.time()
    load = _load(env, deployment, rate, count, tag)
    load_ended = time.time()
    answered = {r["label"]: r["done"] for r in load["results"] if r["status"] == 202}
    refused = len(load["results"]) - len(answered)
    # Wait for the mail of every accepted request, or for the drain timeout.
    deadline = time.monotonic() + env.sizes.inbox_drain_timeout_s
    with contextlib.suppress(TimeoutError):
        sink.wait_for(len(answered), timeout=max(0.0, deadline - time.monotonic()))
    waited_until = time.time()
    received: dict[str, float] = {}
    for receipt in list(sink.receipts):
        for rcpt in receipt.envelope_rcpts:
            received.setdefault(rcpt, receipt.received_at)
    times = [received.get(address, waited_until) - done for address, done in answered.items()]
    censored = sum(1 for address in answered if address not in received)
    at_end = [d for t, d in deployment.sampler.samples if t <= load_ended]
    return RunOutcome(
        p50_s=percentile(times, 50),
        p99_s=percentile(times, 99),
        accepted=len(answered),
        refused=refused,
        censored=censored,
        queue_max=deployment.sampler.max_between(load_started, waited_until),
        queue_at_load_end=at_end[-1] if at_end else 0,
        generator_late_s=float(load["most_late_s"]),
        connections=int(load["connections"]),
        most_at_once=int(load["most_connections_at_once"]),
    )


def _floor_run(env: BenchEnv, sink: SmtpSink, rate: float, tag: str) -> tuple[float, float]:
    """p50 and p99 seconds from due to accepted, SMTP floor open loop at `rate`."""
    count = max(1, math.ceil(rate * env.sizes.inbox_floor_seconds))
    sink.clear()
    floor = SmtpFloor(
        sink.port, senders=1, count=count, rate=rate, times_dir=env.tmp, tag=f"inbox{tag}"
    )
    try:
        floor.go()
        floor.wait(timeout=count / rate + 300)
        sink.wait_for(count, timeout=60)
    finally:
        floor.kill()
    due = floor.due_times()
    received = {r.envelope_rcpts[0]: r.received_at for r in list(sink.receipts)}
    times = [received[address] - at for address, at in due.items()]
    return percentile(times, 50), percentile(times, 99)


def measure(env: BenchEnv) -> list[Figure]:
    """`time_to_inbox_p99_s` with its floor; the rate comes from this run's request capacity."""
    sizes = env.sizes
    backend = "postgresql" if env.has_postgresql else "sqlite"
    capacity = median(request_capacity(env, backend))
    rate = LOAD_SHARE * capacity
    count = max(1, math.ceil(rate * sizes.inbox_seconds))
    sink = env.smtp_sink(keep_messages=False)
    outcomes: list[RunOutcome] = []
    floors: list[tuple[float, float]] = []
    deployment: Deployment | None = None
    try:
        for run in range(sizes.runs):
            if run % 2 == 1:
                floors.append(_floor_run(env, sink, rate, str(run)))
            if deployment is None:
                # Accounts for every run this deployment may serve.
                deployment = _deploy(env, backend, sink, count * (sizes.runs - run), f"r{run}")
            outcome = _run(env, deployment, sink, rate, count, f"r{run}")
            outcomes.append(outcome)
            if outcome.censored:
                deployment.stop()
                deployment = None
            if run % 2 == 0:
                floors.append(_floor_run(env, sink, rate, str(run)))
    finally:
        if deployment is not None:
            deployment.stop()
    p99 = [o.p99_s for o in outcomes]
    floor_p99 = [f[1] for f in floors]
    return [
        Figure(
            name="time_to_inbox_p99_s",
            unit="s",
            runs=p99,
            target="< 2",
            better="lower",
            threshold=2.0,
            inclusive=False,
            floor=Floor(
                "plain aiosmtplib, open loop at the same rate over "
                f"{MAX_CONCURRENT_SENDS} persistent connections: due to accepted, p99",
                "s",
                floor_p99,
            ),
            ratio_runs=[p / f for p, f in zip(p99, floor_p99, strict=True)],
            description=(
                f"Request accepted (202 received) to email accepted by the SMTP sink, p99, while "
                f"an open-loop load sends POST /api/recovery for known addresses at "
                f"{LOAD_SHARE:.0%} of this run's measured capacity for {sizes.inbox_seconds:g} s; "
                f"{backend}, `recovery serve --no-dispatcher` and one `recovery worker`."
            ),
            detail={
                "backend": backend,
                "capacity req/s (known addresses, this run)": capacity,
                "offered req/s": rate,
                "requests per run": count,
                "p50 s": [o.p50_s for o in outcomes],
                "floor p50 s": [f[0] for f in floors],
                "queue depth max (sampled from the database)": [o.queue_max for o in outcomes],
                "queue depth when the load ended": [o.queue_at_load_end for o in outcomes],
                "queue depth max over the whole run": max(o.queue_max for o in outcomes),
                "accepted (202)": [o.accepted for o in outcomes],
                "refused (not 202)": [o.refused for o in outcomes],
                "censored (mail still missing after the drain wait; counted as that wait)": [
                    o.censored for o in outcomes
                ],
                "load generator: most behind schedule s": [o.generator_late_s for o in outcomes],
                "load generator: connections opened": [o.connections for o in outcomes],
                "load generator: most connections at once": [o.most_at_once for o in outcomes],
            },
        )
    ]
