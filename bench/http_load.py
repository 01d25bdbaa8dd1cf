"""HTTP throughput with wrk at concurrency 16: the product's routes against floor routes.

Per backend, one bench server (`bench.app`: `recovery serve`'s app, options
and logging, plus the floor routes) serves, in interleaved rounds:

- `GET /bench/noop` — the trivial route (`http_floor_rps`);
- `POST /bench/insert` — one INSERT + commit (`http_insert_floor_rps`);
- `POST /api/recovery` — the product's request path (`http_request_rps`);
- `GET /api/support/attempts/{id}` — a support read with its timeline and
  its audit entry (`http_support_get_rps`).

The server runs without the in-process dispatcher (`serve --no-dispatcher`,
the configuration where `recovery worker` sends the mail): otherwise the
backlog that one POST run leaves would be dispatched during the next run and
charge its cost to whichever route comes next. The dispatcher has its own
figures (`dispatch_emails_per_s_*`). The unsuffixed rps figures are the
SQLite ones (the embedded default); PostgreSQL's are in their details and in
`http_request_ratio_postgresql`. The server's resident memory is sampled the
whole time (`serve_peak_rss_mb`).
"""

from __future__ import annotations

from typing import Any

import flows
from api.support.service import SupportService
from bench.app import INSERT_PATH, NOOP_PATH
from bench.env import BACKENDS, BenchEnv, opened_link
from bench.harness import Figure, Floor, median
from bench.server import CONNECTIONS, BenchServer, WrkResult, run_wrk, wrk_available
from engine import Database, Engine

BODY = {"email": "someone@example.com"}
ROUTES = ("floor", "insert_floor", "request", "support_get")


def _prepare(url: str) -> tuple[str, str]:
    """A support key, and an attempt with a realistic timeline to read back."""
    db = Database(url, pool_size=2)
    try:
        engine = Engine(db, flows.registry())
        key = SupportService(engine).create_key_sync("bench", "read")
        attempt = engine.start_sync(
            "password_recovery",
            subject="someone@example.com",
            actor="person",
            data={
                "email_submitted": "Someone@Example.com",
                "client_ip": "127.0.0.1",
                "user_agent": "bench",
                "delivery": {"status": "queued", "tries": 0, "last_error": None, "sent_at": None},
            },
        )
        opened_link(engine, attempt.id)
        return key, str(attempt.id)
    finally:
        db.close()


def _one(server: BenchServer, route: str, seconds: float, key: str, attempt_id: str) -> WrkResult:
    base = server.base_url
    if route == "floor":
        return run_wrk(base + NOOP_PATH, seconds)
    if route == "insert_floor":
        return run_wrk(base + INSERT_PATH, seconds, method="POST", body=BODY)
    if route == "request":
        return run_wrk(base + "/api/recovery", seconds, method="POST", body=BODY)
    return run_wrk(
        f"{base}/api/support/attempts/{attempt_id}",
        seconds,
        headers={"Authorization": f"Bearer {key}"},
    )


def _backend_rounds(env: BenchEnv, backend: str) -> dict[str, Any]:
    sizes = env.sizes
    url = env.fresh_url(backend, f"http_{backend}")
    key, attempt_id = _prepare(url)
    settings = {
        "RECOVERY_DATABASE_URL": url,
        "RECOVERY_MAIL_URL": f"file://{env.tmp / 'mail-http'}",
    }
    rounds: list[dict[str, WrkResult]] = []
    peaks: list[float] = []
    with BenchServer(settings, dispatcher=False, log_dir=env.tmp, label=f"http-{backend}") as srv:
        if not sizes.quick:
            for route in ROUTES:  # warm-up: connections, caches, statement compilation
                _one(srv, route, 1.0, key, attempt_id)
        idle_mb = srv.rss_bytes() / 2**20
        for n in range(sizes.runs):
            srv.reset_peak()
            order = ROUTES[n % len(ROUTES) :] + ROUTES[: n % len(ROUTES)]
            results = {
                route: _one(srv, route, sizes.wrk_seconds, key, attempt_id) for route in order
            }
            rounds.append(results)
            peaks.append(max(srv.peak_rss_bytes, srv.rss_bytes()) / 2**20)
        start_mb = srv.start_rss_bytes / 2**20
    return {"rounds": rounds, "peaks_mb": peaks, "idle_mb": idle_mb, "start_mb": start_mb}


def _series(rounds: list[dict[str, WrkResult]], route: str, attr: str = "rps") -> list[float]:
    return [float(getattr(r[route], attr)) for r in rounds]


def _latency(rounds: list[dict[str, WrkResult]], route: str) -> dict[str, float]:
    return {
        "p50 ms": median(_series(rounds, route, "p50_ms")),
        "p99 ms": median(_series(rounds, route, "p99_ms")),
    }


