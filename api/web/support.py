"""The support API: attempts (list, detail, diagram), cancel, resend, stats, audit log.

Every route needs `Authorization: Bearer <support key>`. A guard checks the
key (401 without a valid one) and the route's role (403 when a `read` key
calls a `write` route) and leaves the key's name on the connection; the
handlers pass it to `SupportService`, which records every query and action
under that name. Emails are masked; no password, token, hash or link is
ever part of an answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import Example
from litestar.params import Body, FromQuery, JSONBody, PathParameter, QueryParameter
from litestar.types import Scope

from api.errors import RecoveryError
from api.logs import escape
from api.services import Services
from api.support.reference import support_reference
from api.support.service import (
    DEFAULT_AUDIT_PAGE,
    DEFAULT_PAGE,
    MAX_AUDIT_PAGE,
    MAX_PAGE,
    UNKNOWN_KEY,
)
from api.web.errors import answer_for, documented
from api.web.flows import ATTEMPT_FORMATS, diagram_operation, format_parameter, render_diagram
from api.web.ratelimit import client_ip, parse_networks
from api.web.schemas import (
    AttemptItem,
    AttemptPage,
    AuditItem,
    AuditPage,
    CancelBody,
    Delivery,
    FunnelStep,
    ResendAnswer,
    ResendBody,
    StateAnswer,
    Stats,
    SupportAttempt,
    TimelineEntry,
)
from engine import EngineError

SUPPORT_PATH = "/api/support"
ROLE_OPT = "support_role"
ROLE_RANK = {"read": 0, "write": 1, "admin": 2}
# Paths whose refusals are audited under the key that made them (the admin API too).
AUDITED_PATHS = (SUPPORT_PATH, "/api/admin")


async def require_support_key(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """401 without a valid key, 403 when its role is below the route's."""
    scheme, _, key = (connection.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise NotAuthorizedException()
    services: Services = connection.app.state["services"]
    found = await services.support.authenticate(key.strip())
    if found is None:
        raise NotAuthorizedException()
    name, role = found
    # Known before the role check, so a refusal is audited under the key's name.
    connection.state["support_key_name"] = name
    needed = handler.opt.get(ROLE_OPT, "write")
    if ROLE_RANK.get(role, -1) < ROLE_RANK[needed]:
        raise PermissionDeniedException()


async def audit_refusal(exc: Exception, scope: Scope) -> None:
    """`after_exception` hook: every support request refused outside the support service
    is audited too. Under the key's name when the key is valid: a body or query that
    fails validation, a role too low, a path or method the API does not have (404, 405).
    A key that is no key of ours on a route (401, counted by the support API's rate
    limit) is recorded as `UNKNOWN_KEY` with the client's address, never the key;
    elsewhere, and without any key, there is nothing to attribute and nothing recorded.
    Refusals raised by the support service itself are audited there (and marked)."""
    path = str(scope.get("path", ""))
    if not any(path == p or path.startswith(p + "/") for p in AUDITED_PATHS):
        return
    if getattr(exc, "audited", False):
        return
    services: Services = scope["litestar_app"].state["services"]
    name = (scope.get("state") or {}).get("support_key_name")
    client = None
    if name is None:
        # The guard did not run (no such route or method) or refused the key.
        key = _bearer(scope)
        if key is None:
            return
        found = await services.support.authenticate(key)
        if found is None:
            if not isinstance(exc, NotAuthorizedException):
                # No such route or method: the rate limits never saw it (they apply to
                # routes), so a row per request would be a free write for anyone.
                return
            name = UNKNOWN_KEY
            client = client_ip(Request(scope), parse_networks(services.settings.trusted_proxies))
        else:
            name = found[0]
    if isinstance(exc, RecoveryError | EngineError):
        outcome = exc.code
    else:
        outcome = answer_for(exc).code or "refused"
    await services.support.record_refusal(
        str(name), str(scope.get("method", "")), escape(path), outcome, client
    )


def _bearer(scope: Scope) -> str | None:
    for header, value in scope.get("headers") or ():
        if header == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":
                return None
            return key.strip() or None
    return None


def key_name(request: Request[Any, Any, Any]) -> str:
    """The name of the key the guard accepted."""
    return str(request.state["support_key_name"])


# The reason is audited and kept in the event log; request_info sends it to the person.
EVENT_EXAMPLES = [
    Example(summary="approve (assisted_recovery)", value={"reason": "details match the account"}),
    Example(
        summary="request_info (assisted_recovery): the question the person is sent",
        value={"reason": "Which city did you last sign in from?"},
    ),
    Example(summary="deny (assisted_recovery)", value={"reason": "the details do not match"}),
    Example(summary="cancel", value={"reason": "the person asked us to stop"}),
]
READ = {ROLE_OPT: "read"}
WRITE = {ROLE_OPT: "write"}
AttemptId = Annotated[str, PathParameter(description="the attempt's id (a UUID)")]


@get(
    "/attempts",
    opt=READ,
    summary="Attempts, newest first, masked, one keyset page at a time",
    responses=documented(400, 401, 403, 429),
)
async def list_attempts(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    flow: Annotated[str | None, QueryParameter(description="only attempts of this flow")] = None,
    state_filter: Annotated[
        str | None, QueryParameter(name="state", description="only attempts in this state")
    ] = None,
    email: Annotated[str | None, QueryParameter(description="exact address (normalised)")] = None,
    reference: Annotated[
        str | None, QueryParameter(description="the short reference a person reads out")
    ] = None,
    since: Annotated[datetime | None, QueryParameter(description="created at or after")] = None,
    until: Annotated[datetime | None, QueryParameter(description="created before")] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    cursor: Annotated[
        str | None, QueryParameter(description="next_cursor of the previous page")
    ] = None,
) -> AttemptPage:
    page = await services.support.list_attempts(
        key_name(request),
        flow=flow,
        state=state_filter,
        email=email,
        reference=reference,
        since=since,
        until=until,
        limit=limit,
        cursor=cursor,
    )
    return AttemptPage(items=[AttemptItem(**i) for i in page.items], next_cursor=page.next_cursor)


@get(
    "/attempts/{attempt_id:str}",
    opt=READ,
    summary="One attempt: its state, delivery facts, full timeline, allowed events",
    responses=documented(400, 401, 403, 404, 429),
)
async def attempt_detail(
    request: Request[Any, Any, Any], services: NamedDependency[Services], attempt_id: AttemptId
) -> SupportAttempt:
    detail = await services.support.attempt(key_name(request), attempt_id)
    timeline = [
        TimelineEntry(**{("from_" if k == "from" else k): v for k, v in entry.items()})
        for entry in detail.pop("timeline")
    ]
    delivery = Delivery(**detail.pop("delivery"))
    return SupportAttempt(**detail, delivery=delivery, timeline=timeline)


@get(
    "/attempts/{attempt_id:str}/diagram",
    opt=READ,
    summary="The flow diagram with this attempt's state and path highlighted",
    responses=documented(400, 401, 403, 404, 429, 501),
    media_type="text/plain",
    operation_class=diagram_operation(ATTEMPT_FORMATS),
)
async def attempt_diagram(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    attempt_id: AttemptId,
    format: Annotated[str, format_parameter(ATTEMPT_FORMATS)] = "svg",
) -> Response[bytes]:
    # The service checks the format, so that a bad one is audited like any refusal.
    fmt = format
    record, path = await services.support.diagram(key_name(request), attempt_id, fmt)
    # The version the attempt runs on: its path is drawn on that diagram.
    spec = services.engine.spec_of(record)
    return await render_diagram(services.diagrams, spec, fmt, current=record.state, path=path)


@post(
    "/attempts/{attempt_id:str}/cancel",
    status_code=200,
    opt=WRITE,
    summary="Cancel the attempt (kills its link); 409 when not allowed in its state",
    responses=documented(400, 401, 403, 404, 409, 413, 415, 429),
)
async def cancel_attempt(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    attempt_id: AttemptId,
    data: JSONBody[CancelBody],
) -> StateAnswer:
    state = await services.support.cancel(key_name(request), attempt_id, data.reason)
    return StateAnswer(state=state)


@post(
    "/attempts/{attempt_id:str}/events/{event:str}",
    status_code=200,
    opt=WRITE,
    summary="Fire an event the attempt's flow lets support fire (its detail lists them now)",
    description=(
        "The events support may fire depend on the flow (password_recovery: cancel; "
        "assisted_recovery: approve, deny, request_info, cancel) and on the attempt's state: "
        "the attempt's detail lists those allowed now in `support_events`. Every one needs "
        "a reason and is audited under the key's name. 400 for an event support may not "
        "fire, 409 when the attempt's state does not allow it now."
    ),
    responses=documented(400, 401, 403, 404, 409, 413, 415, 429),
)
async def fire_event(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    attempt_id: AttemptId,
    event: Annotated[str, PathParameter(description="the event to fire, e.g. cancel")],
    data: Annotated[CancelBody, Body(examples=EVENT_EXAMPLES)],
) -> StateAnswer:
    record = await services.support.fire_event(key_name(request), attempt_id, event, data.reason)
    return StateAnswer(state=record.state)


@post(
    "/attempts/{attempt_id:str}/resend",
    status_code=202,
    opt=WRITE,
    summary="Start a new attempt for the same address; once emailed it supersedes older links",
    description=(
        "Refused with 429 (`resend_refused`, Retry-After, and `possible_at` in the details) "
        "while the address got an email less than the resend cooldown ago or had its emails "
        "for the hour, unless `override_reason` is given (audited). Resends of one address "
        "are serialised: two requests a second apart send one email."
    ),
    responses=documented(400, 401, 403, 404, 413, 415, 429),
)
async def resend(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    attempt_id: AttemptId,
    data: JSONBody[ResendBody | None] = None,
) -> ResendAnswer:
    # A body carrying any other field (an address, a token, a password) is a 400 rather
    # than silently ignored.
    record = await services.support.resend(
        key_name(request),
        attempt_id,
        override_reason=data.override_reason if data else None,
        expected_latest=data.expected_latest if data else None,
    )
    return ResendAnswer(
        attempt_id=str(record.id),
        state=record.state,
        reference=support_reference(record.id),
        resend_of=str(record.data.get("resend_of", "")),
    )


@get(
    "/stats",
    opt=READ,
    summary="Counts per state, and the funnel with conversion and median time between steps",
    description="Over attempts created in [since, until); the default window is the last 7 days.",
    responses=documented(400, 401, 403, 429),
)
async def stats(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    since: FromQuery[datetime | None] = None,
    until: FromQuery[datetime | None] = None,
    flow: Annotated[
        str | None, QueryParameter(description="the flow counted (default: the first registered)")
    ] = None,
) -> Stats:
    found = await services.support.stats(key_name(request), since, until, flow)
    funnel = [FunnelStep(**step) for step in found.pop("funnel")]
    return Stats(**found, funnel=funnel)


@get(
    "/audit",
    opt=READ,
    summary="Support queries and actions with the key's name, newest first, a keyset page",
    responses=documented(400, 401, 403, 429),
)
async def audit(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_AUDIT_PAGE)] = DEFAULT_AUDIT_PAGE,
    cursor: Annotated[
        str | None, QueryParameter(description="next_cursor of the previous page")
    ] = None,
) -> AuditPage:
    page = await services.support.audit(key_name(request), limit, cursor)
    return AuditPage(items=[AuditItem(**i) for i in page.items], next_cursor=page.next_cursor)


router = Router(
    path=SUPPORT_PATH,
    route_handlers=[
        list_attempts,
        attempt_detail,
        attempt_diagram,
        cancel_attempt,
        fire_event,
        resend,
        stats,
        audit,
    ],
    guards=[require_support_key],
    security=[{"support_key": []}],
    tags=["support"],
    opt={"exclude_from_csrf": True},
)

route_handlers: list[Any] = [router]
