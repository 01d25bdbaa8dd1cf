"""`support_list_p95_ms_1m_*`: the support list's first page and page 1,000 over a million attempts.

One database per backend is loaded with 1,000,000 attempts spread over 30
days in the mix a live service accumulates (mostly final states; the few
live ones have deadlines still ahead, so the list's lazy sweep finds nothing
to move). Each run then asks, alternately, for the first page of `expired`
attempts and for page 1,000 (the keyset cursor a client holds after 999
pages, taken from the row just before it), through the product's
`SupportService.list_attempts_sync` (its lazy sweep and its audit entry
included), and through the floor: one hand-written keyset query of the same
rows on the same `Database`.
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, tuple_

import flows
from api.support.service import DEFAULT_PAGE, SupportService, decode_cursor, encode_cursor
from bench.env import BenchEnv, attempt_row, bulk_insert
from bench.harness import Figure, Floor, percentile
from engine import Database, Engine
from engine.core import attempt_t

STATE = "expired"
# (state, share): what a year of "Forgot password?" leaves behind, roughly.
MIX = (
    ("expired", 0.30),
    ("logged_in", 0.20),
    ("unknown_account", 0.20),
    ("throttled", 0.10),
    ("superseded", 0.10),
    ("cancelled", 0.03),
    ("undeliverable", 0.02),
    ("password_set", 0.02),
    ("emailed", 0.015),
    ("link_opened", 0.01),
    ("requested", 0.005),
)
LIVE = {"requested", "emailed", "link_opened"}
SAMPLES_PER_RUN = 100
KEY_NAME = "bench"
DATA = {"client_ip": "127.0.0.1", "user_agent": "bench", "delivery": {"status": "none"}}


def _rows(count: int, now: datetime) -> Iterator[dict[str, Any]]:
    rng = random.Random(6)
    states = [s for s, _ in MIX]
    cumulative = list(itertools.accumulate(w for _, w in MIX))
    span = timedelta(days=30).total_seconds()
    for i in range(count):
        state = states[min(bisect.bisect(cumulative, rng.random()), len(states) - 1)]
        created = now - timedelta(seconds=span * (1 - i / count)) - timedelta(minutes=61)
        deadline = now + timedelta(minutes=30) if state in LIVE else None
        yield attempt_row(
            state=state,
            created_at=created,
            subject=f"user{rng.randrange(200_000)}@example.com",
            deadline_at=deadline,
            data=DATA,
            attempt_id=uuid.UUID(int=rng.getrandbits(128), version=4),
        )


def floor_page(db: Database, cursor: tuple[datetime, uuid.UUID] | None, limit: int) -> list[Any]:
    """The same page, hand-written: one keyset query (as the product writes its condition)."""
    conditions: list[Any] = [attempt_t.c.state == STATE]
    if cursor is not None:
        created, last_id = cursor
        conditions.append(
            or_(
                attempt_t.c.created_at < created,
                and_(attempt_t.c.created_at == created, attempt_t.c.id < last_id),
            )
        )
    query = (
        select(attempt_t)
        .where(*conditions)
        .order_by(attempt_t.c.created_at.desc(), attempt_t.c.id.desc())
        .limit(limit + 1)
    )
    with db.transaction(write=False) as conn:
        return list(conn.execute(query))


def row_value_page(
    db: Database, cursor: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[Any]:
    """The same page with a row-value cursor condition, which an index range can start from."""
    conditions: list[Any] = [attempt_t.c.state == STATE]
    if cursor is not None:
        conditions.append(tuple_(attempt_t.c.created_at, attempt_t.c.id) < tuple_(*cursor))
    query = (
        select(attempt_t)
        .where(*conditions)
        .order_by(attempt_t.c.created_at.desc(), attempt_t.c.id.desc())
        .limit(limit + 1)
    )
    with db.transaction(write=False) as conn:
        return list(conn.execute(query))


def _deep_cursor(db: Database, page: int, limit: int) -> str:
    """The cursor a client holds after reading `page - 1` pages: the last row before page `page`."""
    offset = (page - 1) * limit - 1
    with db.transaction(write=False) as conn:
        row = conn.execute(
            select(attempt_t.c.created_at, attempt_t.c.id)
            .where(attempt_t.c.state == STATE)
            .order_by(attempt_t.c.created_at.desc(), attempt_t.c.id.desc())
            .offset(offset)
            .limit(1)
        ).one()
    return encode_cursor(row.created_at, row.id)


def _timed(fn: Any, *args: Any, **kw: Any) -> float:
    started = time.perf_counter()
    fn(*args, **kw)
    return (time.perf_counter() - started) * 1000.0


def measure(env: BenchEnv, backend: str) -> Figure:
    """`support_list_p95_ms_1m_<backend>` (the quick run loads fewer rows under the same name)."""
    sizes = env.sizes
    count = sizes.list_rows
    samples = SAMPLES_PER_RUN if not sizes.quick else 10
    page = sizes.list_deep_page
    load_started = time.perf_counter()
    with env.database(backend, f"list_{backend}") as db:
        now = datetime.now(UTC)
        bulk_insert(db, _rows(count, now))
        load_s = time.perf_counter() - load_started
        support = SupportService(Engine(db, flows.registry()))
        deep = _deep_cursor(db, page, DEFAULT_PAGE)
        deep_key = decode_cursor(deep)
        product_runs: list[float] = []
        floor_runs: list[float] = []
        row_value_runs: list[float] = []
        first_p95: list[float] = []
        deep_p95: list[float] = []
        # Warm-up: the first queries read pages from disk into the caches.
        for cursor in (None, deep):
            support.list_attempts_sync(KEY_NAME, state=STATE, cursor=cursor)
        for _ in range(sizes.runs):
            product: dict[str, list[float]] = {"first": [], "deep": []}
            floor: list[float] = []
            row_value: list[float] = []
            for i in range(samples):
                which = "first" if i % 2 == 0 else "deep"
                cursor = None if which == "first" else deep
                key = None if which == "first" else deep_key
                product[which].append(
                    _timed(support.list_attempts_sync, KEY_NAME, state=STATE, cursor=cursor)
                )
                floor.append(_timed(floor_page, db, key, DEFAULT_PAGE))
                row_value.append(_timed(row_value_page, db, key, DEFAULT_PAGE))
            both = product["first"] + product["deep"]
            product_runs.append(percentile(both, 95))
            first_p95.append(percentile(product["first"], 95))
            deep_p95.append(percentile(product["deep"], 95))
            floor_runs.append(percentile(floor, 95))
            row_value_runs.append(percentile(row_value, 95))
    return Figure(
        name=f"support_list_p95_ms_1m_{backend}",
        unit="ms",
        runs=product_runs,
        target="< 20",
        better="lower",
        threshold=20.0,
        inclusive=False,
        floor=Floor(
            "hand-written keyset query of the same page, same Database", "ms p95", floor_runs
        ),
        ratio_runs=[p / f for p, f in zip(product_runs, floor_runs, strict=True)],
        description=(
            f"p95 of `SupportService.list_attempts_sync(state='{STATE}')` (lazy sweep and audit "
            f"entry included), first page and page {page:,} ({DEFAULT_PAGE} a page) alternately, "
            f"{samples} calls per run, over {count:,} attempts."
        ),
        detail={
            "first page p95 ms": first_p95,
            f"page {page} p95 ms": deep_p95,
            "row-value cursor query p95 ms": row_value_runs,
            "load seconds (bulk)": load_s,
        },
    )
