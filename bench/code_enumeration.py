"""`code_enumeration_median_diff_ms`, `code_enumeration_mannwhitney_p`: can the code endpoint's
timing tell accounts apart?

An attacker who wants to know whether an address has an account asks for a
recovery for it (POST /api/recovery), then types a code (POST
/api/recovery/code) and times the answer: the answer is the same 400 either
way, so only time could tell. The bench server (`recovery serve`'s full
configuration, SQLite) answers a wrong code for two kinds of address,
interleaved in a random order inside each pair, one request at a time over
one keep-alive connection:

- known: an address with an account whose newest attempt is emailed (its link
  row holds a live code);
- unknown: an address without an account whose newest attempt ended
  `unknown_account`.

Each address is tried once (fresh ones each time), so every try is judged and
counted, as an attacker's first try is. The attempts are prepared in the
database beforehand exactly as the worker leaves them (a link row with a code
digest, `dispatch` fired), so no email needs sending. Per run, the figure is
the difference between the two median latencies, and the two-sided
Mann-Whitney U p-value of the two samples (scipy).

The server keeps its default `RECOVERY_CODE_REFUSAL_FLOOR_MS` (50 ms): every
refusal is answered on the next multiple of it, so this measures what is left
of the difference once the product answers as it is shipped.
"""

from __future__ import annotations

import random
import secrets
import time
from datetime import UTC, datetime

import httpx
from scipy.stats import mannwhitneyu
from sqlalchemy import select

import flows
from api.accounts import codes, links
from api.accounts.models import Account
from api.accounts.passwords import Argon2Hasher
from bench.env import BenchEnv, insert_accounts
from bench.harness import Figure, median
from bench.server import BenchServer
from engine import Database, Engine

KINDS = ("known", "unknown")
WARM_UP = 30
# A wrong code for every address: the codes prepared are never this one's neighbours.
GUESS = "000000"


def _known(i: int) -> str:
    return f"k{i:07d}@example.com"


def _unknown(i: int) -> str:
    return f"u{i:07d}@example.com"


def _prepare(url: str, count: int) -> None:
    """For each known address an account and an emailed attempt holding a code (never
    GUESS); for each unknown one an attempt dispatched to `unknown_account`."""
    db = Database(url, pool_size=2)
    try:
        password_hash = Argon2Hasher(1).hash_sync("correct horse battery staple 42!")
        known = [_known(i) for i in range(count)]
        insert_accounts(db, known, password_hash)
        engine = Engine(db, flows.registry())
        table = Account.__table__
        with db.transaction(write=False) as conn:
            ids = {row.email: row.id for row in conn.execute(select(table.c.email, table.c.id))}
        now = datetime.now(UTC)
        for address in known:
            attempt = engine.start_sync("password_recovery", subject=address, actor="person")
            digest = secrets.token_hex(32)
            code = f"{secrets.randbelow(10**6 - 1) + 1:06d}"
            links.store(
                db,
                attempt.id,
                ids[address],
                digest,
                secrets.token_hex(32),
                now,
                codes.code_digest(code, digest),
            )
            account = Account(
                id=ids[address],
                email=address,
                email_normalized=address,
                name="Person",
                password_hash=password_hash,
                created_at=now,
                password_changed_at=now,
            )
            engine.fire_sync(
                attempt.id,
                "dispatch",
                params={"account": account, "sent": True, "link_digest": digest},
            )
        for i in range(count):
            attempt = engine.start_sync("password_recovery", subject=_unknown(i), actor="person")
            engine.fire_sync(attempt.id, "dispatch", params={"account": None})
    finally:
        db.close()


def _run(
    client: httpx.Client, per_kind: int, offset: int, rng: random.Random
) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {k: [] for k in KINDS}
    first: tuple[int, bytes] | None = None
    for i in range(per_kind):
        order = list(KINDS)
        rng.shuffle(order)
        for kind in order:
            email = _known(offset + i) if kind == "known" else _unknown(offset + i)
            started = time.perf_counter()
            answer = client.post("/api/recovery/code", json={"email": email, "code": GUESS})
            elapsed = time.perf_counter() - started
            seen = (answer.status_code, answer.content)
            first = first or seen
            if seen != first or answer.status_code != 400:
                raise RuntimeError(f"answers differ: {first!r} then {seen!r} ({kind})")
            latencies[kind].append(elapsed * 1000.0)
    return latencies


def measure(env: BenchEnv) -> list[Figure]:
    """Both figures, from the same requests."""
    sizes = env.sizes
    per_kind = sizes.enumeration_per_class
    url = env.fresh_url("sqlite", "code-enumeration")
    _prepare(url, per_kind * sizes.runs + WARM_UP)
    settings = {"RECOVERY_DATABASE_URL": url, "RECOVERY_MAIL_URL": env.smtp_sink().url}
    rng = random.Random(12)
    runs: list[dict[str, list[float]]] = []
    with (
        BenchServer(settings, dispatcher=True, log_dir=env.tmp, label="code-enumeration") as srv,
        httpx.Client(base_url=srv.base_url, timeout=30.0) as client,
    ):
        offset = 0
        _run(client, WARM_UP // 2, offset, rng)
        offset += WARM_UP // 2
        for _ in range(sizes.runs):
            runs.append(_run(client, per_kind, offset, rng))
            offset += per_kind
    diffs: list[float] = []
    pvalues: list[float] = []
    medians: dict[str, list[float]] = {k: [] for k in KINDS}
    for latencies in runs:
        meds = {k: median(v) for k, v in latencies.items()}
        for k in KINDS:
            medians[k].append(meds[k])
        diffs.append(abs(meds["known"] - meds["unknown"]))
        result = mannwhitneyu(latencies["known"], latencies["unknown"], alternative="two-sided")
        pvalues.append(float(result.pvalue))
    how = (
        f"{per_kind} wrong codes per kind per run, each address tried once, interleaved, "
        "SQLite, one keep-alive connection"
    )
    return [
        Figure(
            name="code_enumeration_median_diff_ms",
            unit="ms",
            runs=diffs,
            target="< 1",
            better="lower",
            threshold=1.0,
            inclusive=False,
            description=(
                "Difference between the median POST /api/recovery/code latencies (a wrong "
                "code) of an address with an account and a live code and one without an "
                f"account; {how}."
            ),
            detail={f"median ms, {k}": v for k, v in medians.items()},
        ),
        Figure(
            name="code_enumeration_mannwhitney_p",
            unit="p",
            runs=pvalues,
            target="> 0.01",
            better="higher",
            threshold=0.01,
            inclusive=False,
            description=(
                "Two-sided Mann-Whitney U p-value of the known and unknown latency samples of "
                f"POST /api/recovery/code (a small p would mean they are distinguishable); {how}."
            ),
        ),
    ]
