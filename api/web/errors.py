"""Every error the application can meet, mapped to one JSON answer, in one table.

The answer always has the shape `{"error": {"code", "message", "details"}}`.
Domain and engine errors carry their own stable `code`; Litestar's own errors
(validation, 404, 405, 413, 429, ...) get a fixed code and a fixed message
here. Nothing from the request is echoed except field names: Litestar's own
messages can quote the query string (tokens!), so they are never passed on.
Anything unexpected is a 500 with a generic message, logged without its
message text (a database error can quote parameters).
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from litestar import MediaType, Request, Response
from litestar.exceptions import (
    ClientException,
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    TooManyRequestsException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_415_UNSUPPORTED_MEDIA_TYPE
from sqlalchemy.exc import OperationalError

from api.admin.accounts import AccountNotFound
from api.admin.importing import ImportRefused
from api.errors import (
    AccountExists,
    AddressTaken,
    ContactCodeInvalid,
    InvalidCode,
    InvalidInput,
    LinkDead,
    LinkUsed,
    LoginFailed,
    LoginSlowedDown,
    PolicyFailed,
    RecoveryError,
    SessionInvalid,
    UnknownToken,
    describe,
)
from api.i18n import gettext, ngettext, pick_locale
from api.logs import escape
from api.support.resend import ResendRefused
from api.support.service import KeyNameTaken, KeyNotFound
from api.web.schemas import ErrorBody
from api.webhooks.endpoints import DeliveryNotFound, DeliveryQueued, WebhookNotFound
from engine.errors import (
    ConflictError,
    EngineError,
    EventRefused,
    GraphvizMissing,
    InvalidAttemptId,
    NotFound,
    StoredStateInvalid,
    UnknownEvent,
    UnknownFlow,
)

log = logging.getLogger("api.errors")

GENERIC_500 = "something went wrong on our side; the request was not completed"
GENERIC_ERROR = "the request could not be completed"
UNAVAILABLE = "the service is briefly unavailable; nothing was recorded, try again shortly"
RETRY_AFTER_OUTAGE_SECONDS = 5
# The one code of every kind of malformed input (a wrong type, an unknown field, bad JSON,
# JSON nested too deeply, a bad query parameter), whoever found it: the domain
# (`InvalidInput`) or Litestar's own validation.
INVALID_INPUT = InvalidInput.code
# A route whose handler consumes a link token sets this opt: a dead-because-used
# link there is a conflict (someone else submitted first), elsewhere it is gone.
CONSUMES_TOKEN = "consumes_token"


class InvalidHost(ClientException):
    """The request's Host header names a host this service does not answer to."""

    status_code = HTTP_400_BAD_REQUEST


class JsonTooDeep(ClientException):
    """The JSON body nests deeper than the decoder can follow (msgspec raises RecursionError)."""

    status_code = HTTP_400_BAD_REQUEST


class NotJson(HTTPException):
    """A body sent to the JSON API with another Content-Type than application/json."""

    status_code = HTTP_415_UNSUPPORTED_MEDIA_TYPE


class ClientDisconnected(ClientException):
    """The client went away before its request body was complete (or was cut off for
    sending it too slowly): nobody reads the answer, and nothing went wrong here."""

    status_code = HTTP_400_BAD_REQUEST


class MetricsNotServed(NotFoundException):
    """/metrics is not served at this address (see `Settings.metrics_token`/`metrics_listen`)."""


@dataclass(frozen=True)
class Answer:
    """How one kind of error is answered: status, and (for framework errors) code and message."""

    status: int | Callable[[Request[Any, Any, Any]], int]
    code: str | None = None
    message: str | None = None


def _used_link_status(request: Request[Any, Any, Any]) -> int:
    handler = request.scope.get("route_handler")
    consumes = bool(handler is not None and handler.opt.get(CONSUMES_TOKEN))
    return 409 if consumes else 410


