"""Running the application under uvicorn: read timeouts, a connection limit, the metrics socket.

uvicorn has no timeout for reading a request: a client that sends half its
headers, or a short body, holds its connection (and a slot) for as long as it
likes (300 half-sent headers were held 15 s and more, a short body 70 s). So
`recovery serve` runs uvicorn with:

- `TimedHttpToolsProtocol`: a request's headers must arrive within
  `http_header_timeout_seconds` of its first byte (or of the connection, for its
  first request), and its body within `http_body_timeout_seconds` of the
  headers; past either, the client gets a 408 and the connection is closed (by a
  watchdog that looks every `WATCH_INTERVAL_SECONDS`). Time spent in the handler,
  and idle keep-alive (uvicorn's own 5 s), are not counted;
- `limit_concurrency = http_max_connections`: past that many open connections
  (or running requests), new requests get uvicorn's 503;
- with `metrics_listen`, a second listening socket on that address, served by the
  same server (and every worker): the application answers /metrics there and
  nothing else (`api.app.MetricsListenerGuard`), and /metrics nowhere else.

The server's access log stays off (ours redacts tokens: `api.logs`).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

from api.settings import Settings

REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


# How often the watchdog looks for requests past their deadline: a timeout acts at
# most this much late.
WATCH_INTERVAL_SECONDS = 0.25


class ServeConfig(uvicorn.Config):
    """uvicorn's configuration, plus the two read timeouts the protocol enforces."""

    def __init__(
        self, app: Any, *, header_timeout: float, body_timeout: float, **options: Any
    ) -> None:
        super().__init__(app, **options)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.watchdog: Watchdog | None = None


class Watchdog:
    """One timer for every connection of a server: each tick closes the connections whose
    request is past its deadline.

    A timer per request (armed at its first byte, again at the end of its headers,
    cancelled when it is complete) cost a few percent of the CPU of a small request;
    a deadline is now one attribute set, and the watchdog ticks only while
    connections are open.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.watched: set[TimedHttpToolsProtocol] = set()
        self._tick: asyncio.TimerHandle | None = None

    def watch(self, protocol: TimedHttpToolsProtocol) -> None:
        self.watched.add(protocol)
        if self._tick is None:
            self._tick = self.loop.call_later(WATCH_INTERVAL_SECONDS, self._check)

    def forget(self, protocol: TimedHttpToolsProtocol) -> None:
        self.watched.discard(protocol)

    def _check(self) -> None:
        now = self.loop.time()
        for late in [p for p in self.watched if p.deadline_at is not None and p.deadline_at <= now]:
            late.too_slow()
        self._tick = (
            self.loop.call_later(WATCH_INTERVAL_SECONDS, self._check) if self.watched else None
        )


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's headers and body."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._header_timeout: float | None = getattr(config, "header_timeout", None)
        self._body_timeout: float | None = getattr(config, "body_timeout", None)
        self.deadline_at: float | None = None
        self._watchdog: Watchdog | None = None
        if isinstance(config, ServeConfig):
            if config.watchdog is None or config.watchdog.loop is not self.loop:
                config.watchdog = Watchdog(self.loop)
            self._watchdog = config.watchdog

    def _arm(self, seconds: float | None) -> None:
        self.deadline_at = None if seconds is None else self.loop.time() + seconds

    def _disarm(self) -> None:
        self.deadline_at = None

    def too_slow(self) -> None:
        self.deadline_at = None
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started or self.cycle.response_complete:
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self._watchdog is not None:
            self._watchdog.watch(self)
        self._arm(self._header_timeout)  # the first request's headers

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self._header_timeout)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self._body_timeout)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._watchdog is not None:
            self._watchdog.forget(self)
        super().connection_lost(exc)


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def serve(
    settings: Settings,
    app: Any,
    *,
    host: str,
    port: int,
    workers: int = 1,
    factory: bool = False,
    graceful_shutdown: float = 10,
) -> None:
    """Serve `app` (an application, or with `workers` > 1 a factory's import string) until
    stopped, giving open requests `graceful_shutdown` seconds after SIGTERM;
    `SystemExit` if it could not start (a port taken, a startup that failed)."""
    config = ServeConfig(
        app,
        factory=factory,
        host=host,
        port=port,
        workers=workers if workers > 1 else None,
        http=TimedHttpToolsProtocol,
        header_timeout=settings.http_header_timeout_seconds,
        body_timeout=settings.http_body_timeout_seconds,
        limit_concurrency=settings.http_max_connections,
        # Our own access log redacts tokens; uvicorn's prints query strings.
        access_log=False,
        # Logging is configured once, by configure_logging.
        log_config=None,
        # Client addresses come from the socket: the app alone decides, from
        # RECOVERY_TRUSTED_PROXIES, whether X-Forwarded-For counts.
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=graceful_shutdown,
    )
    sockets = [config.bind_socket()]
    if settings.metrics_address is not None:
        metrics_host, metrics_port = settings.metrics_address
        try:
            sockets.append(_listening_socket(metrics_host, metrics_port))
        except OSError as exc:
            uvicorn.config.logger.error("metrics listener %s: %s", settings.metrics_listen, exc)
            raise SystemExit(STARTUP_FAILURE) from None
        uvicorn.config.logger.info("metrics on http://%s:%d/metrics", metrics_host, metrics_port)
    if workers > 1:
        Multiprocess(config, sockets=sockets).run()
        return
    server = uvicorn.Server(config)
    server.run(sockets=sockets)
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)
