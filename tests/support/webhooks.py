"""A webhook receiver on loopback that checks every signature with `standardwebhooks`.

`WebhookReceiver` is a real HTTP server on 127.0.0.1 (a thread), as an application
would run: each POST is verified with the Standard Webhooks library against the
endpoint's secret and recorded (verified or not), then answered 204. It can be down
(`stop()`: the port refuses connections), come back on the same port (`start()`), or
hold each request until released (`hold()`), to play a slow receiver.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

HOLD_LIMIT_SECONDS = 30.0


@dataclass
class Received:
    """One POST as the receiver saw it."""

    headers: dict[str, str]
    body: bytes
    verified: bool
    payload: dict[str, Any] | None

    @property
    def type(self) -> str | None:
        return (self.payload or {}).get("type")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class WebhookReceiver:
    """See the module docstring."""

    port: int = field(default_factory=free_port)
    secret: str | None = None
    received: list[Received] = field(default_factory=list)
    in_flight: int = 0
    _server: ThreadingHTTPServer | None = None
    _gate: threading.Event | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/recovery"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                with receiver._lock:
                    receiver.in_flight += 1
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if receiver._gate is not None:
                    receiver._gate.wait(HOLD_LIMIT_SECONDS)
                receiver._record(dict(self.headers.items()), body)
                self.send_response(204)
                self.end_headers()
                with receiver._lock:
                    receiver.in_flight -= 1

            def log_message(self, *_args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @contextmanager
    def hold(self) -> Iterator[threading.Event]:
        """Each request waits until the yielded event is set (or the block ends)."""
        self._gate = threading.Event()
        try:
            yield self._gate
        finally:
            self._gate.set()
            self._gate = None

    def _record(self, headers: dict[str, str], body: bytes) -> None:
        verified, payload = False, None
        if self.secret is not None:
            try:
                payload = Webhook(self.secret).verify(body, headers)
                verified = True
            except (WebhookVerificationError, ValueError):
                verified = False
        if payload is None:
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
        with self._lock:
            self.received.append(Received(headers, body, verified, payload))

    def types(self) -> list[str | None]:
        return [r.type for r in self.received]
