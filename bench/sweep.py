"""`sweep_100k_s_*`: how long the engine's bulk sweep takes to expire 100,000 overdue attempts.

Each run loads 100,000 overdue `emailed` attempts (each with its `start` and
`dispatch` events, as the product leaves them) beside 10,000 live ones that
must not move, then times `Engine.sweep_sync()` (set-based statements in
batches). The floor is the cheapest correct hand-written version: one
transaction holding one `INSERT ... SELECT` of the `expire` events and one
`UPDATE` of the rows, no batching. Engine and floor each get a freshly
loaded table, in alternating order.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, insert, literal, select, update

import flows
from bench.env import BenchEnv, attempt_row, bulk_insert, start_event
from bench.harness import Figure, Floor
from engine import Database, Engine
from engine.core import attempt_t, event_t

LIVE_EXTRA = 10_000
DATA = {
    "email_submitted": "someone@example.com",
    "client_ip": "127.0.0.1",
    "user_agent": "bench",
    "delivery": {"status": "sent", "tries": 1, "last_error": None, "sent_at": None},
}


def _load(db: Database, overdue: int, live: int) -> datetime:
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for i in range(overdue + live):
        created = now - timedelta(hours=2) + timedelta(microseconds=i)
        deadline = now - timedelta(minutes=5) if i < overdue else now + timedelta(hours=1)
        rows.append(
            attempt_row(
                state="emailed",
                created_at=created,
                subject=f"user{i}@example.com",
                deadline_at=deadline,
                data=DATA,
                version=2,
            )
        )

    def events() -> Any:
        for row in rows:
            yield start_event(row) | {"to_state": "requested"}
            yield start_event(row) | {
                "seq": 2,
                "event": "dispatch",
                "from_state": "requested",
                "to_state": "emailed",
                "actor": "system",
            }

    bulk_insert(db, rows, events())
    return now


def floor_sweep(db: Database, now: datetime) -> int:
    """Expire every overdue `emailed` attempt in one transaction, by hand."""
    overdue = and_(
        attempt_t.c.flow == "password_recovery",
        attempt_t.c.state == "emailed",
        attempt_t.c.deadline_at < now,
    )
    seq = (
        select(func.coalesce(func.max(event_t.c.seq), 0) + 1)
        .where(event_t.c.attempt_id == attempt_t.c.id)
        .scalar_subquery()
    )
    with db.transaction() as conn:
        conn.execute(
            insert(event_t).from_select(
                [
                    "attempt_id",
                    "seq",
                    "event",
                    "from_state",
                    "to_state",
                    "actor",
                    "at",
                    "accepted",
                    "detail",
                ],
                select(
                    attempt_t.c.id,
                    seq,
                    literal("expire"),
                    attempt_t.c.state,
                    literal("expired"),
                    literal("system"),
                    literal(now, type_=event_t.c.at.type),
                    literal(True),
                    literal({"sweep": True}, type_=event_t.c.detail.type),
                ).where(overdue),
            )
        )
        done = conn.execute(
            update(attempt_t)
            .where(overdue)
            .values(
                state="expired",
                version=attempt_t.c.version + 1,
                updated_at=now,
                deadline_at=None,
            )
        )
        return int(done.rowcount)


def _expired_count(db: Database) -> int:
    with db.transaction(write=False) as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(attempt_t).where(attempt_t.c.state == "expired")
            ).scalar_one()
        )


def measure(env: BenchEnv, backend: str) -> Figure:
    """`sweep_100k_s_<backend>` (the quick run sweeps fewer rows under the same name)."""
    sizes = env.sizes
    n = sizes.sweep_rows
    live = min(LIVE_EXTRA, max(1, n // 10))
    engine_runs: list[float] = []
    floor_runs: list[float] = []
    template = env.fresh_url(backend, f"sweep_{backend}")
    loader = Database(template)
    try:
        now = _load(loader, n, live)
    finally:
        loader.close()
    for run in range(sizes.runs):
        order = ("engine", "floor") if run % 2 == 0 else ("floor", "engine")
        for who in order:
            url = env.clone(template, f"sweep_{backend}_{who}")
            db = Database(url)
            try:
                started = time.perf_counter()
                if who == "engine":
                    moved = Engine(db, flows.registry()).sweep_sync()
                else:
                    moved = floor_sweep(db, max(now, datetime.now(UTC)))
                elapsed = time.perf_counter() - started
                if moved != n or _expired_count(db) != n:
                    raise RuntimeError(f"{who} sweep moved {moved} rows, expected {n}")
            finally:
                db.close()
                env.drop(url)
            (engine_runs if who == "engine" else floor_runs).append(elapsed)
    env.drop(template)
    ratios = [e / f for e, f in zip(engine_runs, floor_runs, strict=True)]
    return Figure(
        name="sweep_100k_s_" + backend,
        unit="s",
        runs=engine_runs,
        target="< 5",
        better="lower",
        threshold=5.0,
        inclusive=False,
        floor=Floor("one hand-written INSERT ... SELECT + UPDATE transaction", "s", floor_runs),
        ratio_runs=ratios,
        description=(
            f"`Engine.sweep_sync()` expiring {n:,} overdue attempts (beside {live:,} live ones "
            "that stay put), event rows included, batches of 5,000; each run on a fresh copy "
            "of one loaded database."
        ),
        detail={"rows": n, "rows per second": [n / r for r in engine_runs]},
    )
