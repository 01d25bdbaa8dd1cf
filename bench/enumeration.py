"""`enumeration_median_diff_ms`, `enumeration_mannwhitney_p`: can timing tell accounts apart?

A bench server in `recovery serve`'s full configuration (SQLite, the
dispatcher running in-process, mail going to a real SMTP sink on loopback)
answers POST /api/recovery for three kinds of address, interleaved in a
random order inside each triple, one request at a time over one keep-alive
connection, as an attacker timing answers would:

- known: an address with an account, not yet emailed (a fresh one each time,
  so each request leads to a real email, sent in the background);
- unknown: an address without an account (fresh each time);
- throttled: an account that already got 3 emails this hour.

All three addresses have the same length. Per run, the figure is the largest
difference between the median latencies of any two kinds, and the smallest
two-sided Mann-Whitney U p-value over the three pairs (scipy).
"""

from __future__ import annotations

import random
import time
from itertools import combinations

import httpx
from scipy.stats import mannwhitneyu

import flows
from api.accounts.passwords import Argon2Hasher
from bench.env import BenchEnv, insert_accounts
from bench.harness import Figure, median
from bench.server import BenchServer
from engine import Database, Engine

KINDS = ("known", "unknown", "throttled")
THROTTLED = "t0000000@example.com"
WARM_UP = 30


def _known(i: int) -> str:
    return f"k{i:07d}@example.com"


def _unknown(i: int) -> str:
    return f"u{i:07d}@example.com"


def _prepare(url: str, count: int) -> None:
    """Accounts for every known address and the throttled one; 3 emails this hour for the latter."""
    db = Database(url, pool_size=2)
    try:
        password_hash = Argon2Hasher(1).hash_sync("correct horse battery staple 42!")
        insert_accounts(db, [_known(i) for i in range(count)] + [THROTTLED], password_hash)
        engine = Engine(db, flows.registry())
        for _ in range(3):
            attempt = engine.start_sync("password_recovery", subject=THROTTLED, actor="person")
            # Three dispatched this hour (no account needed for that): the next is throttled.
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
            if kind == "known":
                email = _known(offset + i)
            elif kind == "unknown":
                email = _unknown(offset + i)
            else:
                email = THROTTLED
            started = time.perf_counter()
            answer = client.post("/api/recovery", json={"email": email})
            elapsed = time.perf_counter() - started
            seen = (answer.status_code, answer.content)
            first = first or seen
            if seen != first:
                raise RuntimeError(f"answers differ: {first!r} then {seen!r} ({kind})")
            latencies[kind].append(elapsed * 1000.0)
    return latencies


def measure(env: BenchEnv) -> list[Figure]:
    """Both enumeration figures, from the same requests."""
    sizes = env.sizes
    per_kind = sizes.enumeration_per_class
    url = env.fresh_url("sqlite", "enumeration")
    _prepare(url, per_kind * sizes.runs + WARM_UP)
    sink = env.smtp_sink()
    settings = {"RECOVERY_DATABASE_URL": url, "RECOVERY_MAIL_URL": sink.url}
    rng = random.Random(6)
    runs: list[dict[str, list[float]]] = []
    with (
        BenchServer(settings, dispatcher=True, log_dir=env.tmp, label="enumeration") as srv,
        httpx.Client(base_url=srv.base_url, timeout=30.0) as client,
    ):
        offset = 0
        _run(client, WARM_UP // 3, offset, rng)
        offset += WARM_UP // 3
        for _ in range(sizes.runs):
            runs.append(_run(client, per_kind, offset, rng))
            offset += per_kind
        emails = len(sink.messages)
    diffs: list[float] = []
    pvalues: list[float] = []
    pair_p: dict[str, list[float]] = {f"{a} vs {b}": [] for a, b in combinations(KINDS, 2)}
    medians: dict[str, list[float]] = {k: [] for k in KINDS}
    for latencies in runs:
        meds = {k: median(v) for k, v in latencies.items()}
        for k in KINDS:
            medians[k].append(meds[k])
        diffs.append(max(abs(meds[a] - meds[b]) for a, b in combinations(KINDS, 2)))
        ps = []
        for a, b in combinations(KINDS, 2):
            p = float(mannwhitneyu(latencies[a], latencies[b], alternative="two-sided").pvalue)
            pair_p[f"{a} vs {b}"].append(p)
            ps.append(p)
        pvalues.append(min(ps))
    how = (
        f"{per_kind} requests per kind per run, interleaved, SQLite, dispatcher in-process "
        f"sending to a real SMTP sink ({emails} emails received)"
    )
    return [
        Figure(
            name="enumeration_median_diff_ms",
            unit="ms",
            runs=diffs,
            target="< 1",
            better="lower",
            threshold=1.0,
            inclusive=False,
            description=(
                "Largest difference between the median POST /api/recovery latencies of known, "
                f"unknown and throttled addresses; {how}."
            ),
            detail={f"median ms, {k}": v for k, v in medians.items()},
        ),
        Figure(
            name="enumeration_mannwhitney_p",
            unit="p",
            runs=pvalues,
            target="> 0.01",
            better="higher",
            threshold=0.01,
            inclusive=False,
            description=(
                "Smallest two-sided Mann-Whitney U p-value over the three pairs of latency "
                f"samples (a small p would mean the kinds are distinguishable); {how}."
            ),
            detail={f"p, {pair}": v for pair, v in pair_p.items()},
        ),
    ]
