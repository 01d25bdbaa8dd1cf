"""Several `recovery serve` processes: the per-IP rate limit is shared through Redis.

Each process is a real `recovery serve` subprocess on loopback, the store a
real `redis-server`. Without RECOVERY_REDIS_URL each process counts on its
own, which the second test shows, so the first is not passing by accident.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.redis import require_redis, running_redis
from tests.support.service import RunningService, start_service

pytestmark = pytest.mark.slow

LIMIT = 20  # the default RECOVERY_PUBLIC_RATE_LIMIT_PER_MINUTE


@contextmanager
def two_servers(env: Mapping[str, str], cwd: Path) -> Iterator[list[RunningService]]:
    """Two `recovery serve` processes on one database, started side by side."""
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(start_service, env, cwd=cwd, args=["--no-dispatcher"]) for _ in range(2)
        ]
        services = [f.result() for f in futures]
    try:
        yield services
    finally:
        for service in services:
            service.stop()


def _ask(service: RunningService, n: int) -> httpx.Response:
    with service.client() as http:
        return http.post("/api/recovery", json={"email": f"person-{n}@example.com"})


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "RECOVERY_DATABASE_URL": f"sqlite:///{tmp_path / 'recovery.db'}",
        "RECOVERY_MAIL_URL": f"file://{tmp_path / 'mail'}",
        "RECOVERY_PUBLIC_RATE_LIMIT_PER_MINUTE": str(LIMIT),
        **extra,
    }


def test_two_api_processes_sharing_redis_refuse_the_21st_request_from_one_ip(
    tmp_path: Path,
) -> None:
    """Ten requests to each process pass; the 21st, to either, is a 429 with Retry-After."""
    require_redis()
    with (
        running_redis() as redis,
        two_servers(_env(tmp_path, RECOVERY_REDIS_URL=redis.url), tmp_path) as (a, b),
    ):
        statuses = [_ask(a if n % 2 else b, n).status_code for n in range(LIMIT)]
        assert statuses == [202] * LIMIT
        refused_a = _ask(a, LIMIT)
        refused_b = _ask(b, LIMIT + 1)
    for refused in (refused_a, refused_b):
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "rate_limited"


def test_without_redis_each_api_process_counts_its_own_requests(tmp_path: Path) -> None:
    """Without a shared store, a process that saw none of the first 20 requests still accepts."""
    with two_servers(_env(tmp_path), tmp_path) as (a, b):
        statuses = [_ask(a, n).status_code for n in range(LIMIT)]
        assert statuses == [202] * LIMIT
        assert _ask(a, LIMIT).status_code == 429
        assert _ask(b, LIMIT + 1).status_code == 202
