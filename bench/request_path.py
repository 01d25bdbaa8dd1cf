"""The request path against floors outside the product (issue 17 §2 and §4).

Per backend, three uvicorn processes run side by side, all with the options
`recovery serve` passes:

- the product: `recovery serve --no-dispatcher` itself (migrations, logging,
  the whole middleware stack), on a database seeded with accounts for the
  known addresses;
- the bare INSERT floor (`bench.floors bare-insert`) on a database of the same
  backend migrated to the same schema;
- on SQLite only, the bare hello floor (`bench.floors hello`).

wrk (16 connections, one thread) then loads, in interleaved rounds whose
order rotates, `POST /api/recovery` on the floor, on the product with known
addresses (cycling over accounts that exist) and with unknown addresses (the
same number of addresses of the same length, without accounts); on SQLite
also `GET /hello` on the hello floor and `GET /health` on the product.

- `http_request_vs_bare_ratio_{sqlite,postgresql}`: per round, product req/s
  over floor req/s for known and for unknown addresses (both in the detail);
  the value is the worse of the two. Target `>= 0.8`.
- `http_health_vs_hello_ratio`: `GET /health` req/s through the whole stack
  over the bare hello's req/s, per round. Target `>= 0.5`.

Then, one request at a time over one keep-alive connection per server (the
lean client of `bench.lean_http`, so the client's own cost stays small),
known and unknown addresses on the product and on the floor, shuffled within
each group of four so drift hits all alike:

- `request_p50_ms_sequential`: the product's median latency on SQLite, all
  kinds together, against the floor's. Target `< 2` ms. The dispatcher is
  idle: the server runs without it (`--no-dispatcher`), so nothing competes.

The known-address req/s of each backend is kept in `env.measured` (see
`request_capacity`): the mail figures of the same run are measured against it.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

from bench.env import BACKENDS, BenchEnv, insert_accounts
from bench.floors import HELLO_PATH, INSERT_PATH, bare_insert_program, hello_program
from bench.harness import Figure, Floor, median
from bench.lean_http import Connection, post_json
from bench.product import Database, recovery_command
from bench.server import (
    CONNECTIONS,
    BenchServer,
    WrkResult,
    cycling_body_lua,
    run_wrk,
    wrk_available,
)

KNOWN_FORMAT = "k%07d@example.com"
UNKNOWN_FORMAT = "u%07d@example.com"
JSON_HEADERS = {"Content-Type": "application/json"}
# Never verified on the request path: any well-formed Argon2 hash will do.
PASSWORD_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"
CAPACITY_KEY = "request_rps_known"


def known(i: int) -> str:
    return KNOWN_FORMAT % i


def unknown(i: int) -> str:
    return UNKNOWN_FORMAT % i


def product_program(*args: str) -> Any:
    """`recovery serve --port N ARGS...` for `BenchServer(program=...)`."""
    return lambda port: [*recovery_command(), "serve", "--port", str(port), *args]


def seed_accounts(url: str, emails: list[str]) -> None:
    """Accounts for `emails` (already normalised), sharing one password hash."""
    db = Database(url, pool_size=2)
    try:
        insert_accounts(db, emails, PASSWORD_HASH)
    finally:
        db.close()


def servers(env: BenchEnv, backend: str, *, hello: bool) -> dict[str, BenchServer]:
    """The product (`recovery serve --no-dispatcher`), the bare INSERT floor and maybe hello,
    on fresh databases, not started yet."""
    sizes = env.sizes
    product_url = env.fresh_url(backend, f"path_{backend}")
    seed_accounts(product_url, [known(i) for i in range(sizes.request_addresses)])
    floor_url = env.fresh_url(backend, f"bare_{backend}")
    group: dict[str, BenchServer] = {
        "product": BenchServer(
            {
                "RECOVERY_DATABASE_URL": product_url,
                "RECOVERY_MAIL_URL": f"file://{env.tmp / 'mail-path'}",
            },
            dispatcher=False,
            log_dir=env.tmp,
            label=f"path-{backend}",
            program=product_program("--no-dispatcher"),
        ),
        "floor": BenchServer(
            {},
            dispatcher=False,
            log_dir=env.tmp,
            label=f"bare-insert-{backend}",
            program=bare_insert_program(floor_url),
            ready_path=INSERT_PATH,
            ready_any_status=True,
        ),
    }
    if hello:
        group["hello"] = BenchServer(
            {},
            dispatcher=False,
            log_dir=env.tmp,
            label="hello",
            program=hello_program,
            ready_path=HELLO_PATH,
        )
    return group


@contextlib.contextmanager
def running(groups: list[dict[str, BenchServer]]) -> Iterator[None]:
    """Every server of `groups` started at once (they boot in parallel), stopped afterwards."""
    every = [server for group in groups for server in group.values()]
    with contextlib.ExitStack() as stack:
        for server in every:
            stack.callback(server.stop)
            server.spawn()
        for server in every:
            server.wait_ready()
        yield


def _wrk(srv: dict[str, BenchServer], route: str, seconds: float, count: int) -> WrkResult:
    if route == "hello":
        return run_wrk(srv["hello"].base_url + HELLO_PATH, seconds)
    if route == "health":
        return run_wrk(srv["product"].base_url + "/health", seconds)
    target = srv["floor"] if route == "floor" else srv["product"]
    pattern = UNKNOWN_FORMAT if route == "unknown" else KNOWN_FORMAT
    return run_wrk(
        target.base_url + INSERT_PATH,
        seconds,
        method="POST",
        headers=JSON_HEADERS,
        lua=cycling_body_lua(f'{{"email":"{pattern}"}}', count),
    )


def _rounds(
    env: BenchEnv, srv: dict[str, BenchServer], routes: tuple[str, ...]
) -> list[dict[str, WrkResult]]:
    sizes = env.sizes
    count = sizes.request_addresses
    if not sizes.quick:
        for route in routes:  # warm-up: connections, caches, statement compilation
            _wrk(srv, route, 1.0, count)
    rounds = []
    for n in range(sizes.runs):
        order = routes[n % len(routes) :] + routes[: n % len(routes)]
        rounds.append({route: _wrk(srv, route, sizes.wrk_seconds, count) for route in order})
    return rounds


def _sequential(
    env: BenchEnv, srv: dict[str, BenchServer], rng: random.Random
) -> list[dict[str, list[float]]]:
    """Per run, latencies in ms per (server, kind), one request at a time, shuffled."""
    per_kind = env.sizes.sequential_per_kind
    count = env.sizes.request_addresses
    product, floor = srv["product"], srv["floor"]
    runs = []
    with Connection(product.port) as to_product, Connection(floor.port) as to_floor:
        cells = {
            "product known": (to_product, product.port, known),
            "product unknown": (to_product, product.port, unknown),
            "floor known": (to_floor, floor.port, known),
            "floor unknown": (to_floor, floor.port, unknown),
        }
        answers: dict[str, tuple[int, bytes]] = {}
        for n in range(-1, env.sizes.runs):  # run -1 warms up and is thrown away
            latencies: dict[str, list[float]] = {cell: [] for cell in cells}
            for i in range(per_kind):
                order = list(cells)
                rng.shuffle(order)
                for cell in order:
                    conn, port, address = cells[cell]
                    email = address((n * per_kind + i) % count)
                    raw = post_json(port, INSERT_PATH, {"email": email})
                    status, body, seconds = conn.exchange(raw)
                    server = cell.split()[0]
                    seen = answers.setdefault(server, (status, body))
                    if (status, body) != seen:
                        raise RuntimeError(f"{cell}: answer {status} {body!r}, before {seen!r}")
                    latencies[cell].append(seconds * 1000.0)
            if n >= 0:
                runs.append(latencies)
    return runs


def _measure_backend(env: BenchEnv, backend: str, srv: dict[str, BenchServer]) -> dict[str, Any]:
    routes: tuple[str, ...] = ("floor", "known", "unknown")
    if "hello" in srv:
        routes += ("hello", "health")
    rounds = _rounds(env, srv, routes)
    sequential = _sequential(env, srv, random.Random(17))
    env.measured.setdefault(CAPACITY_KEY, {})[backend] = [r["known"].rps for r in rounds]
    return {"rounds": rounds, "sequential": sequential}


def request_capacity(env: BenchEnv, backend: str) -> list[float]:
    """`POST /api/recovery` req/s with known addresses per run on `backend`, this run.

    Measured by the request-path section; a run that skipped it (`--only`)
    measures it here the same way, without the floors.
    """
    measured = env.measured.get(CAPACITY_KEY, {})
    if backend in measured:
        return list(measured[backend])
    if not wrk_available():
        raise RuntimeError("wrk is not installed (Debian package wrk)")
    url = env.fresh_url(backend, f"capacity_{backend}")
    count = env.sizes.request_addresses
    seed_accounts(url, [known(i) for i in range(count)])
    with BenchServer(
        {"RECOVERY_DATABASE_URL": url, "RECOVERY_MAIL_URL": f"file://{env.tmp / 'mail-path'}"},
        dispatcher=False,
        log_dir=env.tmp,
        label=f"capacity-{backend}",
        program=product_program("--no-dispatcher"),
    ) as product:
        srv = {"product": product}
        if not env.sizes.quick:
            _wrk(srv, "known", 1.0, count)
        rps = [_wrk(srv, "known", env.sizes.wrk_seconds, count).rps for _ in range(env.sizes.runs)]
    env.measured.setdefault(CAPACITY_KEY, {})[backend] = rps
    return rps


def _series(rounds: list[dict[str, WrkResult]], route: str, attr: str = "rps") -> list[float]:
    return [float(getattr(r[route], attr)) for r in rounds]


def _ratio(rounds: list[dict[str, WrkResult]], route: str, floor: str) -> list[float]:
    return [r[route].rps / r[floor].rps for r in rounds]


def _request_figure(backend: str, rounds: list[dict[str, WrkResult]], how: str) -> Figure:
    known_ratio = _ratio(rounds, "known", "floor")
    unknown_ratio = _ratio(rounds, "unknown", "floor")
    worse = [min(k, u) for k, u in zip(known_ratio, unknown_ratio, strict=True)]
    return Figure(
        name=f"http_request_vs_bare_ratio_{backend}",
        unit="x",
        runs=worse,
        target=">= 0.8",
        better="higher",
        threshold=0.8,
        floor=Floor(
            "bare Litestar app, no middleware, doing the same two INSERTs "
            "(python -m bench.floors bare-insert)",
            "req/s",
            _series(rounds, "floor"),
        ),
        ratio_runs=worse,
        description=(
            f"POST /api/recovery through `recovery serve --no-dispatcher` on {backend}, req/s "
            "over the bare INSERT floor's req/s in the same round; the worse of known and "
            f"unknown addresses; {how}."
        ),
        detail={
            "ratio, known addresses": known_ratio,
            "ratio, unknown addresses": unknown_ratio,
            "req/s, known addresses": _series(rounds, "known"),
            "req/s, unknown addresses": _series(rounds, "unknown"),
            "p99 ms, known / unknown / floor": [
                median(_series(rounds, "known", "p99_ms")),
                median(_series(rounds, "unknown", "p99_ms")),
                median(_series(rounds, "floor", "p99_ms")),
            ],
        },
    )


def _p50(latencies: dict[str, list[float]], server: str) -> float:
    return median(latencies[f"{server} known"] + latencies[f"{server} unknown"])


def measure(env: BenchEnv) -> list[Figure]:
    """The request-path figures of issue 17, against the floors outside the product."""
    if not wrk_available():
        raise RuntimeError("wrk is not installed (Debian package wrk)")
    backends = BACKENDS if env.has_postgresql else ("sqlite",)
    groups = {b: servers(env, b, hello=b == "sqlite") for b in backends}
    with running(list(groups.values())):
        data = {b: _measure_backend(env, b, groups[b]) for b in backends}
    how = (
        f"wrk, {CONNECTIONS} connections, {env.sizes.wrk_seconds:g} s per route per round, "
        "routes interleaved"
    )
    figures = [_request_figure(b, data[b]["rounds"], how) for b in backends]
    sq = data["sqlite"]["rounds"]
    health = _ratio(sq, "health", "hello")
    figures.append(
        Figure(
            name="http_health_vs_hello_ratio",
            unit="x",
            runs=health,
            target=">= 0.5",
            better="higher",
            threshold=0.5,
            floor=Floor(
                "bare Litestar hello, no middleware (python -m bench.floors hello)",
                "req/s",
                _series(sq, "hello"),
            ),
            ratio_runs=health,
            description=(
                "GET /health through `recovery serve`'s whole middleware stack (SQLite), req/s "
                f"over a bare Litestar GET answering a tiny JSON object; {how}."
            ),
            detail={
                "GET /health req/s": _series(sq, "health"),
                "p99 ms, /health / hello": [
                    median(_series(sq, "health", "p99_ms")),
                    median(_series(sq, "hello", "p99_ms")),
                ],
            },
        )
    )
    seq = data["sqlite"]["sequential"]
    product_p50 = [_p50(run, "product") for run in seq]
    floor_p50 = [_p50(run, "floor") for run in seq]
    detail: dict[str, Any] = {
        f"median ms, {cell}": [median(run[cell]) for run in seq] for cell in seq[0]
    }
    if "postgresql" in data:
        pg = data["postgresql"]["sequential"]
        detail["postgresql median ms, product / floor"] = [
            median([_p50(run, "product") for run in pg]),
            median([_p50(run, "floor") for run in pg]),
        ]
    figures.append(
        Figure(
            name="request_p50_ms_sequential",
            unit="ms",
            runs=product_p50,
            target="< 2",
            better="lower",
            threshold=2.0,
            inclusive=False,
            floor=Floor("the bare INSERT floor, the same requests one at a time", "ms", floor_p50),
            ratio_runs=[p / f for p, f in zip(product_p50, floor_p50, strict=True)],
            description=(
                "Median latency of POST /api/recovery through `recovery serve --no-dispatcher` "
                "on SQLite, one request at a time over one keep-alive connection (lean raw-socket "
                f"client), {env.sizes.sequential_per_kind} known and as many unknown addresses "
                "per run, shuffled with the same requests to the bare INSERT floor."
            ),
            detail=detail,
        )
    )
    return figures
