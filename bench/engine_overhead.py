"""`engine_overhead_ratio_*`: the engine's fire() against a hand-written transition.

The floor is what a careful person would write by hand with SQLAlchemy Core
for the same transition: one select (the row and its next event number), a
check that the event is allowed from the row's state, a versioned update, an
event insert, a commit. It runs through the same `Database` object as the
engine (same SQLAlchemy engine, same connection settings: WAL, synchronous,
`BEGIN IMMEDIATE` on SQLite; the same psycopg pool on PostgreSQL), in the
same thread, interleaved with the engine in blocks so drift hits both alike.

The event is `open_link` on attempts in `link_opened` (a self-transition with
a guard), so every fire is accepted and the attempts can be fired again and
again. The ratio is measured on the synchronous surface (`fire_sync`, what
the threads run); the async surface (`await engine.fire`, one thread hop
more for both) is reported beside it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update

import flows
from api.accounts.links import Link
from bench.env import BenchEnv, attempt_row, bulk_insert
from bench.harness import Figure, Floor
from engine import Database, Engine
from engine.core import attempt_t, event_t

EVENT = "open_link"
# The fact `open_link`'s guard decides on: a link that is neither used nor revoked.
LIVE_LINK = {
    "link": Link(
        token_hash="0" * 64,
        cancel_hash=None,
        attempt_id=uuid.UUID(int=0),
        account_id=uuid.UUID(int=0),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        used_at=None,
        revoked_at=None,
    )
}
# The flow's table of allowed moves, as a hand-written version would hold it.
ALLOWED = {("emailed", EVENT): "link_opened", ("link_opened", EVENT): "link_opened"}
DETAIL = {"method": "GET", "repeat": True, "suspected_automated": False}
DATA = {
    "email_submitted": "someone@example.com",
    "client_ip": "127.0.0.1",
    "user_agent": "Mozilla/5.0 (X11; Linux x86_64) bench",
    "delivery": {"status": "sent", "tries": 1, "last_error": None, "sent_at": None},
    "account_id": str(uuid.UUID(int=1)),
}
POOL = 500
BLOCK = 50

_next_seq = (
    select(func.coalesce(func.max(event_t.c.seq), 0) + 1)
    .where(event_t.c.attempt_id == attempt_t.c.id)
    .scalar_subquery()
)


def floor_transition(db: Database, attempt_id: uuid.UUID, now: datetime) -> None:
    """The same transition, hand-written: select, check, versioned update, event insert, commit."""
    with db.transaction() as conn:
        row = conn.execute(
            select(attempt_t.c.state, attempt_t.c.version, _next_seq.label("seq")).where(
                attempt_t.c.id == attempt_id
            )
        ).one()
        target = ALLOWED.get((row.state, EVENT))
        if target is None:
            raise RuntimeError(f"{EVENT} not allowed from {row.state}")
        done = conn.execute(
            update(attempt_t)
            .where(attempt_t.c.id == attempt_id, attempt_t.c.version == row.version)
            .values(state=target, version=row.version + 1, updated_at=now)
        )
        if done.rowcount != 1:
            raise RuntimeError("conflict")
        conn.execute(
            insert(event_t).values(
                attempt_id=attempt_id,
                seq=row.seq,
                event=EVENT,
                from_state=row.state,
                to_state=target,
                actor="person",
                at=now,
                accepted=True,
                detail=DETAIL,
            )
        )


_P_SELECT = select(attempt_t.c.state, attempt_t.c.version, _next_seq.label("seq")).where(
    attempt_t.c.id == bindparam("p_id", type_=attempt_t.c.id.type)
)
_P_UPDATE = (
    update(attempt_t)
    .where(
        attempt_t.c.id == bindparam("p_id", type_=attempt_t.c.id.type),
        attempt_t.c.version == bindparam("p_version"),
    )
    .values(
        state=bindparam("p_state"),
        version=bindparam("p_new_version"),
        updated_at=bindparam("p_now", type_=attempt_t.c.updated_at.type),
    )
)
_P_INSERT = insert(event_t).values(
    attempt_id=bindparam("p_id", type_=event_t.c.attempt_id.type),
    seq=bindparam("p_seq"),
    event=EVENT,
    from_state=bindparam("p_from"),
    to_state=bindparam("p_state"),
    actor="person",
    at=bindparam("p_now", type_=event_t.c.at.type),
    accepted=True,
    detail=bindparam("p_detail", type_=event_t.c.detail.type),
)


def floor_transition_prebuilt(db: Database, attempt_id: uuid.UUID, now: datetime) -> None:
    """The hand-written transition with its statements built once, as the engine builds its own."""
    with db.transaction() as conn:
        row = conn.execute(_P_SELECT, {"p_id": attempt_id}).one()
        target = ALLOWED.get((row.state, EVENT))
        if target is None:
            raise RuntimeError(f"{EVENT} not allowed from {row.state}")
        params = {"p_id": attempt_id, "p_version": row.version, "p_new_version": row.version + 1}
        done = conn.execute(_P_UPDATE, {**params, "p_state": target, "p_now": now})
        if done.rowcount != 1:
            raise RuntimeError("conflict")
        conn.execute(
            _P_INSERT,
            {
                "p_id": attempt_id,
                "p_seq": row.seq,
                "p_from": row.state,
                "p_state": target,
                "p_now": now,
                "p_detail": DETAIL,
            },
        )


def _seed(db: Database) -> list[uuid.UUID]:
    now = datetime.now(UTC)
    rows = [
        attempt_row(
            state="link_opened",
            created_at=now,
            subject=f"user{i}@example.com",
            deadline_at=now + timedelta(days=1),
            data=DATA,
            version=3,
        )
        for i in range(POOL)
    ]
    events = []
    for row in rows:
        for seq, (event, source, target) in enumerate(
            (
                ("start", None, "requested"),
                ("dispatch", "requested", "emailed"),
                ("open_link", "emailed", "link_opened"),
            ),
            start=1,
        ):
            events.append(
                {
                    "attempt_id": row["id"],
                    "seq": seq,
                    "event": event,
                    "from_state": source,
                    "to_state": target,
                    "actor": "person",
                    "at": now,
                    "accepted": True,
                    "detail": {},
                }
            )
    bulk_insert(db, rows, events)
    return [r["id"] for r in rows]


def _time_block(fn: Callable[[uuid.UUID], Any], ids: list[uuid.UUID]) -> float:
    started = time.perf_counter()
    for attempt_id in ids:
        fn(attempt_id)
    return time.perf_counter() - started


async def _time_block_async(fn: Callable[[uuid.UUID], Any], ids: list[uuid.UUID]) -> float:
    started = time.perf_counter()
    for attempt_id in ids:
        await fn(attempt_id)
    return time.perf_counter() - started


def _one_run(engine: Engine, ids: list[uuid.UUID], fires: int) -> dict[str, float]:
    """Interleaved blocks of engine and floor fires; seconds per fire for each surface."""
    db = engine.db

    def fire(attempt_id: uuid.UUID) -> None:
        engine.fire_sync(attempt_id, EVENT, actor="person", params=LIVE_LINK, detail=DETAIL)

    def floor(attempt_id: uuid.UUID) -> None:
        floor_transition(db, attempt_id, engine.clock.now())

    def floor_prebuilt(attempt_id: uuid.UUID) -> None:
        floor_transition_prebuilt(db, attempt_id, engine.clock.now())

    async def fire_async(attempt_id: uuid.UUID) -> None:
        await engine.fire(attempt_id, EVENT, actor="person", params=LIVE_LINK, detail=DETAIL)

    async def floor_async(attempt_id: uuid.UUID) -> None:
        await db.run(floor, attempt_id)

    totals = {
        "engine": 0.0,
        "floor": 0.0,
        "floor_prebuilt": 0.0,
        "engine_async": 0.0,
        "floor_async": 0.0,
    }
    blocks = max(1, fires // BLOCK)
    cursor = 0

    def take() -> list[uuid.UUID]:
        nonlocal cursor
        chunk = [ids[(cursor + i) % len(ids)] for i in range(min(BLOCK, fires))]
        cursor += len(chunk)
        return chunk

    for block in range(blocks):
        # Alternate who goes first, so warm caches and drift favour neither.
        order = ("engine", "floor") if block % 2 == 0 else ("floor", "engine")
        for who in order:
            totals[who] += _time_block(fire if who == "engine" else floor, take())
        totals["floor_prebuilt"] += _time_block(floor_prebuilt, take())

    async def run_async() -> None:
        # Half as many: this surface only adds the same thread hop to both sides.
        for block in range(max(1, blocks // 2)):
            order = ("engine", "floor") if block % 2 == 0 else ("floor", "engine")
            for who in order:
                fn = fire_async if who == "engine" else floor_async
                totals[f"{who}_async"] += await _time_block_async(fn, take())

    asyncio.run(run_async())
    per_fire = blocks * min(BLOCK, fires)
    per_async = max(1, blocks // 2) * min(BLOCK, fires)
    return {k: v / (per_async if k.endswith("_async") else per_fire) for k, v in totals.items()}


def measure(env: BenchEnv, backend: str) -> Figure:
    """`engine_overhead_ratio_<backend>`."""
    sizes = env.sizes
    with env.database(backend, f"overhead_{backend}") as db:
        ids = _seed(db)
        engine = Engine(db, flows.registry())
        _one_run(engine, ids, min(sizes.fires, 200))  # warm-up: caches, pools, JIT of statements
        runs = [_one_run(engine, ids, sizes.fires) for _ in range(sizes.runs)]
    ratios = [r["engine"] / r["floor"] for r in runs]
    async_ratios = [r["engine_async"] / r["floor_async"] for r in runs]
    threshold = 2.5 if backend == "sqlite" else 1.5
    return Figure(
        name=f"engine_overhead_ratio_{backend}",
        unit="x",
        runs=ratios,
        target=f"<= {threshold}",
        better="lower",
        threshold=threshold,
        floor=Floor(
            "hand-written SQLAlchemy Core transition, same Database",
            "µs/transition",
            [r["floor"] * 1e6 for r in runs],
        ),
        ratio_runs=ratios,
        description=(
            f"Engine `fire_sync('{EVENT}')` against a hand-written Core transition "
            "(select with next seq, check, versioned update, event insert, commit) on the same "
            f"`Database`, {sizes.fires} fires of each per run, interleaved in blocks of {BLOCK}. "
            "The floor builds its statements on each call, as idiomatic Core code does; the "
            "engine builds its hot statements once (the detail gives the ratio against a floor "
            "that does the same)."
        ),
        detail={
            "engine µs/fire": [r["engine"] * 1e6 for r in runs],
            "floor µs/fire": [r["floor"] * 1e6 for r in runs],
            "ratio against the floor with its statements built once": [
                r["engine"] / r["floor_prebuilt"] for r in runs
            ],
            "async surface ratio (await engine.fire vs await db.run(floor))": async_ratios,
            "async engine µs/fire": [r["engine_async"] * 1e6 for r in runs],
            "async floor µs/fire": [r["floor_async"] * 1e6 for r in runs],
        },
    )
