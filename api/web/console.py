"""The support console: the HTML screens support agents work in, under `/support`.

Server-rendered Jinja (templates in `templates/console/`, its own stylesheet
`static/console.css`, no script, no third-party asset), in English or French
(`?lang=`, else `Accept-Language`), laid out for a phone as well as a desk,
and usable with the keyboard alone (only links, buttons and form fields).

Agents sign in as people (`api.support.agents`): a password, then a TOTP code
when they have a second factor (every `write` agent does). The session is a
cookie (HttpOnly, SameSite=Strict, scoped to `/support`) that ends after
`support_session_idle_minutes` idle; every form carries the app's CSRF token.
A guard lets only a live session through, and only a `write` agent through
the routes that change something: a `read` agent sees no action buttons, and
a post of theirs is a 403 (audited). Every query and action goes through
`api.support.console`, which audits it under the agent's label.

Screens: find (one search box: an exact address, a reference as read out, or
an attempt id; filters by flow, state and time), the case queue (what the
flows' `support_queue` hooks list, oldest first, overdue flagged), an attempt (state,
reference, its diagram inline with the path and current state highlighted,
the timeline as sentences, delivery facts, client, the address's other
journeys, what its flow adds (`flow_detail`, drawn by `console/flow/<flow>.html`
when the flow has one), the events support may fire now, resend), an account (exists?,
name, masked address, last sign-in, slow-down with "clear", open sessions
with "revoke", its journeys), stats (each flow's funnel and counts per state
as SVG charts with the numbers beside them), the audit log (by agent, action
and attempt), and the support keys (list; revoke, `write`).
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from babel.dates import format_datetime, format_timedelta
from litestar import Request, Router, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath
from litestar.response import Redirect, Response, Template
from markupsafe import Markup

from api.accounts.overview import Overview
from api.errors import InvalidInput, LoginFailed, LoginSlowedDown, RecoveryError
from api.services import Services
from api.support.agents import Agent, Agents, CodeRefused
from api.support.console import Console, understand
from api.support.resend import ResendRefused
from api.web.pages import _page
from engine import EngineError, diagrams
from engine.errors import GraphvizMissing, NotFound

__all__ = ["CONSOLE_PATH", "PENDING_COOKIE", "SESSION_COOKIE", "room_for", "route_handlers"]

CONSOLE_PATH = "/support"
SESSION_COOKIE = "support_session"
PENDING_COOKIE = "support_pending"
PENDING_COOKIE_PATH = "/support/login"
ROLE_OPT = "console_role"
STATE_KEY = "console"
HEADERS: Mapping[str, str] = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
# The periods the stats page offers, in hours.
PERIODS = {"24h": 24, "7d": 7 * 24, "30d": 30 * 24}
DEFAULT_PERIOD = "7d"
MAX_REASON_CHARS = 500
# The widths of the stats charts, in SVG user units.
CHART_WIDTH = 320
CHART_BAR = 22
CHART_GAP = 8
LOCAL_TIME = "%Y-%m-%dT%H:%M"


class NotSignedIn(NotAuthorizedException):
    """No live console session: the sign-in page instead."""


class ReadOnly(PermissionDeniedException):
    """A `read` agent on a route that changes something (a failed CSRF check is Litestar's
    own PermissionDeniedException, told apart by this class)."""


@dataclass(frozen=True)
class Room:
    """What the console's routes work with, built once per application."""

    services: Services
    agents: Agents
    console: Console


def room_for(services: Services) -> Room:
    """The console's services around the application's."""
    agents = Agents(
        services.engine.db,
        services.engine.clock,
        services.hasher,
        services.policy,
        services.signin,
        services.settings,
    )
    overview = Overview(
        services.engine.db, services.engine.clock, services.signin, services.settings
    )
    return Room(services, agents, Console(services.support, agents, overview))


def _room(connection: ASGIConnection[Any, Any, Any, Any]) -> Room:
    room: Room = connection.app.state[STATE_KEY]
    return room


