"""What wraps every answer: security headers, no-store, allowed hosts, and per-IP,
per-endpoint rate limits (in memory, or shared through a real Redis).

These test the HTTP layer, not storage, so they run on one SQLite file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from freezegun import freeze_time
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import create_engine, select
from sqlmodel import SQLModel

from api.accounts.passwords import Argon2Hasher
from api.settings import Settings
from api.web.app import create_app
from engine.core import AttemptRecord, attempt_t
from tests.api.conftest import assert_error
from tests.support.redis import RedisServer

CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
SECURITY = {
    "content-security-policy": CSP,
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """A TestClient on a fresh app over one SQLite file, with settings overrides."""
    url = f"sqlite:///{tmp_path / 'http.db'}"
    engine = create_engine(url)
    SQLModel.metadata.create_all(engine)
    engine.dispose()
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        settings = Settings(
            database_url=url,
            mail_url=f"file://{tmp_path / 'mail'}",
            **{"public_base_url": "https://accounts.example.test", **overrides},
        )
        client = TestClient(create_app(settings, hasher=Argon2Hasher.for_tests()))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _has_security_headers(answer: Any) -> None:
    for name, value in SECURITY.items():
        assert answer.headers.get(name) == value, (answer.request.url, name)


def test_every_answer_carries_the_security_headers(make_client: Callable[..., TestClient]) -> None:
    client = make_client(public_rate_limit_per_minute=2)
    big = {"email": "a" * 100_000}
    answers = [
        client.get("/health"),
        client.get("/api/flows"),
        client.get("/schema/openapi.json"),
        client.get("/metrics"),
        client.get("/login"),
        client.get("/no/such/page"),
        client.put("/api/recovery"),
        client.post("/api/recovery", json={"email": ["x"]}),
        client.post("/api/recovery", json={"email": "a@example.com"}),
        client.post("/api/recovery", json={"email": "a@example.com"}),  # 429
        client.post("/api/login", json=big),
        client.get("/api/support/attempts"),
        client.get("/api/session"),
        client.get("/api/flows", headers={"Host": "evil.example"}),
    ]
    statuses = [a.status_code for a in answers]
    assert statuses == [200, 200, 200, 404, 200, 404, 405, 400, 202, 429, 413, 401, 401, 400]
    for answer in answers:
        _has_security_headers(answer)


def test_recovery_login_and_session_answers_are_never_stored(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()
    answers = [
        client.post("/api/recovery", json={"email": "a@example.com"}),
        client.post("/api/recovery", json={"email": 1}),
        client.post("/api/recovery/verify", json={"token": "x" * 43}),
        client.post("/api/recovery/password", json={}),
        client.post("/api/recovery/cancel", json={"token": "x" * 43}),
        client.post("/api/login", json={"email": "a@example.com", "password": "nope"}),
        client.get("/api/session"),
        client.post("/api/logout"),
        client.get("/api/support/audit"),
        client.get("/recovery"),
    ]
    for answer in answers:
        assert answer.headers["cache-control"] == "no-store", answer.request.url


def test_a_foreign_host_is_refused_but_local_names_and_the_public_host_are_served(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()
    for host in ("evil.example", "accounts.example.test.evil.example", "example.test", ""):
        answer = client.get("/api/flows", headers={"Host": host})
        assert_error(answer, 400, "invalid_host")
    for host in (
        "accounts.example.test",
        "accounts.example.test:8443",
        "localhost:8000",
        "127.0.0.1",
        "[::1]:8000",
    ):
        assert client.get("/api/flows", headers={"Host": host}).status_code == 200, host


def test_litestars_test_host_is_not_answered_unless_configured(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`testserver.local` is no name of a production deployment: refused by default; an
    operator adds names with RECOVERY_EXTRA_ALLOWED_HOSTS (the tests add that one)."""
    monkeypatch.delenv("RECOVERY_EXTRA_ALLOWED_HOSTS")
    assert Settings().extra_allowed_hosts == ()
    client = make_client()
    assert_error(client.get("/api/flows"), 400, "invalid_host")
    assert_error(client.get("/api/flows", headers={"Host": "testserver.local"}), 400)
    assert client.get("/api/flows", headers={"Host": "accounts.example.test"}).status_code == 200
    internal = make_client(extra_allowed_hosts="internal.example, other.example")
    assert internal.get("/api/flows", headers={"Host": "internal.example:8000"}).status_code == 200
    assert_error(internal.get("/api/flows", headers={"Host": "testserver.local"}), 400)


