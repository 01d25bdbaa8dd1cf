"""Several `recovery serve` processes: what they must share, and that they do.

Each process is a real `recovery serve --no-dispatcher` subprocess on
loopback, the store a real `redis-server`. Two pairs of processes serve every
test: one deployed as the README says (RECOVERY_REDIS_URL and
RECOVERY_CSRF_SECRET shared), one without either, which shows what goes wrong
without them, so the first pair's tests cannot pass by accident.
"""

from __future__ import annotations

import re
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

Pair = tuple[RunningService, RunningService]


@contextmanager
def two_servers(env: Mapping[str, str], cwd: Path) -> Iterator[Pair]:
    """Two `recovery serve` processes on one database, started side by side."""
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(start_service, env, cwd=cwd, args=["--no-dispatcher"]) for _ in range(2)
        ]
        services = [f.result() for f in futures]
    try:
        yield services[0], services[1]
    finally:
        for service in services:
            service.stop()


def _env(root: Path, **extra: str) -> dict[str, str]:
    return {
        "RECOVERY_DATABASE_URL": f"sqlite:///{root / 'recovery.db'}",
        "RECOVERY_MAIL_URL": f"file://{root / 'mail'}",
        "RECOVERY_PUBLIC_RATE_LIMIT_PER_MINUTE": str(LIMIT),
        **extra,
    }


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Two processes sharing Redis and the CSRF secret."""
    require_redis()
    root = tmp_path_factory.mktemp("shared")
    with running_redis() as redis:
        env = _env(
            root,
            RECOVERY_REDIS_URL=redis.url,
            RECOVERY_CSRF_SECRET="a secret every process of the deployment shares",
        )
        with two_servers(env, root) as pair:
            yield pair


@pytest.fixture(scope="module")
def separate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Two processes on one database that share nothing else."""
    root = tmp_path_factory.mktemp("separate")
    with two_servers(_env(root), root) as pair:
        yield pair


def _ask(service: RunningService, n: int) -> httpx.Response:
    with service.client() as http:
        return http.post("/api/recovery", json={"email": f"person-{n}@example.com"})


def _post_form_elsewhere(rendered_by: RunningService, posted_to: RunningService) -> int:
    """Fetch the "Forgot password?" form from one process, submit it to the other."""
    with rendered_by.client() as http:
        form = http.get("/recovery")
        cookie = form.cookies["csrftoken"]
        match = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
        assert match, "the form carries a CSRF token"
    with posted_to.client(cookies={"csrftoken": cookie}) as http:
        answer = http.post(
            "/recovery", data={"email": "someone@example.com", "_csrf_token": match[1]}
        )
    return answer.status_code


def test_two_api_processes_sharing_redis_refuse_the_21st_request_from_one_ip(
    shared: Pair,
) -> None:
    """Ten requests to each process pass; the 21st, to either, is a 429 with Retry-After."""
    a, b = shared
    statuses = [_ask(a if n % 2 else b, n).status_code for n in range(LIMIT)]
    assert statuses == [202] * LIMIT
    for refused in (_ask(a, LIMIT), _ask(b, LIMIT + 1)):
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "rate_limited"


def test_without_redis_each_api_process_counts_its_own_requests(separate: Pair) -> None:
    """Without a shared store, a process that saw none of the first 20 requests still accepts."""
    a, b = separate
    statuses = [_ask(a, n).status_code for n in range(LIMIT)]
    assert statuses == [202] * LIMIT
    assert _ask(a, LIMIT).status_code == 429
    assert _ask(b, LIMIT + 1).status_code == 202


def test_a_form_rendered_by_one_process_is_accepted_by_another_sharing_the_csrf_secret(
    shared: Pair,
) -> None:
    """With RECOVERY_CSRF_SECRET set on both, the "Forgot password?" form posts across them."""
    a, b = shared
    assert _post_form_elsewhere(a, b) == 200


def test_without_a_shared_csrf_secret_another_process_refuses_the_form(separate: Pair) -> None:
    """Each process then has its own random secret, and the other's form gets a 403."""
    a, b = separate
    assert _post_form_elsewhere(a, b) == 403
