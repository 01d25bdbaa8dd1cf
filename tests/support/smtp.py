"""A real SMTP server on loopback for tests, benchmarks and chaos scripts.

`SmtpSink` runs aiosmtpd in its own thread on 127.0.0.1 and keeps what it
receives. It keeps its port across `stop()` and `start()`, so "the mail
server is down" is real (connections to the port are refused) and "it came
back" is the same URL again. `refuse(code)` makes it answer RCPT or DATA with
an SMTP error (4xx temporary, 5xx permanent) until `accept()`. Given
`credentials`, it requires SMTP AUTH (over plain TCP: it is loopback); with
`smtputf8=True` it offers SMTPUTF8 (addresses with non-ASCII characters); with
`eight_bit=False` it does not offer 8BITMIME (a server that takes 7-bit bodies
only). A kept message also holds its bytes as received and its MAIL options.

Every accepted message also leaves a `Receipt` (when it was accepted, on the
wall clock, and its envelope) in `receipts`; with `keep_messages=False` the
sink keeps only those and skips parsing the message (~1 ms of CPU each), which
is what the benchmarks use to time hundreds of messages a second.

The `smtp_sink` fixture gives each test a started sink and stops it after.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser, Parser
from typing import Any, Literal, NamedTuple

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

Stage = Literal["rcpt", "data"]


class ReceivedMessage(EmailMessage):
    """A message as the sink received it, with its SMTP envelope."""

    envelope_from: str = ""
    envelope_rcpts: tuple[str, ...] = ()
    # When the sink accepted it (time.time(), the wall clock other processes share).
    received_at: float = 0.0
    # The message's bytes as they arrived (after the DATA dot-stuffing is undone).
    raw: bytes = b""
    mail_options: tuple[str, ...] = ()


class Receipt(NamedTuple):
    """That a message was accepted: when (time.time()), its envelope, and the client's
    address and port (one per connection)."""

    received_at: float
    envelope_from: str
    envelope_rcpts: tuple[str, ...]
    peer: tuple[str, int] | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Handler:
    """aiosmtpd hooks: refuse on demand, otherwise keep the message."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.sink.eight_bit:
            return responses
        return [line for line in responses if "8BITMIME" not in line.upper()]

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = self.sink._refusal("rcpt")
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        refusal = self.sink._refusal("data")
        if refusal:
            return refusal
        peer = tuple(session.peer[:2]) if session.peer else None
        receipt = Receipt(time.time(), envelope.mail_from, tuple(envelope.rcpt_tos), peer)
        message: ReceivedMessage | None = None
        if self.sink.keep_messages:
            raw = envelope.original_content or envelope.content
            if getattr(envelope, "smtp_utf8", False):
                # An SMTPUTF8 message is UTF-8 throughout; parsed as bytes, its headers
                # would come back with surrogate escapes.
                message = Parser(_class=ReceivedMessage, policy=policy.default).parsestr(
                    raw.decode("utf-8")
                )
            else:
                message = BytesParser(_class=ReceivedMessage, policy=policy.default).parsebytes(raw)
            message.envelope_from = receipt.envelope_from
            message.envelope_rcpts = receipt.envelope_rcpts
            message.received_at = receipt.received_at
            message.raw = raw
            message.mail_options = tuple(envelope.mail_options)
        self.sink._received(receipt, message)
        return "250 Message accepted for delivery"


class SmtpSink:
    """A loopback SMTP server that records messages, can go down, and can refuse."""

    def __init__(
        self,
        port: int | None = None,
        credentials: tuple[str, str] | None = None,
        *,
        smtputf8: bool = False,
        eight_bit: bool = True,
        keep_messages: bool = True,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or _free_port()
        self.credentials = credentials
        # Whether it offers SMTPUTF8 (RFC 6531): addresses with non-ASCII characters.
        self.smtputf8 = smtputf8
        # Whether it offers 8BITMIME (RFC 6152): bodies with 8-bit bytes.
        self.eight_bit = eight_bit
        self.keep_messages = keep_messages
        self.messages: list[ReceivedMessage] = []
        self.receipts: list[Receipt] = []
        self._cond = threading.Condition()
        self._controller: Controller | None = None
        self._refuse: tuple[int, str, Stage] | None = None

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> SmtpSink:
        """Listen (again) on the same port."""
        if self._controller is None:
            auth: dict[str, Any] = {}
            if self.credentials is not None:
                auth = {
                    "authenticator": self._authenticate,
                    "auth_required": True,
                    "auth_require_tls": False,
                }
            controller = Controller(
                _Handler(self),
                hostname=self.host,
                port=self.port,
                enable_SMTPUTF8=self.smtputf8,
                **auth,
            )
            controller.start()
            self._controller = controller
        return self

    def stop(self) -> None:
        """Stop listening: connections to the port are refused until `start()`."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def refuse(self, code: int = 451, stage: Stage = "rcpt", text: str | None = None) -> None:
        """Answer `code` at RCPT or DATA from now on (4xx: try later, 5xx: never)."""
        if not 400 <= code <= 599:
            raise ValueError("refusal codes are 4xx or 5xx")
        if stage not in ("rcpt", "data"):
            raise ValueError("stage is 'rcpt' or 'data'")
        default = "Try again later" if code < 500 else "No such user here"
        self._refuse = (code, text or default, stage)

    def accept(self) -> None:
        """Accept mail again."""
        self._refuse = None

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()
            self.receipts.clear()

    def to(self, address: str) -> list[ReceivedMessage]:
        """The messages whose envelope names `address`."""
        with self._cond:
            return [m for m in self.messages if address in m.envelope_rcpts]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Block until at least `count` messages arrived; TimeoutError otherwise.

        Messages are counted by their receipts, so this works with
        `keep_messages=False` too (the list returned is then empty).
        `Condition.wait_for` times out on threading's own clock, which
        freezegun leaves alone, so this works under a frozen clock too.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.receipts) >= count, timeout):
                raise TimeoutError(
                    f"expected {count} message(s) within {timeout}s, got {len(self.receipts)}"
                )
            return list(self.messages)

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and self.credentials is not None
            and (auth_data.login.decode(), auth_data.password.decode()) == self.credentials
        )
        return AuthResult(success=ok, handled=False)

    def _refusal(self, stage: Stage) -> str | None:
        refuse = self._refuse
        if refuse is not None and refuse[2] == stage:
            return f"{refuse[0]} {refuse[1]}"
        return None

    def _received(self, receipt: Receipt, message: ReceivedMessage | None) -> None:
        with self._cond:
            self.receipts.append(receipt)
            if message is not None:
                self.messages.append(message)
            self._cond.notify_all()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A started loopback SMTP server for one test."""
    with SmtpSink() as sink:
        yield sink