def test_strict_transport_security_is_sent_when_the_public_base_url_is_https(
    make_client: Callable[..., TestClient],
) -> None:
    secure = make_client()  # https://accounts.example.test
    for answer in (
        secure.get("/health"),
        secure.get("/login"),
        secure.get("/api/flows"),
        secure.get("/no/such/page"),
        secure.post("/api/recovery", json={"email": ["x"]}),
    ):
        assert answer.headers["strict-transport-security"] == "max-age=31536000"
    plain = make_client(public_base_url="http://accounts.example.test")
    assert "strict-transport-security" not in plain.get("/login").headers


# -- rate limits ----------------------------------------------------------------------------


def test_public_posts_are_limited_per_ip_and_per_endpoint_with_retry_after(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(public_rate_limit_per_minute=3)
    with freeze_time("2026-11-30 09:00:00", real_asyncio=True) as clock:
        ok = [client.post("/api/recovery", json={"email": f"p{i}@example.com"}) for i in range(3)]
        assert [a.status_code for a in ok] == [202, 202, 202]
        # Successful answers carry no counter: two "Forgot password?" answers stay identical.
        assert not any(h.lower().startswith("ratelimit") for a in ok for h in a.headers)
        refused = client.post("/api/recovery", json={"email": "p9@example.com"})
        assert_error(refused, 429, "rate_limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["ratelimit-limit"] == "3"
        assert refused.headers["ratelimit-remaining"] == "0"
        # Another endpoint has its own budget; GETs have a budget of their own.
        bad_login = {"email": "a@example.com", "password": "x"}
        assert client.post("/api/login", json=bad_login).status_code == 401
        assert all(client.get("/api/flows").status_code == 200 for _ in range(5))
        clock.tick(61)
        assert client.post("/api/recovery", json={"email": "p9@example.com"}).status_code == 202


METRICS_TOKEN = "a-metrics-token-only-the-scraper-knows"
# Every kind of public GET: a page, the link check, a diagram, the metrics, a static file.
PUBLIC_GETS = [
    "/login",
    "/recovery/reset?token=" + "x" * 43,
    "/api/flows/password_recovery/diagram?format=mermaid",
    "/metrics",
    "/static/pages.css",
]


@pytest.mark.parametrize("path", PUBLIC_GETS)
def test_public_gets_are_limited_per_ip_and_endpoint_with_retry_after(
    make_client: Callable[..., TestClient], path: str
) -> None:
    """GETs have their own per-IP, per-endpoint budget: past it a 429 with Retry-After
    (a page for pages), while the other endpoints still answer."""
    client = make_client(public_get_rate_limit_per_minute=3, metrics_token=METRICS_TOKEN)
    client.headers["Authorization"] = f"Bearer {METRICS_TOKEN}"
    with freeze_time("2026-11-30 09:00:00", real_asyncio=True):
        normal = [client.get(path, follow_redirects=False).status_code for _ in range(3)]
        assert all(status < 429 for status in normal), normal
        refused = client.get(path, follow_redirects=False)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        if path.startswith(("/api", "/metrics", "/static")):
            assert_error(refused, 429, "rate_limited")
        for other in PUBLIC_GETS:
            if other != path:
                assert client.get(other, follow_redirects=False).status_code < 429, other


def test_one_endpoint_is_one_budget_whatever_its_path_parameters(
    make_client: Callable[..., TestClient],
) -> None:
    """Diagrams of any flow name share the diagram endpoint's budget: varying the name
    buys no fresh one."""
    client = make_client(public_get_rate_limit_per_minute=3)
    with freeze_time("2026-11-30 09:00:00", real_asyncio=True):
        answers = [
            client.get(f"/api/flows/{name}/diagram?format=dot").status_code
            for name in ("password_recovery", "nope-1", "nope-2", "nope-3")
        ]
    assert answers == [200, 404, 404, 429]


def test_health_and_ready_are_never_rate_limited(make_client: Callable[..., TestClient]) -> None:
    """Probes ask often from one address; a 429 would take a healthy process out of rotation."""
    client = make_client(public_get_rate_limit_per_minute=1, public_rate_limit_per_minute=1)
    with freeze_time("2026-11-30 09:00:00", real_asyncio=True):
        assert {client.get("/health").status_code for _ in range(10)} == {200}
        assert 429 not in {client.get("/ready").status_code for _ in range(10)}


# Every public POST of the JSON API, a body for it, and its answer while under the limit.
PUBLIC_POSTS: dict[str, tuple[dict[str, Any] | None, int]] = {
    "/api/recovery": ({"email": "someone@example.com"}, 202),
    "/api/recovery/verify": ({"token": "x" * 43}, 400),
    "/api/recovery/password": (
        {"token": "x" * 43, "password": "Lilac-Umbrella-Sonata-97!", "password_confirm": ""},
        400,
    ),
    "/api/recovery/cancel": ({"token": "x" * 43}, 400),
    "/api/login": ({"email": "someone@example.com", "password": "Wrong-Pass-99!"}, 401),
    "/api/logout": (None, 401),
}


@pytest.mark.parametrize("path", list(PUBLIC_POSTS))
def test_each_public_post_is_refused_past_its_own_per_ip_limit_with_retry_after(
    make_client: Callable[..., TestClient], path: str
) -> None:
    """The (limit+1)th POST to one endpoint is a 429 with Retry-After; the others still answer."""
    client = make_client(public_rate_limit_per_minute=2)

    def post(to: str) -> Any:
        body, _ = PUBLIC_POSTS[to]
        return client.post(to) if body is None else client.post(to, json=body)

    with freeze_time("2026-11-30 09:00:00", real_asyncio=True):
        normal = PUBLIC_POSTS[path][1]
        assert [post(path).status_code for _ in range(2)] == [normal, normal]
        refused = post(path)
        assert_error(refused, 429, "rate_limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["ratelimit-limit"] == "2"
        for other, (_, status) in PUBLIC_POSTS.items():
            if other != path:
                assert post(other).status_code == status, other
        assert_error(post(path), 429, "rate_limited")


async def _post_as(app: Litestar, peer: str, forwarded: str | None = None) -> int:
    """One POST from a chosen peer address (the TestClient's peer is not an IP)."""
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        answer = await client.post(
            "/api/recovery", json={"email": "someone@example.com"}, headers=headers
        )
    return answer.status_code


async def test_a_forged_x_forwarded_for_does_not_reset_the_counter_of_an_untrusted_peer(
    make_app: Callable[..., Litestar],
) -> None:
    app = make_app(public_rate_limit_per_minute=2)
    assert [await _post_as(app, "192.0.2.10", f"203.0.113.{i}") for i in range(3)] == [
        202,
        202,
        429,
    ]
    assert await _post_as(app, "192.0.2.11") == 202  # another peer, another budget


async def test_behind_a_trusted_proxy_the_forwarded_client_is_counted(
    make_app: Callable[..., Litestar],
) -> None:
    app = make_app(public_rate_limit_per_minute=2, trusted_proxies=("10.0.0.0/8",))
    proxy = "10.1.2.3"
    assert [await _post_as(app, proxy, "203.0.113.5") for _ in range(3)] == [202, 202, 429]
    assert await _post_as(app, proxy, "203.0.113.6") == 202
    # A client cannot slip a forged entry in front: the proxy appends the real address.
    assert await _post_as(app, proxy, "198.51.100.1, 203.0.113.5") == 429
    services = app.state["services"]
    recorded = {a.data["client_ip"] for a in _attempts(services)}
    assert recorded == {"203.0.113.5", "203.0.113.6"}


def test_two_apps_sharing_redis_share_the_limit(
    make_client: Callable[..., TestClient], redis_server: RedisServer
) -> None:
    first = make_client(public_rate_limit_per_minute=3, redis_url=redis_server.url)
    second = make_client(public_rate_limit_per_minute=3, redis_url=redis_server.url)
    body = {"email": "a@example.com"}
    statuses = [
        first.post("/api/recovery", json=body).status_code,
        second.post("/api/recovery", json=body).status_code,
        first.post("/api/recovery", json=body).status_code,
        second.post("/api/recovery", json=body).status_code,
    ]
    assert statuses == [202, 202, 202, 429]


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., Litestar]]:
    """An app driven without lifespan (httpx's ASGI transport); its database closed after."""
    url = f"sqlite:///{tmp_path / 'peers.db'}"
    engine = create_engine(url)
    SQLModel.metadata.create_all(engine)
    engine.dispose()
    apps: list[Litestar] = []

    def make(**overrides: Any) -> Litestar:
        settings = Settings(database_url=url, mail_url=f"file://{tmp_path / 'mail'}", **overrides)
        apps.append(create_app(settings, hasher=Argon2Hasher.for_tests()))
        return apps[-1]

    yield make
    for app in apps:
        app.state["services"].engine.db.close()


def _attempts(services: Any) -> list[AttemptRecord]:
    with services.engine.db.transaction(write=False) as conn:
        return [AttemptRecord.from_row(r) for r in conn.execute(select(attempt_t))]
