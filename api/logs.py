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
from collections.abc import Callable

from litestar.types import ASGIApp, Message, Receive, Scope, Send

ACCESS_LOGGER = "recovery.access"
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_HEADER = REQUEST_ID_HEADER.encode()
REDACTED = "[redacted]"
# Every line the service writes: `2026-12-01 09:30:00,123 INFO recovery.access: GET / 200 ...`.
LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

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


# What each pattern needs in a text before it can match: a word (in any case; under
# re.IGNORECASE a few non-ASCII letters match ASCII ones, which case-folding also
# maps), or the long opaque run alone. Most lines hold none of them, and a line that
# none of the patterns matches comes back unchanged (a replacement never creates a
# new match), so one cheap look saves the four substitutions: the first pattern
# alone, case-insensitive at every position, cost several microseconds a line.
_NEEDS_A_WORD = re.compile(r"token|password|secret|key|hash|bearer|\$argon2")
_OPAQUE = _SECRET_PATTERNS[-1][0]


def redact(text: str) -> str:
    """`text` with everything that looks like a secret replaced by `[redacted]`."""
    if _NEEDS_A_WORD.search(text.casefold()) is None and _OPAQUE.search(text) is None:
        return text
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with `redact`; attach it to handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "redacted", False):
            return True  # redacted where it was made (the access log's lines), or already here
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not lose the record
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        record.redacted = True
        return True


class RedactingFormatter(logging.Formatter):
    """A formatter whose whole output (tracebacks included) goes through `redact`.

    A record whose message `RedactingFilter` already rewrote, and that carries no
    traceback, is not redacted a second time: the rest of the line is the time,
    the level and the logger's name. With the service's own format (`LINE_FORMAT`),
    such a record's line is put together directly, without `Formatter.format`'s
    general steps.
    """

    _second: int | None = None
    _second_text = ""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self._service_format = fmt == LINE_FORMAT and datefmt is None

    def format(self, record: logging.LogRecord) -> str:
        if (
            self._service_format
            and getattr(record, "redacted", False)
            and record.exc_info is None
            and record.exc_text is None
            and record.stack_info is None
        ):
            record.message = record.getMessage()
            record.asctime = self.formatTime(record)
            return f"{record.asctime} {record.levelname} {record.name}: {record.message}"
        text = super().format(record)
        if getattr(record, "redacted", False) and not (record.exc_text or record.stack_info):
            return text
        return redact(text)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The default `YYYY-MM-DD HH:MM:SS,mmm`, the seconds formatted once per second
        (the access log writes a line per request; strftime was a tenth of it)."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime(self.default_time_format, self.converter(second))
        return self.default_msec_format % (self._second_text, record.msecs)


RawHeaders = list[tuple[bytes, bytes]]
# Called with each response's header list (to extend in place) and the request's path.
OnResponseStart = Callable[[RawHeaders, str], None]


class AccessLogMiddleware:
    """One access-log line per HTTP request, query string left out; adds `X-Request-ID`.

    `on_response_start` may add headers of its own to every response in the same
    pass (the application's security headers): one wrapper of `send` per request
    instead of one per concern.
    """

    def __init__(self, app: ASGIApp, on_response_start: OnResponseStart | None = None) -> None:
        self.app = app
        self.log = logging.getLogger(ACCESS_LOGGER)
        self.on_response_start = on_response_start
        # What every line's record holds but its message, time and request id.
        template = self.log.makeRecord(
            self.log.name, logging.INFO, "(unknown file)", 0, "", None, None
        )
        self._record_template = vars(template)
        self._template_at = template.created
        self._template_since_start = template.relativeCreated

    def _write(self, line: str, request_id: str) -> None:
        """Hand one line to the access logger's handlers, as `Logger.info` would, with its
        message redacted here: the record is a copy of a template rather than made
        field by field (that and the formatting were a third of a `GET /health` inside
        the application)."""
        record = logging.LogRecord.__new__(logging.LogRecord)
        fields = record.__dict__
        fields.update(self._record_template)
        created = time.time()
        fields["msg"] = redact(line)
        fields["created"] = created
        fields["msecs"] = (created - int(created)) * 1000
        fields["relativeCreated"] = (
            self._template_since_start + (created - self._template_at) * 1000
        )
        fields["request_id"] = request_id
        fields["redacted"] = True
        self.log.handle(record)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope.get("path", "")
        status = 500
        on_start = self.on_response_start

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers") or [])
                headers.append((_REQUEST_ID_HEADER, request_id.encode()))
                if on_start is not None:
                    on_start(headers, path)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if self.log.isEnabledFor(logging.INFO):
                self._write(
                    f"{scope.get('method', '-')} {escape(path)[:300]} {status} "
                    f"{(time.perf_counter() - started) * 1000:.1f}ms id={request_id}",
                    request_id,
                )


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr through the redacting formatter and filter.

    Also quiets uvicorn's access logger (it records query strings) in case it is
    left on, and stops records from gathering what no line of ours prints (the
    caller's file and line, thread and process: the logging HOWTO's "Optimization"
    switches), which was a fifth of the cost of an access-log line.
    """
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(LINE_FORMAT))
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