# THE table. Lookups walk the exception's class hierarchy, most specific first.
ANSWERS: Mapping[type[Exception], Answer] = {
    # the recovery domain
    InvalidInput: Answer(400),
    UnknownToken: Answer(400),
    InvalidCode: Answer(400),
    LinkUsed: Answer(_used_link_status),
    LinkDead: Answer(410),
    PolicyFailed: Answer(422),
    LoginFailed: Answer(401),
    LoginSlowedDown: Answer(429),
    SessionInvalid: Answer(401),
    AccountExists: Answer(409),
    ContactCodeInvalid: Answer(400),
    AddressTaken: Answer(409),
    KeyNameTaken: Answer(409),
    AccountNotFound: Answer(404),
    ImportRefused: Answer(422),
    WebhookNotFound: Answer(404),
    DeliveryNotFound: Answer(404),
    DeliveryQueued: Answer(409),
    KeyNotFound: Answer(404),
    ResendRefused: Answer(429),
    RecoveryError: Answer(400),
    # the engine
    InvalidAttemptId: Answer(400, INVALID_INPUT),
    NotFound: Answer(404),
    UnknownFlow: Answer(404),
    UnknownEvent: Answer(400),
    EventRefused: Answer(409),
    ConflictError: Answer(409),
    GraphvizMissing: Answer(501),
    StoredStateInvalid: Answer(500, "internal_error", GENERIC_500),
    # The database cannot be reached (a restart, a failover): safe to retry.
    OperationalError: Answer(503, "unavailable", UNAVAILABLE),
    EngineError: Answer(500, "internal_error", GENERIC_500),
    # Litestar's own
    ValidationException: Answer(400, INVALID_INPUT, "the request is not valid"),
    RequestEntityTooLarge: Answer(413, "body_too_large", "the request body is too large"),
    TooManyRequestsException: Answer(
        429, "rate_limited", "too many requests; try again after the time in Retry-After"
    ),
    MetricsNotServed: Answer(404, "not_found", "metrics are not served at this address"),
    NotFoundException: Answer(404, "not_found", "there is nothing at this address"),
    MethodNotAllowedException: Answer(
        405, "method_not_allowed", "this method is not allowed at this address"
    ),
    NotAuthorizedException: Answer(401, "unauthorized", "a valid bearer key is required"),
    PermissionDeniedException: Answer(403, "forbidden", "this key may not do that"),
    InvalidHost: Answer(400, "invalid_host", "this service does not answer to that host name"),
    JsonTooDeep: Answer(400, INVALID_INPUT, "the JSON body is nested too deeply"),
    ClientDisconnected: Answer(
        400, "client_disconnected", "the request ended before its body was complete"
    ),
    NotJson: Answer(
        415, "unsupported_media_type", "the body must be JSON, sent as application/json"
    ),
    ClientException: Answer(400, INVALID_INPUT, "the request is not valid"),
    HTTPException: Answer(500, "internal_error", GENERIC_500),
    Exception: Answer(500, "internal_error", GENERIC_500),
}


def answer_for(exc: BaseException) -> Answer:
    """The table's entry for the most specific class of `exc`."""
    for cls in type(exc).__mro__:
        if cls in ANSWERS:
            return ANSWERS[cls]
    return ANSWERS[Exception]