def measure(env: BenchEnv) -> list[Figure]:
    """Every `http_*` figure and `serve_peak_rss_mb`."""
    if not wrk_available():
        raise RuntimeError("wrk is not installed (Debian package wrk)")
    backends = BACKENDS if env.has_postgresql else ("sqlite",)
    data = {b: _backend_rounds(env, b) for b in backends}
    sq = data["sqlite"]["rounds"]
    seconds = env.sizes.wrk_seconds
    how = f"wrk, {CONNECTIONS} connections, {seconds:g} s per route per round, routes interleaved"

    def ratio(rounds: list[dict[str, WrkResult]], route: str, floor: str) -> list[float]:
        return [r[route].rps / r[floor].rps for r in rounds]

    figures = [
        Figure(
            name="http_request_rps",
            unit="req/s",
            runs=_series(sq, "request"),
            floor=Floor(
                "POST /bench/insert (one INSERT + commit)", "req/s", _series(sq, "insert_floor")
            ),
            ratio_runs=ratio(sq, "request", "insert_floor"),
            description=f"POST /api/recovery on SQLite; {how}.",
            detail={
                **_latency(sq, "request"),
                **(
                    {"postgresql req/s": _series(data["postgresql"]["rounds"], "request")}
                    if "postgresql" in data
                    else {}
                ),
            },
        ),
        Figure(
            name="http_support_get_rps",
            unit="req/s",
            runs=_series(sq, "support_get"),
            floor=Floor("GET /bench/noop (trivial route)", "req/s", _series(sq, "floor")),
            ratio_runs=ratio(sq, "support_get", "floor"),
            description=(
                "GET /api/support/attempts/{id} (an attempt with 3 events; key check, lazy "
                f"deadline, timeline, audit entry) on SQLite; {how}."
            ),
            detail={
                **_latency(sq, "support_get"),
                **(
                    {"postgresql req/s": _series(data["postgresql"]["rounds"], "support_get")}
                    if "postgresql" in data
                    else {}
                ),
            },
        ),
        Figure(
            name="http_floor_rps",
            unit="req/s",
            runs=_series(sq, "floor"),
            description=(
                "GET /bench/noop: the trivial route through the same process configuration "
                f"(middleware, host check, security headers, access log); {how}."
            ),
            detail=_latency(sq, "floor"),
        ),
        Figure(
            name="http_insert_floor_rps",
            unit="req/s",
            runs=_series(sq, "insert_floor"),
            floor=Floor("GET /bench/noop (trivial route)", "req/s", _series(sq, "floor")),
            ratio_runs=ratio(sq, "insert_floor", "floor"),
            description=(
                "POST /bench/insert: the same JSON body parsed, one INSERT + commit of an attempt "
                f"row on the app's Database (its writer thread), on SQLite; {how}."
            ),
            detail={
                **_latency(sq, "insert_floor"),
                **(
                    {"postgresql req/s": _series(data["postgresql"]["rounds"], "insert_floor")}
                    if "postgresql" in data
                    else {}
                ),
            },
        ),
    ]
    for backend in backends:
        rounds = data[backend]["rounds"]
        runs = ratio(rounds, "request", "insert_floor")
        figures.append(
            Figure(
                name=f"http_request_ratio_{backend}",
                unit="x",
                runs=runs,
                target=">= 0.7",
                better="higher",
                threshold=0.7,
                floor=Floor("POST /bench/insert", "req/s", _series(rounds, "insert_floor")),
                ratio_runs=runs,
                description=(
                    f"POST /api/recovery req/s divided by POST /bench/insert req/s on {backend}, "
                    "per round."
                ),
                detail={
                    "POST /api/recovery req/s": _series(rounds, "request"),
                    **{f"request {k}": v for k, v in _latency(rounds, "request").items()},
                    **{f"insert floor {k}": v for k, v in _latency(rounds, "insert_floor").items()},
                },
            )
        )
    sqlite_mem = data["sqlite"]
    figures.append(
        Figure(
            name="serve_peak_rss_mb",
            unit="MiB",
            runs=sqlite_mem["peaks_mb"],
            floor=Floor("the same server idle, after warm-up", "MiB", [sqlite_mem["idle_mb"]]),
            ratio_runs=[p / sqlite_mem["idle_mb"] for p in sqlite_mem["peaks_mb"]],
            description=(
                "Peak resident memory of the server process (the `recovery serve` app, SQLite) "
                "during each round of the wrk load above, sampled every 50 ms."
            ),
            detail={
                "at start MiB": sqlite_mem["start_mb"],
                **(
                    {"postgresql peaks MiB": data["postgresql"]["peaks_mb"]}
                    if "postgresql" in data
                    else {}
                ),
            },
        )
    )
    return figures
