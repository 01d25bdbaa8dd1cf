"""`loop_p99_ms_while_hashing`: does Argon2 stall the event loop?

A bench server in `recovery serve`'s configuration (SQLite, dispatcher,
production Argon2: t=3, 64 MiB, p=4; at most `max_concurrent_hashes` at
once) serves 8 clients that hash without pause — 4 signing in with the right
password (one verification each), 4 submitting a new password on a live
link that equals the current one (policy check, then a verification against
the password history, then 422 `reused_password`: the link stays usable, so
the load can go on) — while a probe asks GET /health every 10 ms.

The figure is the probe's p99 latency. The floor is the same probe on the
same server with no hashing going on, measured in the same run (before or
after, alternately).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import httpx

from api.accounts.passwords import Argon2Hasher
from bench.env import BenchEnv, insert_accounts
from bench.harness import Figure, Floor, percentile
from bench.server import BenchServer
from engine import Database

PASSWORD = "Kestrel-Quartz-Violin-93!"
ACCOUNTS = 4
PROBE_INTERVAL_S = 0.010
TOKEN_RE = re.compile(r"token=([A-Za-z0-9_\-]+)")


def _email(i: int) -> str:
    return f"h{i:07d}@example.com"


def _probe(client: httpx.Client, seconds: float) -> list[float]:
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        answer = client.get("/health")
        latencies.append((time.perf_counter() - started) * 1000.0)
        if answer.status_code != 200:
            raise RuntimeError(f"/health answered {answer.status_code}")
        time.sleep(max(0.0, PROBE_INTERVAL_S - (time.perf_counter() - started)))
    return latencies


_counts_lock = threading.Lock()


def _hash_loop(
    base_url: str, kind: str, index: int, token: str, stop: threading.Event, counts: Counter[str]
) -> None:
    with httpx.Client(base_url=base_url, timeout=60.0) as client:
        while not stop.is_set():
            if kind == "login":
                answer = client.post(
                    "/api/login", json={"email": _email(index), "password": PASSWORD}
                )
                expected = 200
            else:
                answer = client.post(
                    "/api/recovery/password",
                    json={"token": token, "password": PASSWORD, "password_confirm": PASSWORD},
                )
                expected = 422
            with _counts_lock:
                counts[f"{kind} {answer.status_code}"] += 1
            if answer.status_code != expected:
                raise RuntimeError(f"{kind}: {answer.status_code} {answer.text[:200]}")


def measure(env: BenchEnv, *, argon2_nice: int | None = None) -> Figure:
    """The figure; `argon2_nice` runs the experiment with lower-priority Argon2 threads."""
    sizes = env.sizes
    extra = ("--experiment-argon2-nice", str(argon2_nice)) if argon2_nice is not None else ()
    url = env.fresh_url("sqlite", "hashing")
    hasher = Argon2Hasher(1)
    db = Database(url, pool_size=2)
    try:
        insert_accounts(db, [_email(i) for i in range(ACCOUNTS)], hasher.hash_sync(PASSWORD))
    finally:
        db.close()
    sink = env.smtp_sink()
    settings = {"RECOVERY_DATABASE_URL": url, "RECOVERY_MAIL_URL": sink.url}
    loaded: list[float] = []
    idle: list[float] = []
    peaks: list[float] = []
    counts: Counter[str] = Counter()
    with (
        BenchServer(
            settings, dispatcher=True, log_dir=env.tmp, label="hashing", extra_args=extra
        ) as srv,
        httpx.Client(base_url=srv.base_url, timeout=30.0) as probe,
    ):
        before = len(sink.messages)
        for i in range(ACCOUNTS):
            answer = probe.post("/api/recovery", json={"email": _email(i)})
            if answer.status_code != 202:
                raise RuntimeError(f"recovery request answered {answer.status_code}")
        messages = sink.wait_for(before + ACCOUNTS, timeout=60)[before:]
        tokens: dict[str, str] = {}
        for message in messages:
            text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
            found = TOKEN_RE.search(text)
            if found is None:
                raise RuntimeError("no link found in the recovery email")
            tokens[message.envelope_rcpts[0]] = found.group(1)
        _probe(probe, 1.0)  # warm-up
        for run in range(sizes.runs):
            if run % 2 == 1:
                idle.append(percentile(_probe(probe, sizes.hashing_seconds), 99))
            srv.reset_peak()
            stop = threading.Event()
            errors: list[BaseException] = []

            def worker(
                kind: str,
                index: int,
                stop: threading.Event = stop,
                errors: list[BaseException] = errors,
            ) -> None:
                try:
                    _hash_loop(srv.base_url, kind, index, tokens[_email(index)], stop, counts)
                except BaseException as exc:
                    errors.append(exc)
                    stop.set()

            threads = [
                threading.Thread(target=worker, args=(kind, i), daemon=True)
                for kind in ("login", "password")
                for i in range(ACCOUNTS)
            ]
            for t in threads:
                t.start()
            time.sleep(0.5)  # let every client have a hash in flight
            loaded.append(percentile(_probe(probe, sizes.hashing_seconds), 99))
            stop.set()
            for t in threads:
                t.join(timeout=60)
            if errors:
                raise RuntimeError(f"a hashing client failed: {errors[0]}")
            peaks.append(max(srv.peak_rss_bytes, srv.rss_bytes()) / 2**20)
            if run % 2 == 0:
                idle.append(percentile(_probe(probe, sizes.hashing_seconds), 99))
    return Figure(
        name="loop_p99_ms_while_hashing",
        unit="ms",
        runs=loaded,
        target="< 25",
        better="lower",
        threshold=25.0,
        inclusive=False,
        floor=Floor("p99 of the same /health probe, no hashing", "ms", idle),
        ratio_runs=[a / b for a, b in zip(loaded, idle, strict=True)],
        description=(
            f"p99 of GET /health (one every {PROBE_INTERVAL_S * 1000:g} ms, "
            f"{sizes.hashing_seconds:g} s per run) while 4 clients sign in and 4 submit a "
            "password on a live link, non-stop, with production Argon2 (t=3, 64 MiB, p=4)."
        ),
        detail={
            "hashing requests answered (all runs)": dict(counts),
            "server peak RSS MiB while hashing": peaks,
        },
    )


def measure_dummy_verify(env: BenchEnv) -> Figure:
    """`dummy_verify_vs_real_ratio`: what a sign-in for an unknown address costs, against a
    wrong password for a real one (SPEC §4: an unknown account still costs one verification)."""
    hasher = Argon2Hasher(1)
    stored = hasher.hash_sync(PASSWORD)
    rounds = 3 if env.sizes.quick else 15
    real: list[float] = []
    dummy: list[float] = []
    ratios: list[float] = []
    for _ in range(env.sizes.runs):
        times = {"real": [], "dummy": []}  # type: dict[str, list[float]]
        for _ in range(rounds):
            started = time.perf_counter()
            hasher.verify_sync(stored, "a wrong password")
            times["real"].append((time.perf_counter() - started) * 1000.0)
            started = time.perf_counter()
            hasher._verify_blocking(hasher._dummy_hash, b"a wrong password")
            times["dummy"].append((time.perf_counter() - started) * 1000.0)
        real.append(percentile(times["real"], 50))
        dummy.append(percentile(times["dummy"], 50))
        ratios.append(dummy[-1] / real[-1])
    return Figure(
        name="dummy_verify_vs_real_ratio",
        unit="x",
        runs=ratios,
        target=">= 0.9",
        better="higher",
        threshold=0.9,
        floor=Floor("median real verification of a wrong password, production Argon2", "ms", real),
        ratio_runs=ratios,
        description=(
            "Median time of the dummy verification a sign-in for an unknown address runs, over "
            f"the median of a real one with a wrong password ({rounds} of each per run, "
            "production Argon2: t=3, 64 MiB, p=4)."
        ),
        detail={"dummy verification median ms": dummy},
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.hashing --nice N`: the figure as the product is, then with niced threads."""
    import argparse

    from bench.harness import Sizes

    parser = argparse.ArgumentParser(prog="python -m bench.hashing")
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    with BenchEnv(Sizes.full()) as env:
        for n in range(args.rounds):
            for nice in (None, args.nice) if n % 2 == 0 else (args.nice, None):
                figure = measure(env, argon2_nice=nice)
                print(
                    f"argon2 nice={nice}: p99 {figure.value:.1f} ms "
                    f"(runs {', '.join(f'{r:.1f}' for r in figure.runs)}; "
                    f"idle p99 {figure.floor.value if figure.floor else 0:.1f} ms; "
                    f"{figure.detail['hashing requests answered (all runs)']})",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