def error_body(
    code: str, message: str, details: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """The one error shape."""
    return {"error": {"code": code, "message": message, "details": [dict(d) for d in details]}}


def _framework_details(exc: BaseException, locale: str) -> list[dict[str, Any]]:
    """Field-level problems from Litestar's validation, in the request's language, without
    any submitted value and without the decoder's own words (Python type names)."""
    if isinstance(exc, ClientException) and str(exc.detail).startswith("JSON is malformed"):
        return [{"field": "body", "message": gettext(locale, "the body is not valid JSON")}]
    if not isinstance(exc, ValidationException) or not isinstance(exc.extra, list):
        return []
    details = []
    for item in exc.extra[:MAX_DETAILS]:
        if not isinstance(item, dict):
            continue
        key = str(item.get("key") or "")
        if key == "data":
            key = "body"
        source = item.get("source") or ""
        # Litestar gives a `ParamType` member for parameters: its value is the JSON word.
        source = str(getattr(source, "value", source))
        field, message = plain_message(key, str(item.get("message") or ""), locale)
        details.append(
            {
                "field": escape(field)[:100],
                "source": escape(source)[:20],
                "message": escape(message)[:200],
            }
        )
    return details


MAX_DETAILS = 20
# The decoder's type names, as a client reads them.
JSON_KINDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "object": "an object",
    "array": "an array",
    "null": "null",
    "datetime": "a date and time",
    "date": "a date",
    "uuid": "a UUID",
}
NUMBER_BOUNDS = {
    ">=": "must be at least {number}",
    ">": "must be greater than {number}",
    "<=": "must be at most {number}",
    "<": "must be less than {number}",
}
_EXPECTED = re.compile(r"Expected `([a-z]+)`(?: \| `null`)?, got `[a-z]+`")
_BOUND = re.compile(r"Expected `([a-z]+)`(?: of length)? (<=|>=|<|>) (\d+)")
_FIELD = re.compile(r"Object (missing required|contains unknown) field `([^`]{1,100})`")


def plain_message(field: str, message: str, locale: str) -> tuple[str, str]:
    """(field, message) for one of the decoder's complaints, said in our words in `locale`."""
    if message in ("'data'", ""):
        return field, gettext(locale, "a JSON object body is required")
    found = _FIELD.match(message)
    if found:
        named = found.group(2) if field in ("", "body") else f"{field}.{found.group(2)}"
        if found.group(1) == "missing required":
            return named, gettext(locale, "this field is required")
        return named, gettext(locale, "this field is not allowed")
    found = _BOUND.match(message)
    if found:
        kind, relation, number = found.group(1), found.group(2), int(found.group(3))
        return field, _bound_text(kind, relation, number, locale)
    found = _EXPECTED.match(message)
    if found and found.group(1) in JSON_KINDS:
        kind = gettext(locale, JSON_KINDS[found.group(1)])
        return field, gettext(locale, "must be {kind}", kind=kind)
    if message.startswith("Invalid RFC3339 encoded datetime"):
        return field, gettext(locale, "must be a date and time such as 2026-12-01T09:00:00Z")
    if message.startswith("Missing required"):
        return field, gettext(locale, "this parameter is required")
    return field, gettext(locale, "this value is not valid")


def _bound_text(kind: str, relation: str, number: int, locale: str) -> str:
    if kind == "str":
        if relation in (">=", ">"):
            least = number if relation == ">=" else number + 1
            return ngettext(
                locale,
                "must be at least {count} character",
                "must be at least {count} characters",
                least,
            )
        most = number if relation == "<=" else number - 1
        return ngettext(
            locale, "must be at most {count} character", "must be at most {count} characters", most
        )
    if kind == "array":
        if relation in (">=", ">"):
            least = number if relation == ">=" else number + 1
            return ngettext(
                locale, "must hold at least {count} item", "must hold at least {count} items", least
            )
        most = number if relation == "<=" else number - 1
        return ngettext(
            locale, "must hold at most {count} item", "must hold at most {count} items", most
        )
    return gettext(locale, NUMBER_BOUNDS[relation], number=number)


