"""Logging without secrets: the access log, a redacting filter, and the process set-up.

uvicorn's access log and Litestar's logging middleware record query strings
(and bodies), which is where recovery links carry their tokens. The server
runs uvicorn with `access_log=False`, and `AccessLogMiddleware` writes one line
per request instead: method, path without its query string, status, duration,
request id. Anything a client chose (the path) has CR/LF and other control
characters escaped, so nobody can forge a log line.

As a second line of defence, `RedactingFilter` (and `RedactingFormatter`,
which also covers tracebacks) rewrite anything that looks like a secret:
`token=...`, `password...`, `Bearer ...`, Argon2 hashes, and long opaque
strings (URL-safe tokens, hex digests).
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time

from litestar.types import ASGIApp, Message, Receive, Scope, Send

ACCESS_LOGGER = "recovery.access"
REQUEST_ID_HEADER = "x-request-id"
REDACTED = "[redacted]"

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # key=value and "key": "value" forms of anything secret-named.
    (
        re.compile(
            r"(?i)((?:token|password|password_confirm|session_token|secret|key|hash)"
            r"[\"']?\s*[=:]\s*[\"']?)[^\s&\"',;]+"
        ),
        r"\1" + REDACTED,
    ),
    (re.compile(r"(?i)\b(bearer)\s+[^\s\"',;]+"), r"\1 " + REDACTED),
    (re.compile(r"\$argon2(?:id|i|d)\$[^\s\"',;]+"), REDACTED),
    # Opaque strings as long as a 256-bit token (43 URL-safe chars) or a hex digest.
    (re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{40,}(?![A-Za-z0-9_-])"), REDACTED),
)


def escape(text: str) -> str:
    """`text` with control characters (CR, LF, ...) shown as escapes: one log line stays one."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def redact(text: str) -> str:
    """`text` with everything that looks like a secret replaced by `[redacted]`."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with `redact`; attach it to handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not lose the record
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        return True


class RedactingFormatter(logging.Formatter):
    """A formatter whose whole output (tracebacks included) goes through `redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class AccessLogMiddleware:
    """One access-log line per HTTP request, query string left out; adds `X-Request-ID`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers") or [])
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.log.info(
                "%s %s %s %.1fms id=%s",
                scope.get("method", "-"),
                escape(scope.get("path", ""))[:300],
                status,
                (time.perf_counter() - started) * 1000,
                request_id,
                extra={"request_id": request_id},
            )


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr through the redacting formatter and filter.

    Also quiets uvicorn's access logger (it records query strings) in case it is
    left on.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_recovery", False):
            root.removeHandler(old)
    handler._recovery = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
    for name in ("uvicorn", "uvicorn.error", "litestar"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