# -- times in the agent's zone ----------------------------------------------------------


@dataclass(frozen=True)
class Clockface:
    """Times as an agent reads them: in their zone, absolute and relative, in their language."""

    locale: str
    zone: str
    now: datetime

    @functools.cached_property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.zone)

    def absolute(self, moment: datetime | str | None) -> str:
        value = _moment(moment)
        if value is None:
            return "–"
        return format_datetime(value, "yyyy-MM-dd HH:mm:ss", tzinfo=self.tz, locale=self.locale)

    def relative(self, moment: datetime | str | None) -> str:
        value = _moment(moment)
        if value is None:
            return ""
        return format_timedelta(
            value - self.now, add_direction=True, threshold=1.0, locale=self.locale
        )

    def when(self, moment: datetime | str | None) -> Markup:
        """`<time>` with the absolute time, and the relative one beside it."""
        value = _moment(moment)
        if value is None:
            return Markup("–")
        return Markup('<time datetime="{}">{}</time> <span class="ago">({})</span>').format(
            value.isoformat(), self.absolute(value), self.relative(value)
        )

    def local_input(self, moment: datetime | None) -> str:
        """A time for a `datetime-local` field, in the agent's zone."""
        return moment.astimezone(self.tz).strftime(LOCAL_TIME) if moment else ""

    def parse_local(self, text: str | None, field: str) -> datetime | None:
        """A `datetime-local` (or date) field's value, read in the agent's zone."""
        if not text or not text.strip():
            return None
        text = text.strip()
        for pattern in (LOCAL_TIME, "%Y-%m-%d"):
            try:
                return datetime.strptime(text, pattern).replace(tzinfo=self.tz).astimezone(UTC)
            except ValueError:
                continue
        raise InvalidInput(field, "a time looks like 2026-12-01T14:30")


