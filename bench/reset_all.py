"""`reset_all_100k_s`: a forced reset after a breach, `recovery reset-all` (SPEC §9, issue 17 §5).

The section runs only once the command exists in this build (`recovery
reset-all --help` exits 0); until then it is reported as skipped, with that
reason, and the run goes on.

Per run, on a fresh PostgreSQL database (SQLite when no server is
installed) holding `reset_all_accounts` accounts (100,000; 200 in `--quick`),
one `recovery worker` is started and left idle until it is up; then the
clock starts and `recovery reset-all` (every account: no `--accounts`) runs
to its end, while the worker sends. The command resets the accounts and
queues one recovery email each through the normal flow, so the run ends when
the real SMTP sink on loopback has accepted one email per account.

- The value is the seconds from the command's start to the last email
  accepted. The detail has the command's own time (accounts marked per
  second), the emails per second from the first email to the last, and the
  command's last line of output (its summary).
- The floor is the least time those emails can take: the same number of
  rendered recovery emails sent by plain aiosmtplib over the dispatcher's
  number of persistent connections (`bench.floors`), measured before and
  after each run; the ratio is the run over the mean of the two. One run
  (`reset_all_runs`): 100,000 emails take minutes.

The accounts have no sessions to end: what the command does per account
beyond queuing the email (sessions, the unusable password) is charged as it
comes.
"""

from __future__ import annotations

import math
import subprocess
import time
from typing import Any

from bench.env import BenchEnv
from bench.floors import smtp_floor_seconds
from bench.harness import Figure, Floor, SectionSkipped
from bench.product import MAX_CONCURRENT_SENDS, child_env, has_command, recovery_command
from bench.request_path import seed_accounts
from bench.server import ROOT
from bench.time_to_inbox import WORKER_READY
from tests.support.smtp import SmtpSink

COMMAND = "reset-all"
SKIPPED = "recovery reset-all is not in this build"
ADDRESS_FORMAT = "r%07d@example.com"
COMMAND_TIMEOUT_S = 3600.0


def _run(env: BenchEnv, sink: SmtpSink, backend: str, accounts: int, tag: str) -> dict[str, Any]:
    url = env.fresh_url(backend, f"reset_all_{tag}")
    seed_accounts(url, [ADDRESS_FORMAT % i for i in range(accounts)])
    settings = child_env({"RECOVERY_DATABASE_URL": url, "RECOVERY_MAIL_URL": sink.url})
    log_path = env.tmp / f"reset-all-worker-{tag}.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [*recovery_command(), "worker"], cwd=ROOT, env=settings, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 60
            while WORKER_READY not in log_path.read_text(errors="replace"):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start: {log_path.read_text()[-1500:]}")
                time.sleep(0.05)
            sink.clear()
            started_wall, started = time.time(), time.perf_counter()
            done = subprocess.run(
                [*recovery_command(), COMMAND],
                cwd=ROOT,
                env=settings,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
            )
            command_s = time.perf_counter() - started
            if done.returncode != 0:
                raise RuntimeError(f"recovery {COMMAND} failed: {done.stderr.strip()[-500:]}")
            sink.wait_for(accounts, timeout=COMMAND_TIMEOUT_S)
            receipts = list(sink.receipts)
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    first = min(r.received_at for r in receipts)
    last = max(r.received_at for r in receipts)
    lines = done.stdout.strip().splitlines()
    return {
        "seconds": last - started_wall,
        "command_s": command_s,
        "emails_per_s": (len(receipts) - 1) / (last - first) if last > first else math.nan,
        "summary": lines[-1] if lines else "",
    }


def measure(env: BenchEnv) -> list[Figure]:
    if not has_command(COMMAND):
        raise SectionSkipped(SKIPPED)
    sizes = env.sizes
    accounts = sizes.reset_all_accounts
    backend = "postgresql" if env.has_postgresql else "sqlite"
    sink = env.smtp_sink(keep_messages=False)
    runs: list[dict[str, Any]] = []
    floors: list[float] = []
    for run in range(sizes.reset_all_runs):
        # A floor before and after each run, so drift favours neither side.
        floors.append(smtp_floor_seconds(sink, senders=1, count=accounts))
        sink.clear()
        runs.append(_run(env, sink, backend, accounts, str(run)))
        sink.clear()
    floors.append(smtp_floor_seconds(sink, senders=1, count=accounts))
    sink.clear()
    # Each run against the mean of the floors on either side of it.
    around = [(floors[n] + floors[n + 1]) / 2 for n in range(len(runs))]
    seconds = [r["seconds"] for r in runs]
    return [
        Figure(
            name="reset_all_100k_s",
            unit="s",
            runs=seconds,
            floor=Floor(
                f"{accounts:,} rendered recovery emails by plain aiosmtplib over "
                f"{MAX_CONCURRENT_SENDS} persistent connections",
                "s",
                floors,
            ),
            ratio_runs=[s / f for s, f in zip(seconds, around, strict=True)],
            description=(
                f"`recovery {COMMAND}` for all {accounts:,} accounts on {backend}, one "
                "`recovery worker` sending: seconds from the command's start until the SMTP "
                "sink accepted the last of the emails (one per account)."
            ),
            detail={
                "command seconds": [r["command_s"] for r in runs],
                "accounts marked per second": [accounts / r["command_s"] for r in runs],
                "emails per second, first to last": [r["emails_per_s"] for r in runs],
                "summary line": [r["summary"] for r in runs],
            },
        )
    ]
