"""`enumeration_median_diff_ms_while_sending`: can timing tell accounts apart while mail goes out?

An attacker timing "Forgot password?" answers would measure when the service
is busy, and the busiest moment of the request path's neighbour is the
dispatcher working through a backlog. So `recovery serve` runs in its
default configuration (SQLite, the dispatcher in-process, mail to a real SMTP
sink on loopback), and before each run the queue is topped up with
`requested` attempts for other accounts to a backlog big enough that the
dispatcher is still sending when the run ends (the queue depth at the start
and end of each run is in the detail; a backlog that ran dry is doubled for
the next run).

Each run sends, one at a time over one keep-alive connection per server (the
lean client of `bench.lean_http`), known addresses (a fresh account each
time, so each also leads to a real email) and unknown addresses (fresh, same
length) to the product, and the same two kinds to the bare INSERT floor of
`bench.floors` on its own SQLite file, shuffled within each group of four.

- The value, per run, is the absolute difference between the product's
  median latencies for known and unknown addresses; target `< 1` ms. The
  two-sided Mann-Whitney U p-value of the two samples is in the detail (the
  issue asks for p > 0.01).
- The floor is the same difference on the bare INSERT floor, measured in the
  same moments by the same client: it does provably identical work for both
  kinds, so its difference is what measurement noise alone produces on this
  machine while the product is sending. No ratio is given: a ratio of two
  differences near zero means nothing; compare the values.
"""

from __future__ import annotations

import contextlib
import random
import time
from typing import Any

from scipy.stats import mannwhitneyu

from bench.dispatch import requested_rows
from bench.env import BenchEnv, bulk_insert, insert_accounts, start_event
from bench.floors import INSERT_PATH, bare_insert_program
from bench.harness import Figure, Floor, median
from bench.lean_http import Connection, post_json
from bench.product import Database
from bench.request_path import PASSWORD_HASH, product_program, seed_accounts
from bench.server import BenchServer
from bench.time_to_inbox import queue_depth

KNOWN = "k%07d@example.com"
UNKNOWN = "u%07d@example.com"
BACKLOG = "b%07d@example.com"
WARM_UP = 10
# Assumed dispatcher speed for the first backlog (emails/s); adapted run by run.
ASSUMED_EMAILS_PER_S = 150
MIN_BACKLOG = 100
CELLS = ("product known", "product unknown", "floor known", "floor unknown")


def _commit_backlog(db: Database, first: int, size: int) -> None:
    """Accounts and `requested` attempts for `size` new backlog addresses, one transaction each."""
    addresses = [BACKLOG % i for i in range(first, first + size)]
    insert_accounts(db, addresses, PASSWORD_HASH)
    rows = requested_rows(addresses)
    bulk_insert(db, rows, [start_event(r) for r in rows], rebuild_indexes=False)


def _wait_sending(db: Database, committed: int, timeout: float = 10.0) -> None:
    """Until the dispatcher has visibly started on the backlog (the queue shrank)."""
    deadline = time.monotonic() + timeout
    while queue_depth(db) >= committed and time.monotonic() < deadline:
        time.sleep(0.05)


def _requests(
    product: BenchServer,
    floor: BenchServer,
    per_kind: int,
    offset: int,
    rng: random.Random,
) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {cell: [] for cell in CELLS}
    answers: dict[str, tuple[int, bytes]] = {}
    with Connection(product.port) as to_product, Connection(floor.port) as to_floor:
        targets = {"product": (to_product, product.port), "floor": (to_floor, floor.port)}
        for i in range(per_kind):
            order = list(CELLS)
            rng.shuffle(order)
            for cell in order:
                server, kind = cell.split()
                conn, port = targets[server]
                email = (KNOWN if kind == "known" else UNKNOWN) % (offset + i)
                raw = post_json(port, INSERT_PATH, {"email": email})
                status, body, seconds = conn.exchange(raw)
                seen = answers.setdefault(server, (status, body))
                if (status, body) != seen:
                    raise RuntimeError(f"{cell}: answer {status} {body!r}, before {seen!r}")
                latencies[cell].append(seconds * 1000.0)
    return latencies