def _headers(exc: BaseException, status: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    if isinstance(exc, HTTPException) and exc.headers:
        headers.update(exc.headers)
    if isinstance(exc, LoginSlowedDown | ResendRefused):
        headers["Retry-After"] = str(max(1, exc.retry_after))
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def request_locale(request: Request[Any, Any, Any]) -> str:
    """The request's language, as every page and answer picks it: `?lang=`, then
    Accept-Language, then English (read from the scope, which cannot fail to parse)."""
    query = parse_qs(request.scope.get("query_string", b"").decode("latin-1"))
    explicit = (query.get("lang") or [None])[-1]
    return pick_locale(request.headers.get("accept-language"), explicit)


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Answer any exception from the table, its messages in the request's language."""
    entry = answer_for(exc)
    status = entry.status(request) if callable(entry.status) else entry.status
    locale = request_locale(request)
    if status >= 500 and entry.code == "internal_error":
        _log_unexpected(request, exc)
        return _json(status, error_body("internal_error", gettext(locale, GENERIC_500)), {})
    if entry.code == "unavailable":
        log.warning(
            "database unavailable (%s) on %s %s",
            describe(exc),
            request.method,
            escape(_path(request)),
        )
        body = error_body("unavailable", gettext(locale, UNAVAILABLE))
        return _json(status, body, {"Retry-After": str(RETRY_AFTER_OUTAGE_SECONDS)})
    if isinstance(exc, RecoveryError):
        message = exc.in_language(locale)
        body = error_body(entry.code or exc.code, message, _domain_details(exc, locale))
    elif isinstance(exc, EngineError):
        message = gettext(locale, exc.template, **exc.fields)
        body = error_body(entry.code or exc.code, message, _domain_details(exc, locale))
    else:
        message = gettext(locale, entry.message or GENERIC_ERROR)
        body = error_body(entry.code or "error", message, _framework_details(exc, locale))
    return _json(status, body, _headers(exc, status))


def _domain_details(exc: RecoveryError | EngineError, locale: str) -> list[dict[str, Any]]:
    if isinstance(exc, RecoveryError):
        details = exc.details_in(locale)
        if isinstance(exc, LinkDead) and not details:
            details = [{"reason": exc.reason}]
        return details
    if isinstance(exc, EventRefused):
        return [{"event": exc.event, "state": exc.state, "reason": exc.reason}]
    if isinstance(exc, InvalidAttemptId):
        return [{"field": "id", "message": gettext(locale, exc.template)}]
    return []


def _json(status: int, body: dict[str, Any], headers: dict[str, str]) -> Response[Any]:
    return Response(content=body, status_code=status, headers=headers, media_type=MediaType.JSON)


def _path(request: Request[Any, Any, Any]) -> str:
    # From the scope, not `request.url`: building the URL parses the Host header,
    # which raises on a bad port, and an error handler must not fail a second time.
    return str(request.scope.get("path", ""))


def _log_unexpected(request: Request[Any, Any, Any], exc: BaseException) -> None:
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error(
        "unhandled %s on %s %s\n%s",
        describe(exc),
        request.method,
        escape(_path(request)),
        frames,
    )


def exception_handlers() -> dict[type[Exception] | int, Any]:
    """Litestar's `exception_handlers`: every class of the table goes to `handle_exception`."""
    return {cls: handle_exception for cls in ANSWERS}


# -- OpenAPI: the error answers each route documents ---------------------------

_DESCRIPTIONS = {
    400: "Malformed input (wrong type, unknown field, bad JSON, unknown token, bad id, "
    "a code that opens nothing)",
    401: "Missing or invalid credentials",
    403: "The key's role does not allow this",
    404: "No such resource",
    405: "Method not allowed here",
    409: "Conflict: not allowed in the current state, or another request won",
    410: "The link can no longer be used (expired, used, superseded, cancelled)",
    413: "The request body is larger than the configured cap",
    415: "The body was not sent as application/json",
    422: "The new password breaks the policy (details list every violation), or rows of an "
    "import are not valid (details list every bad row)",
    429: "Too many requests; see Retry-After",
    501: "Graphviz is not installed on the server (ask for dot or mermaid)",
    503: "The database cannot be reached right now; nothing was recorded, retry (Retry-After)",
}


def documented(*statuses: int, database: bool = True) -> dict[int, Any]:
    """OpenAPI `responses` for the given error statuses, all with the error schema
    (plus 503 for a route that needs the database)."""
    if database:
        statuses = (*statuses, 503)
    return {
        status: ResponseSpec(
            data_container=ErrorBody, description=_DESCRIPTIONS[status], generate_examples=False
        )
        for status in statuses
    }