def _moment(value: datetime | str | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- rendering ---------------------------------------------------------------------------


def _agent(request: Request[Any, Any, Any]) -> Agent:
    agent: Agent = request.state["agent"]
    return agent


def render(
    request: Request[Any, Any, Any],
    template: str,
    *,
    status: int = 200,
    cookies: Sequence[Cookie] = (),
    headers: Mapping[str, str] | None = None,
    **context: Any,
) -> Template:
    """A console page in the request's language, times in the agent's zone."""
    page = _page(request)
    agent: Agent | None = request.state.get("agent")
    clock = _room(request).services.engine.clock
    face = Clockface(page.locale, agent.time_zone if agent else "UTC", clock.now())
    return Template(
        template_name=f"console/{template}",
        context={
            "page": page,
            "locale": page.locale,
            "agent": agent,
            "times": face,
            "nav": context.pop("nav", None),
            **context,
        },
        status_code=status,
        headers={**HEADERS, **(headers or {})},
        cookies=list(cookies),
        media_type="text/html",
    )


def _redirect(
    request: Request[Any, Any, Any], path: str, *, cookies: Sequence[Cookie] = (), **query: str
) -> Redirect:
    return Redirect(
        _page(request).url(path, **query),
        status_code=303,
        headers=dict(HEADERS),
        cookies=list(cookies),
    )


def _https(request: Request[Any, Any, Any]) -> bool:
    return urlsplit(_room(request).services.settings.public_base_url).scheme == "https"


def _cookie(
    request: Request[Any, Any, Any], key: str, value: str, max_age: int, path: str = CONSOLE_PATH
) -> Cookie:
    return Cookie(
        key=key,
        value=value,
        path=path,
        max_age=max(0, max_age),
        httponly=True,
        samesite="strict",
        secure=_https(request),
    )


async def _form(request: Request[Any, Any, Any], *names: str) -> dict[str, str]:
    """Each named field as one string ("" when missing); a repeated field is refused."""
    form = await request.form()
    values = {}
    for name in names:
        found = form.getall(name) if name in form else []
        if len(found) > 1 or (found and not isinstance(found[0], str)):
            raise InvalidInput(name, "this field was sent more than once")
        values[name] = found[0] if found else ""
    return values


async def _run(request: Request[Any, Any, Any], fn: Any, *args: Any, **kw: Any) -> Any:
    """Console work on the database's writer (every query writes its audit entry)."""
    return await _room(request).services.engine.db.run(fn, *args, **kw)


# -- the guard -------------------------------------------------------------------------------


async def require_agent(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """A live session (its idle clock restarted), and the route's role: `NotSignedIn`
    sends to the sign-in page, a `read` agent on a `write` route is a 403 (audited)."""
    room = _room(connection)
    agent = await room.agents.session(connection.cookies.get(SESSION_COOKIE))
    if agent is None:
        raise NotSignedIn()
    connection.state["agent"] = agent
    if handler.opt.get(ROLE_OPT) == "write" and not agent.can_write:
        path = str(connection.scope.get("path", ""))[:200]
        await room.services.engine.db.run(
            room.console.audit_log.record,
            agent.label,
            "refused",
            path,
            {"method": connection.scope.get("method", ""), "outcome": "forbidden"},
        )
        raise ReadOnly()


WRITE = {ROLE_OPT: "write"}


# -- signing in --------------------------------------------------------------------------------


@get("/login", name="console_login")
async def login_form(request: Request[Any, Any, Any]) -> Template:
    return render(request, "login.html", error=None, email="")


@post("/login", name="console_login_submit")
async def login_submit(request: Request[Any, Any, Any]) -> Response[Any]:
    room = _room(request)
    fields = await _form(request, "email", "password")
    email = fields["email"].strip()
    try:
        opened = await room.agents.sign_in(email, fields["password"])
    except LoginSlowedDown as exc:
        return render(
            request,
            "login.html",
            status=429,
            headers={"Retry-After": str(exc.retry_after)},
            error="slowed_down",
            retry_after=exc.retry_after,
            email=email[:320],
        )
    except (LoginFailed, InvalidInput):
        return render(request, "login.html", status=401, error="invalid", email=email[:320])
    seconds = int((opened.expires_at - room.services.engine.clock.now()).total_seconds())
    if opened.needs_code:
        cookie = _cookie(request, PENDING_COOKIE, opened.token, seconds, PENDING_COOKIE_PATH)
        return _redirect(request, "/support/login/code", cookies=[cookie])
    await _run(request, room.console.record_sign_in, opened.agent, "ok")
    cookie = _cookie(request, SESSION_COOKIE, opened.token, seconds)
    return _redirect(request, "/support/attempts", cookies=[cookie])


@get("/login/code", name="console_code")
async def code_form(request: Request[Any, Any, Any]) -> Response[Any]:
    room = _room(request)
    pending = await _run(request, room.agents.pending_sync, request.cookies.get(PENDING_COOKIE))
    if pending is None:
        return _redirect(request, "/support/login")
    return render(request, "code.html", error=None)


@post("/login/code", name="console_code_submit")
async def code_submit(request: Request[Any, Any, Any]) -> Response[Any]:
    room = _room(request)
    fields = await _form(request, "code")
    token = request.cookies.get(PENDING_COOKIE)
    pending = await _run(request, room.agents.pending_sync, token)
    if pending is None:
        return _redirect(request, "/support/login")
    try:
        opened = await room.agents.second_factor(token, fields["code"])
    except LoginSlowedDown as exc:
        return render(
            request,
            "code.html",
            status=429,
            headers={"Retry-After": str(exc.retry_after)},
            error="slowed_down",
            retry_after=exc.retry_after,
        )
    except CodeRefused:
        await _run(request, room.console.record_sign_in, pending, "invalid_code")
        return render(request, "code.html", status=401, error="invalid")
    await _run(request, room.console.record_sign_in, opened.agent, "ok")
    seconds = int((opened.expires_at - room.services.engine.clock.now()).total_seconds())
    cookies = [
        _cookie(request, SESSION_COOKIE, opened.token, seconds),
        _cookie(request, PENDING_COOKIE, "", 0, PENDING_COOKIE_PATH),
    ]
    return _redirect(request, "/support/attempts", cookies=cookies)


@post("/logout", name="console_logout")
async def logout(request: Request[Any, Any, Any]) -> Redirect:
    room = _room(request)
    token = request.cookies.get(SESSION_COOKIE)
    agent = await room.agents.session(token)
    await _run(request, room.agents.sign_out_sync, token)
    if agent is not None:
        await _run(request, room.console.record_sign_out, agent)
    gone = _cookie(request, SESSION_COOKIE, "", 0)
    return _redirect(request, "/support/login", cookies=[gone])


# -- finding attempts ---------------------------------------------------------------------------


@get("/", name="console_home")
async def home(request: Request[Any, Any, Any]) -> Redirect:
    return _redirect(request, "/support/attempts")


def _all_states(room: Room) -> list[str]:
    return sorted({s for spec in room.services.engine.flows.all_versions() for s in spec.states})


@get("/attempts", name="console_find")
async def find(request: Request[Any, Any, Any]) -> Response[Any]:
    room = _room(request)
    agent = _agent(request)
    query = request.query_params
    q = (query.get("q") or "").strip()[:320]
    flow = query.get("flow") or None
    state = query.get("state") or None
    face = Clockface("en", agent.time_zone, room.services.engine.clock.now())
    filters = {"q": q, "flow": flow or "", "state": state or ""}
    context: dict[str, Any] = {
        "nav": "find",
        "filters": filters,
        "flows": room.services.engine.flows.names(),
        "states": _all_states(room),
        "since_value": query.get("since") or "",
        "until_value": query.get("until") or "",
        "error": None,
        "items": None,
        "next_url": None,
        "search": None,
    }
    try:
        search = understand(q)
        if search.kind == "attempt":
            assert search.value is not None
            return _redirect(request, f"/support/attempts/{search.value}")
        since = face.parse_local(query.get("since"), "since")
        until = face.parse_local(query.get("until"), "until")
        searched = search.kind != "all" or any((flow, state, since, until))
        if not searched:
            return render(request, "find.html", **context)
        found = await _run(
            request,
            room.console.find_sync,
            agent,
            search,
            flow=flow,
            state=state,
            since=since,
            until=until,
            cursor=query.get("cursor") or None,
        )
    except InvalidInput as exc:
        context["error"] = exc.field
        return render(request, "find.html", status=400, **context)
    context["search"] = search
    context["items"] = found.items
    if found.next_cursor:
        params = {k: v for k, v in query.items() if k not in ("cursor",) and v}
        context["next_url"] = _page(request).url(
            "/support/attempts", **{**params, "cursor": found.next_cursor}
        )
    return render(request, "find.html", **context)


# -- the case queue ------------------------------------------------------------------------------


@get("/queue", name="console_queue")
async def queue(request: Request[Any, Any, Any]) -> Response[Any]:
    """The cases the flows' queues list (assisted recovery's, today), oldest first."""
    room = _room(request)
    rows = await _run(request, room.console.queue_sync, _agent(request))
    return render(request, "queue.html", nav="queue", rows=rows)


# -- one attempt ---------------------------------------------------------------------------------

# An SVG from Graphviz, made inline-able: no prolog, doctype or comments, no fixed size.
_SVG_PROLOG = re.compile(r"^.*?(?=<svg\b)", re.DOTALL)
_SVG_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_SVG_SIZE = re.compile(r'<svg\s+width="[^"]*"\s+height="[^"]*"')


def inline_svg(body: bytes, label_id: str) -> Markup:
    """Graphviz's SVG of our own diagram (no user text in it), ready to sit in a page."""
    text = _SVG_COMMENT.sub("", _SVG_PROLOG.sub("", body.decode("utf-8"), count=1))
    text = _SVG_SIZE.sub(
        f'<svg class="diagram" role="img" aria-labelledby="{label_id}" focusable="false"',
        text,
        count=1,
    )
    return Markup(text)


async def _diagram(room: Room, detail: Mapping[str, Any], path: Sequence[Any]) -> bytes | None:
    spec = room.services.engine.flows.get(detail["flow"], detail["flow_version"])
    key = (spec.name, spec.version, "svg", detail["state"], tuple(path))
    try:
        return await room.services.diagrams.get(
            key, functools.partial(diagrams.svg, spec, current=detail["state"], path=path)
        )
    except GraphvizMissing:
        return None


def _nav_of(room: Room, detail: dict[str, Any]) -> str:
    """The part of the console an attempt belongs to: a case of a flow whose cases the
    queue lists is reached from "Case queue", any other attempt from "Find"."""
    return "queue" if detail.get("flow") in room.console.queues() else "find"


async def _attempt_page(
    request: Request[Any, Any, Any], attempt_id: str, *, status: int = 200, **extra: Any
) -> Response[Any]:
    room = _room(request)
    agent = _agent(request)
    try:
        shown = await _run(request, room.console.attempt_sync, agent, attempt_id)
    except (NotFound, EngineError, RecoveryError):
        return render(request, "error.html", status=404, error="no_attempt", nav="find")
    svg = await _diagram(room, shown.detail, shown.path)
    notice = request.query_params.get("notice")
    return render(
        request,
        "attempt.html",
        status=status,
        nav=_nav_of(room, shown.detail),
        a=shown.detail,
        path=shown.path,
        path_states=[step[2] for step in shown.path],
        related=shown.related,
        resendable=shown.resend_possible,
        blocked=extra.pop("blocked", shown.resend_blocked),
        latest_email=shown.latest_email,
        diagram=inline_svg(svg, "diagram-title") if svg else None,
        notice=notice if notice in ("resent", "fired") else None,
        resend_error=extra.pop("resend_error", None),
        override_reason=extra.pop("override_reason", ""),
        **extra,
    )


@get("/attempts/{attempt_id:str}", name="console_attempt")
async def attempt(request: Request[Any, Any, Any], attempt_id: FromPath[str]) -> Response[Any]:
    return await _attempt_page(request, attempt_id)


@get("/attempts/{attempt_id:str}/diagram.svg", name="console_attempt_diagram")
async def attempt_diagram(
    request: Request[Any, Any, Any], attempt_id: FromPath[str]
) -> Response[Any]:
    """The diagram at full size, for a small screen."""
    room = _room(request)
    try:
        record, path = await _run(
            request, room.services.support.diagram_sync, _agent(request).label, attempt_id, "svg"
        )
    except (NotFound, EngineError, RecoveryError):
        return render(request, "error.html", status=404, error="no_attempt", nav="find")
    detail = {"flow": record.flow, "flow_version": record.flow_version, "state": record.state}
    body = await _diagram(room, detail, path)
    if body is None:
        return render(request, "error.html", status=501, error="no_graphviz", nav="find")
    return Response(content=body, media_type="image/svg+xml", headers=dict(HEADERS))


@get("/attempts/{attempt_id:str}/events/{event:str}", opt=WRITE, name="console_confirm")
async def confirm_event(
    request: Request[Any, Any, Any], attempt_id: FromPath[str], event: FromPath[str]
) -> Response[Any]:
    """Asks for a reason, and for the agent to confirm, before the event is fired."""
    room = _room(request)
    try:
        shown = await _run(request, room.console.attempt_sync, _agent(request), attempt_id)
    except (NotFound, EngineError, RecoveryError):
        return render(request, "error.html", status=404, error="no_attempt", nav="find")
    nav = _nav_of(room, shown.detail)
    if event not in shown.detail["support_events"]:
        return render(request, "error.html", status=409, error="event_not_allowed", nav=nav)
    return render(
        request,
        "confirm.html",
        nav=nav,
        a=shown.detail,
        event=event,
        ends=_ends(room, shown.detail, event),
        error=None,
        reason="",
    )


def _ends(room: Room, detail: dict[str, Any], event: str) -> bool:
    """Whether firing `event` ends the attempt for good (its button then says so in red)."""
    spec = room.services.engine.flows.get(detail["flow"], detail.get("flow_version"))
    return spec.ends(detail["state"], event)


@post("/attempts/{attempt_id:str}/events/{event:str}", opt=WRITE, name="console_fire")
async def fire_event(
    request: Request[Any, Any, Any], attempt_id: FromPath[str], event: FromPath[str]
) -> Response[Any]:
    room = _room(request)
    agent = _agent(request)
    fields = await _form(request, "reason", "confirm")
    reason = fields["reason"].strip()[:MAX_REASON_CHARS]
    if not reason or fields["confirm"] != "yes":
        shown = await _run(request, room.console.attempt_sync, agent, attempt_id)
        return render(
            request,
            "confirm.html",
            status=400,
            nav=_nav_of(room, shown.detail),
            a=shown.detail,
            event=event,
            ends=_ends(room, shown.detail, event),
            error="reason" if not reason else "confirm",
            reason=reason,
        )
    try:
        await _run(request, room.console.fire_event_sync, agent, attempt_id, event, reason)
    except (RecoveryError, EngineError) as exc:
        return await _attempt_page(request, attempt_id, status=409, fire_error=exc.code)
    return _redirect(request, f"/support/attempts/{attempt_id}", notice="fired")


@post("/attempts/{attempt_id:str}/resend", opt=WRITE, name="console_resend")
async def resend(request: Request[Any, Any, Any], attempt_id: FromPath[str]) -> Response[Any]:
    room = _room(request)
    fields = await _form(request, "override_reason", "expected_latest", "override")
    override = fields["override_reason"].strip()[:MAX_REASON_CHARS] or None
    if fields["override"] == "yes" and override is None:
        return await _attempt_page(request, attempt_id, status=400, resend_error="reason")
    try:
        record = await _run(
            request,
            room.console.resend_sync,
            _agent(request),
            attempt_id,
            override_reason=override,
            # The form's newest email as the page showed it: a second click finds a newer
            # one and is refused. A plain resend form without it ("") leaves the cooldown
            # to refuse; an override's "" means "no email seen".
            expected_latest=fields["expected_latest"]
            if override
            else fields["expected_latest"] or None,
        )
    except ResendRefused as exc:
        return await _attempt_page(
            request,
            attempt_id,
            status=429,
            headers={"Retry-After": str(exc.retry_after)},
            blocked=exc.blocked,
            resend_error=exc.blocked.rule,
            override_reason=override or "",
        )
    except (RecoveryError, EngineError) as exc:
        return await _attempt_page(request, attempt_id, status=409, resend_error=exc.code)
    return _redirect(request, f"/support/attempts/{record.id}", notice="resent")


# -- accounts ------------------------------------------------------------------------------------


@get("/accounts", name="console_accounts")
async def accounts(request: Request[Any, Any, Any]) -> Response[Any]:
    room = _room(request)
    email = (request.query_params.get("email") or "").strip()[:320]
    context: dict[str, Any] = {"nav": "accounts", "email": email, "error": None, "searched": False}
    if not email:
        return render(request, "accounts.html", facts=None, journeys=[], **context)
    try:
        facts, journeys = await _run(
            request, room.console.account_by_email_sync, _agent(request), email
        )
    except InvalidInput:
        context["error"] = "email"
        return render(request, "accounts.html", status=400, facts=None, journeys=[], **context)
    context["searched"] = True
    return render(request, "accounts.html", facts=facts, journeys=journeys, **context)


@get("/accounts/{account_id:str}", name="console_account")
async def account(request: Request[Any, Any, Any], account_id: FromPath[str]) -> Response[Any]:
    room = _room(request)
    try:
        facts, journeys = await _run(
            request, room.console.account_sync, _agent(request), account_id
        )
    except RecoveryError:
        return render(request, "error.html", status=404, error="no_account", nav="accounts")
    notice = request.query_params.get("notice")
    return render(
        request,
        "accounts.html",
        nav="accounts",
        email="",
        error=None,
        searched=True,
        facts=facts,
        journeys=journeys,
        notice=notice if notice in ("cleared", "revoked") else None,
    )


@post("/accounts/{account_id:str}/clear-slow-down", opt=WRITE, name="console_clear")
async def clear_slow_down(
    request: Request[Any, Any, Any], account_id: FromPath[str]
) -> Response[Any]:
    room = _room(request)
    try:
        await _run(request, room.console.clear_slow_down_sync, _agent(request), account_id)
    except RecoveryError:
        return render(request, "error.html", status=404, error="no_account", nav="accounts")
    return _redirect(request, f"/support/accounts/{account_id}", notice="cleared")


@post("/accounts/{account_id:str}/sessions/revoke", opt=WRITE, name="console_revoke_session")
async def revoke_session(
    request: Request[Any, Any, Any], account_id: FromPath[str]
) -> Response[Any]:
    room = _room(request)
    fields = await _form(request, "session")
    try:
        await _run(
            request,
            room.console.revoke_session_sync,
            _agent(request),
            account_id,
            fields["session"],
        )
    except RecoveryError:
        return render(request, "error.html", status=404, error="no_session", nav="accounts")
    return _redirect(request, f"/support/accounts/{account_id}", notice="revoked")


# -- stats ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    label: str
    count: int
    width: float
    y: int
    share: float | None = None
    median_seconds: float | None = None


def bars(rows: Sequence[tuple[str, int]], extra: Sequence[Mapping[str, Any]] = ()) -> list[Bar]:
    """Horizontal bars for an SVG chart: widths in proportion to the largest count."""
    top = max((n for _, n in rows), default=0) or 1
    out = []
    for i, (label, count) in enumerate(rows):
        more = extra[i] if i < len(extra) else {}
        out.append(
            Bar(
                label=label,
                count=count,
                width=round(CHART_WIDTH * count / top, 1),
                y=i * (CHART_BAR + CHART_GAP),
                share=more.get("conversion"),
                median_seconds=more.get("median_seconds"),
            )
        )
    return out


def chart_height(items: Sequence[Bar]) -> int:
    return max(1, len(items)) * (CHART_BAR + CHART_GAP)


@get("/stats", name="console_stats")
async def stats(request: Request[Any, Any, Any]) -> Response[Any]:
    room = _room(request)
    agent = _agent(request)
    now = room.services.engine.clock.now()
    face = Clockface("en", agent.time_zone, now)
    query = request.query_params
    period = query.get("period") or DEFAULT_PERIOD
    error = None
    try:
        since = face.parse_local(query.get("since"), "since")
        until = face.parse_local(query.get("until"), "until")
        if period not in PERIODS and period != "custom":
            raise InvalidInput("period", "unknown period")
        if period != "custom" or since is None:
            until = until if period == "custom" and until else now
            since = until - timedelta(hours=PERIODS.get(period, PERIODS[DEFAULT_PERIOD]))
        until = until or now
        found = await _run(request, room.console.stats_sync, agent, since, until)
    except (InvalidInput, RecoveryError) as exc:
        error = getattr(exc, "field", "since")
        since, until = now - timedelta(hours=PERIODS[DEFAULT_PERIOD]), now
        found, period = [], period if period in PERIODS else DEFAULT_PERIOD
    charts = []
    for item in found:
        funnel = bars([(s["step"], s["count"]) for s in item["funnel"]], item["funnel"])
        states = bars(sorted(item["states"].items(), key=lambda kv: (-kv[1], kv[0])))
        charts.append(
            {"flow": item["flow"], "total": item["total"], "funnel": funnel, "states": states}
        )
    return render(
        request,
        "stats.html",
        status=400 if error else 200,
        nav="stats",
        charts=charts,
        period=period,
        periods=list(PERIODS),
        since=since,
        until=until,
        since_value=face.local_input(since),
        until_value=face.local_input(until),
        error=error,
        chart_width=CHART_WIDTH,
        chart_bar=CHART_BAR,
        chart_height=chart_height,
    )


# -- the audit log and the keys ------------------------------------------------------------


@get("/audit", name="console_audit")
async def audit(request: Request[Any, Any, Any]) -> Response[Any]:
    room = _room(request)
    query = request.query_params
    filters = {
        "who": (query.get("who") or "").strip()[:100] or None,
        "action": (query.get("action") or "").strip()[:64] or None,
        "target": (query.get("attempt") or "").strip()[:64] or None,
    }
    error = None
    try:
        page = await _run(
            request,
            room.console.audit_sync,
            _agent(request),
            cursor=query.get("cursor") or None,
            **filters,
        )
        items, next_cursor = page.items, page.next_cursor
    except InvalidInput:
        error, items, next_cursor = "cursor", [], None
    next_url = None
    if next_cursor:
        params = {k: v for k, v in query.items() if k != "cursor" and v}
        next_url = _page(request).url("/support/audit", **{**params, "cursor": next_cursor})
    return render(
        request,
        "audit.html",
        status=400 if error else 200,
        nav="audit",
        items=items,
        next_url=next_url,
        filters={
            "who": filters["who"] or "",
            "action": filters["action"] or "",
            "attempt": query.get("attempt") or "",
        },
        everyone=await _run(request, room.console.who, write=False),
        actions=room.console.actions(),
        error=error,
    )


@get("/keys", name="console_keys")
async def keys(request: Request[Any, Any, Any]) -> Response[Any]:
    room = _room(request)
    found = await _run(request, room.console.keys_sync, _agent(request))
    notice = request.query_params.get("notice")
    return render(
        request,
        "keys.html",
        nav="keys",
        keys=found,
        notice=notice if notice == "revoked" else None,
        error=None,
    )


@post("/keys/revoke", opt=WRITE, name="console_revoke_key")
async def revoke_key(request: Request[Any, Any, Any]) -> Response[Any]:
    room = _room(request)
    fields = await _form(request, "name")
    try:
        await _run(request, room.console.revoke_key_sync, _agent(request), fields["name"])
    except RecoveryError:
        found = await _run(request, room.console.keys_sync, _agent(request))
        return render(
            request, "keys.html", status=404, nav="keys", keys=found, notice=None, error="no_key"
        )
    return _redirect(request, "/support/keys", notice="revoked")


# -- errors around the handlers -------------------------------------------------------------------


def console_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Not signed in: the sign-in page. Any other HTTP error (a role too low, a failed CSRF
    check, no such page, a rate limit): a console page that says which, nothing of the
    exception's text shown."""
    if isinstance(exc, NotSignedIn):
        return _redirect(request, "/support/login")
    if isinstance(exc, HTTPException):
        status = exc.status_code
        headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() == "retry-after"}
    else:
        status, headers = 500, {}
    error = {
        403: "forbidden" if isinstance(exc, ReadOnly) else "csrf",
        404: "not_found",
        413: "too_large",
        429: "rate_limited",
    }.get(status, "server" if status >= 500 else "http")
    return render(request, "error.html", status=status, headers=headers, error=error)


_HANDLERS: dict[int | type[Exception], Any] = {
    HTTPException: console_error,
    Exception: console_error,
    NotFoundException: console_error,
    **dict.fromkeys((400, 401, 403, 404, 405, 413, 429, 500), console_error),
}

public_router = Router(
    path=CONSOLE_PATH,
    route_handlers=[login_form, login_submit, code_form, code_submit, logout],
    exception_handlers=_HANDLERS,
    include_in_schema=False,
)

private_router = Router(
    path=CONSOLE_PATH,
    route_handlers=[
        home,
        find,
        queue,
        attempt,
        attempt_diagram,
        confirm_event,
        fire_event,
        resend,
        accounts,
        account,
        clear_slow_down,
        revoke_session,
        stats,
        audit,
        keys,
        revoke_key,
    ],
    guards=[require_agent],
    exception_handlers=_HANDLERS,
    include_in_schema=False,
)

route_handlers: list[Router] = [public_router, private_router]
