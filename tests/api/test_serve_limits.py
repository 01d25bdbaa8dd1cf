"""`recovery serve` as a real subprocess against stalled and hostile connections: header and
body read timeouts, the connection limit, the metrics listener, and requests that used to
be answered 500 by the served process itself.

Timeouts are set short here (1 s) so the tests stay quick; each test asserts what the
server did (a 408 and a closed connection, a 503, a 404), with generous socket timeouts
only so that a server that does nothing fails the test instead of hanging it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.postgres import free_port
from tests.support.service import RunningService, running_service

pytestmark = pytest.mark.slow

WAIT_S = 15.0  # far longer than the 1 s timeouts: only a server that never acts hits it
METRICS_TOKEN = "a-metrics-token-only-the-scraper-knows"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "RECOVERY_DATABASE_URL": f"sqlite:///{tmp_path / 'recovery.db'}",
        "RECOVERY_MAIL_URL": f"file://{tmp_path / 'mail'}",
        "RECOVERY_HTTP_HEADER_TIMEOUT_SECONDS": "1",
        "RECOVERY_HTTP_BODY_TIMEOUT_SECONDS": "1",
        **extra,
    }


@pytest.fixture
def served(tmp_path: Path) -> Iterator[RunningService]:
    with running_service(_env(tmp_path), cwd=tmp_path) as service:
        yield service


def _connect(service: RunningService, port: int | None = None) -> socket.socket:
    sock = socket.create_connection((service.host, port or service.port), timeout=WAIT_S)
    sock.settimeout(WAIT_S)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or WAIT_S passes)."""
    received = b""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            break
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept the connection open; it sent {received!r}")


def _errors(log: str) -> list[str]:
    """Lines of the log that tell of an error: a level above INFO, a 500, a stack frame."""
    return [
        line
        for line in log.splitlines()
        if any(mark in line for mark in (" ERROR ", " WARNING ", " 500 ", 'File "', "Traceback"))
    ]


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connects and says nothing
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ",  # half a header
        b"POST /api/recovery HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n" + b'{"email": "',  # a short body
    ],
    ids=["nothing", "half_headers", "short_body"],
)
def test_a_stalled_request_gets_a_408_and_its_connection_is_closed(
    served: RunningService, sent: bytes
) -> None:
    with _connect(served) as sock:
        sock.sendall(sent)
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    # The server goes on serving everyone else, and logged no error.
    with served.client() as http:
        assert http.get("/health").status_code == 200
    assert not _errors(served.log())


def test_headers_arriving_in_pieces_within_the_timeout_are_served(served: RunningService) -> None:
    with _connect(served) as sock:
        for piece in (b"GET /health HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"\r\n"):
            sock.sendall(piece)
            time.sleep(0.2)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")


def test_past_the_connection_limit_new_requests_get_503_until_connections_close(
    tmp_path: Path,
) -> None:
    env = _env(
        tmp_path,
        RECOVERY_HTTP_MAX_CONNECTIONS="3",
        RECOVERY_HTTP_HEADER_TIMEOUT_SECONDS="30",
    )
    with running_service(env, cwd=tmp_path) as service:
        idle = [_connect(service) for _ in range(3)]
        time.sleep(0.2)  # let the server accept them
        with service.client() as http:
            assert http.get("/health").status_code == 503
            for sock in idle:
                sock.close()
            deadline = time.monotonic() + WAIT_S
            while http.get("/health").status_code != 200:
                assert time.monotonic() < deadline, "the server never freed the slots"
                time.sleep(0.05)


def test_the_metrics_listener_serves_metrics_alone_and_the_public_port_does_not(
    tmp_path: Path,
) -> None:
    metrics_port = free_port()
    env = _env(tmp_path, RECOVERY_METRICS_LISTEN=f"127.0.0.1:{metrics_port}")
    with running_service(env, cwd=tmp_path) as service:
        with service.client() as public:
            assert public.get("/metrics").status_code == 404
            assert public.get("/health").status_code == 200
        with httpx.Client(base_url=f"http://127.0.0.1:{metrics_port}", timeout=WAIT_S) as scraper:
            metrics = scraper.get("/metrics")
            assert metrics.status_code == 200
            assert "recovery_attempts" in metrics.text
            for other in ("/health", "/api/flows", "/login"):
                assert scraper.get(other).status_code == 404, other


def test_with_both_the_listener_wants_the_token_too(tmp_path: Path) -> None:
    metrics_port = free_port()
    env = _env(
        tmp_path,
        RECOVERY_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
        RECOVERY_METRICS_TOKEN=METRICS_TOKEN,
    )
    with running_service(env, cwd=tmp_path) as service:
        with service.client() as public:
            bearer = {"Authorization": f"Bearer {METRICS_TOKEN}"}
            assert public.get("/metrics", headers=bearer).status_code == 404
        with httpx.Client(base_url=f"http://127.0.0.1:{metrics_port}", timeout=WAIT_S) as scraper:
            assert scraper.get("/metrics").status_code == 401
            assert scraper.get("/metrics", headers=bearer).status_code == 200


def test_the_served_process_answers_deep_json_bad_hosts_and_odd_static_names_with_4xx(
    served: RunningService,
) -> None:
    """The three requests that were 500s (each with a traceback in the log) against the
    real server: 400, 400 and 404 in the error shape, and no traceback logged."""
    with served.client() as http:
        deep = http.post(
            "/api/recovery",
            content=b"[" * 3000 + b"]" * 3000,
            headers={"Content-Type": "application/json"},
        )
        hosts = [
            http.post("/api/recovery", json={"email": "a@example.com"}, headers={"Host": host})
            for host in ("127.0.0.1:evil", "localhost:99999")
        ]
        page = http.get("/login", headers={"Host": "127.0.0.1:evil"})
        static = http.get("/static/%00")
    assert (deep.status_code, deep.json()["error"]["code"]) == (400, "invalid_input")
    assert [(h.status_code, h.json()["error"]["code"]) for h in hosts] == [
        (400, "invalid_host"),
        (400, "invalid_host"),
    ]
    assert page.status_code == 400
    assert (static.status_code, static.json()["error"]["code"]) == (404, "not_found")
    assert not _errors(served.log())
