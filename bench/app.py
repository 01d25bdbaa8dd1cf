"""The bench server: `recovery serve`'s application plus two bench-only floor routes.

`python -m bench.app --port N [--no-dispatcher]` does what `recovery serve`
does (read `RECOVERY_*`, configure logging, apply migrations, build the app
with `create_app`, run it under uvicorn with the same options), then adds:

- `GET /bench/noop` — the trivial route: the floor of any request through
  this process configuration (middleware, host check, headers, access log);
- `POST /bench/insert` — parses the same JSON body as `POST /api/recovery`
  and does one INSERT + commit of an attempt row on the same `Database`
  (the writer thread, the same connection settings): the floor of a write
  endpoint.

These routes exist only here, never in the product.
"""

from __future__ import annotations

import argparse
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import uvicorn
from litestar import Litestar, Request, get, post
from sqlalchemy import insert

from api import migrate
from api.accounts.passwords import Argon2Hasher
from api.cli import DISPATCHER_ENV, GRACEFUL_SHUTDOWN_SECONDS
from api.logs import configure_logging
from api.settings import settings_from_env
from api.web.app import Services, create_app
from engine.core import attempt_t

NOOP_PATH = "/bench/noop"
INSERT_PATH = "/bench/insert"
# Litestar's CSRF middleware skips handlers carrying this opt (JSON, no cookies).
NO_CSRF = {"exclude_from_csrf": True}


@get(NOOP_PATH, opt=NO_CSRF, include_in_schema=False, sync_to_thread=False)
def noop() -> dict[str, str]:
    """The cheapest answer this process configuration can give."""
    return {"status": "ok"}


def _insert_row(services: Services, email: str) -> None:
    now = datetime.now(UTC)
    with services.engine.db.transaction() as conn:
        conn.execute(
            insert(attempt_t).values(
                id=uuid.uuid4(),
                flow="bench_floor",
                flow_version=1,
                state="requested",
                version=1,
                created_at=now,
                updated_at=now,
                deadline_at=None,
                lease_until=None,
                subject=email[:320],
                data={"locale": "en"},
            )
        )


@post(INSERT_PATH, opt=NO_CSRF, include_in_schema=False, status_code=202)
async def insert_one(request: Request[Any, Any, Any], data: dict[str, Any]) -> dict[str, str]:
    """One INSERT + commit on the app's database, on its writer thread."""
    services: Services = request.app.state["services"]
    await services.engine.db.run(_insert_row, services, str(data.get("email", "")))
    return {"status": "accepted"}


def _lower_priority(nice: int) -> None:
    # Linux keeps a nice value per thread; the threads libargon2 starts for
    # its lanes inherit it from this one.
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


def niced_hasher(max_concurrent: int, nice: int) -> Argon2Hasher:
    """EXPERIMENT: the production hasher, its threads at a lower CPU priority (`nice`)."""
    hasher = Argon2Hasher(max_concurrent)
    hasher._pool.shutdown(wait=False)
    hasher._pool = ThreadPoolExecutor(
        max_concurrent,
        thread_name_prefix="argon2",
        initializer=_lower_priority,
        initargs=(nice,),
    )
    return hasher


def bench_app(*, run_dispatcher: bool, argon2_nice: int | None = None) -> Litestar:
    """The product's app for the environment's settings, with the bench routes added.

    `argon2_nice` is an experiment (bench/RESULTS.md, loop latency while
    hashing), never the default: the figures measure the product as it is.
    """
    settings = settings_from_env()
    hasher = (
        niced_hasher(settings.max_concurrent_hashes, argon2_nice)
        if argon2_nice is not None
        else None
    )
    app = create_app(settings, run_worker=run_dispatcher, hasher=hasher)
    app.register(noop)
    app.register(insert_one)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-dispatcher", action="store_true")
    parser.add_argument(
        "--experiment-argon2-nice",
        type=int,
        metavar="N",
        help="run the Argon2 threads at nice N (an experiment, not the product's behaviour)",
    )
    args = parser.parse_args(argv)
    settings = settings_from_env()
    configure_logging(settings.log_level)
    migrate.upgrade(settings.database_url)
    os.environ[DISPATCHER_ENV] = "0" if args.no_dispatcher else "1"
    app = bench_app(run_dispatcher=not args.no_dispatcher, argon2_nice=args.experiment_argon2_nice)
    # The options `recovery serve` passes to uvicorn (api/cli.py, _serve).
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=False,
        log_config=None,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
