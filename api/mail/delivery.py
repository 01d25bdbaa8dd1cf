"""Handing a rendered message to the transport, and what a failed try means.

`Mail.send` returns the transport's error instead of raising it, so a job can
decide: a permanent refusal (5xx, an address the server cannot take) ends the
attempt, a temporary one is tried again after `backoff(tries)` until
`mail_max_tries`. Every send is reported to `on_send` (its duration and
outcome), which the metrics observe. `sender` is who the messages are from:
the brand and its display names (`api.brand.Sender`), built once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

from api.brand import Sender
from api.mail.transports import MailError, MailTransport, PermanentMailError, TemporaryMailError
from api.settings import MailSettings, Settings
from engine.worker import describe, log_failure

OnSend = Callable[[float, str], None]
# What a job stores when a stored address cannot be written into a message at all.
UNUSABLE_ADDRESS = "the stored address cannot be written into an email"


def queued_delivery() -> dict[str, Any]:
    """The delivery facts an attempt records before its email is sent."""
    return {"status": "queued", "tries": 0, "last_error": None, "sent_at": None}


class Mail:
    """The configured transport, with the retry rules of the mail settings."""

    def __init__(
        self,
        settings: MailSettings,
        transport: MailTransport,
        on_send: OnSend | None = None,
        at_once: int = 4,
    ) -> None:
        if at_once < 1:
            raise ValueError("at_once must be at least 1")
        self.settings = settings
        self.transport = transport
        self.on_send = on_send
        # Sends in flight at once in `send_many` (each holds an SMTP connection).
        self.at_once = at_once
        self.sender: Sender = (
            Sender.from_settings(settings)
            if isinstance(settings, Settings)
            else Sender.plain(settings.mail_from)
        )

    def backoff(self, tries: int) -> timedelta:
        """How long to wait after the `tries`-th failed try: doubling from the base."""
        return timedelta(seconds=self.settings.mail_retry_base_seconds * 2 ** (tries - 1))

    def gives_up(self, error: MailError, tries: int) -> bool:
        """Whether a failed try is the last: refused for good, or out of tries."""
        return isinstance(error, PermanentMailError) or tries >= self.settings.mail_max_tries

    async def send(self, message: EmailMessage) -> MailError | None:
        """Hand the message to the transport; the error if it was not accepted."""
        started = time.perf_counter()
        error: MailError | None = None
        try:
            await self.transport.send(message)
        except MailError as exc:
            error = exc
        except Exception as exc:
            # An unexpected transport failure may pass; it is retried like a 4xx.
            error = TemporaryMailError(f"transport failed: {describe(exc)}")
        outcome = (
            "sent"
            if error is None
            else "permanent"
            if isinstance(error, PermanentMailError)
            else "temporary"
        )
        if self.on_send is not None:
            try:
                self.on_send(time.perf_counter() - started, outcome)
            except Exception as exc:
                log_failure("on_send callback", exc)
        return error

    async def send_many(self, messages: Sequence[EmailMessage]) -> list[MailError | None]:
        """`send` for many messages, `at_once` at a time; the error of each, in order."""
        slots = asyncio.Semaphore(self.at_once)

        async def one(message: EmailMessage) -> MailError | None:
            async with slots:
                return await self.send(message)

        return list(await asyncio.gather(*(one(m) for m in messages)))