def _p(a: list[float], b: list[float]) -> float:
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def measure(env: BenchEnv) -> list[Figure]:
    sizes = env.sizes
    per_kind = sizes.enumeration_per_class
    sink = env.smtp_sink(keep_messages=False)
    product_url = env.fresh_url("sqlite", "enum_sending")
    seed_accounts(product_url, [KNOWN % i for i in range(per_kind * sizes.runs + WARM_UP)])
    floor_url = env.fresh_url("sqlite", "enum_sending_floor")
    product = BenchServer(
        {"RECOVERY_DATABASE_URL": product_url, "RECOVERY_MAIL_URL": sink.url},
        dispatcher=True,
        log_dir=env.tmp,
        label="enumeration-sending",
        program=product_program(),
    )
    floor = BenchServer(
        {},
        dispatcher=False,
        log_dir=env.tmp,
        label="enumeration-sending-floor",
        program=bare_insert_program(floor_url),
        ready_path=INSERT_PATH,
        ready_any_status=True,
    )
    rng = random.Random(1717)
    runs: list[dict[str, list[float]]] = []
    depths: list[tuple[int, int]] = []
    backlogs: list[int] = []
    db = Database(product_url, pool_size=2)
    with contextlib.ExitStack() as stack:
        stack.callback(db.close)
        for server in (product, floor):
            stack.callback(server.stop)
            server.spawn()
        for server in (product, floor):
            server.wait_ready()
        _requests(product, floor, WARM_UP, 0, rng)
        offset, next_backlog = WARM_UP, 0
        # Requests take a few ms each; the first backlog is sized for a slow run.
        backlog = max(MIN_BACKLOG, int(ASSUMED_EMAILS_PER_S * per_kind * len(CELLS) * 0.01))
        for _ in range(sizes.runs):
            # Top the queue up to `backlog`, so every run starts with the same depth.
            top_up = max(0, backlog - queue_depth(db))
            if top_up:
                _commit_backlog(db, next_backlog, top_up)
                next_backlog += top_up
                _wait_sending(db, queue_depth(db))
            backlogs.append(top_up)
            at_start = queue_depth(db)
            runs.append(_requests(product, floor, per_kind, offset, rng))
            offset += per_kind
            at_end = queue_depth(db)
            depths.append((at_start, at_end))
            if at_end == 0:
                backlog *= 2
        emails = len(sink.receipts)
    diffs = [abs(median(r["product known"]) - median(r["product unknown"])) for r in runs]
    floor_diffs = [abs(median(r["floor known"]) - median(r["floor unknown"])) for r in runs]
    detail: dict[str, Any] = {
        "Mann-Whitney p, product known vs unknown": [
            _p(r["product known"], r["product unknown"]) for r in runs
        ],
        "Mann-Whitney p, floor known vs unknown": [
            _p(r["floor known"], r["floor unknown"]) for r in runs
        ],
        **{f"median ms, {cell}": [median(r[cell]) for r in runs] for cell in CELLS},
        "backlog committed before each run (topping the queue up)": backlogs,
        "queue depth at start, end of each run": depths,
        "sending throughout every run": all(end > 0 for _, end in depths),
        "emails the sink accepted": emails,
    }
    return [
        Figure(
            name="enumeration_median_diff_ms_while_sending",
            unit="ms",
            runs=diffs,
            target="< 1",
            better="lower",
            threshold=1.0,
            inclusive=False,
            floor=Floor(
                "the same difference on the bare INSERT floor, same moments, same client "
                "(measurement noise)",
                "ms",
                floor_diffs,
            ),
            description=(
                "Difference between the median POST /api/recovery latencies of known and "
                f"unknown addresses, {per_kind} of each per run, one at a time, while the "
                "in-process dispatcher of `recovery serve` (SQLite) sends a backlog to a real "
                "SMTP sink."
            ),
            detail=detail,
        )
    ]
