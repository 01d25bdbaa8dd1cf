"""The public JSON API: "Forgot password?", the link, the new password, sign-in, sessions.

Handlers stay thin: the body is parsed into a strict struct (a list or object
where a string belongs is a 400 before the handler runs), the recovery
service does the work, and the answer is shaped here. Errors are not caught:
`api.errors` maps them. Tokens travel in JSON bodies, never in these URLs.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Router, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter

from api.errors import SessionInvalid
from api.i18n import pick_locale
from api.services import Services
from api.web.errors import CONSUMES_TOKEN, documented
from api.web.link_flows import actions_for
from api.web.ratelimit import client_ip, parse_networks
from api.web.schemas import (
    Accepted,
    CodeBody,
    CodeOpened,
    LoginBody,
    PasswordBody,
    RecoveryRequest,
    SessionAnswer,
    SessionCreated,
    SessionNotice,
    StateAnswer,
    TokenBody,
    Verified,
)
from flows import password_recovery

Lang = Annotated[
    str | None,
    QueryParameter(name="lang", description="en or fr; otherwise Accept-Language decides"),
]


def request_locale(request: Request[Any, Any, Any], lang: str | None) -> str:
    """The request's language: `?lang=` if supported, else Accept-Language, else English."""
    return pick_locale(request.headers.get("accept-language"), lang)


def bearer(request: Request[Any, Any, Any]) -> str:
    """The bearer token of the Authorization header, or `SessionInvalid` (401)."""
    scheme, _, value = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise SessionInvalid()
    return value.strip()


@post(
    "/recovery",
    status_code=202,
    summary='"Forgot password?": ask for a recovery link',
    description=(
        "Always 202 for a well-formed address, whether or not it has an account, is "
        "throttled or undeliverable: the answer and the work done are identical. The "
        "language of the emails is fixed from ?lang= or Accept-Language, else it is the "
        "account's."
    ),
    responses=documented(400, 413, 415, 429),
)
async def request_recovery(
    request: Request[Any, Any, Any],
    data: JSONBody[RecoveryRequest],
    services: NamedDependency[Services],
    lang: Lang = None,
) -> Accepted:
    await password_recovery.request(
        services,
        data.email,
        # Neither ?lang= nor Accept-Language: the emails speak the account's language.
        locale=request_locale(request, lang)
        if lang or request.headers.get("accept-language")
        else None,
        client_ip=client_ip(request, parse_networks(services.settings.trusted_proxies)),
        user_agent=request.headers.get("user-agent"),
    )
    return Accepted()


@post(
    "/recovery/verify",
    status_code=200,
    summary="Check a link's token (records the open; never consumes it)",
    responses=documented(400, 410, 413, 415, 429),
)
async def verify_link(data: JSONBody[TokenBody], services: NamedDependency[Services]) -> Verified:
    # A JSON POST is a client app acting for the person, not a mail scanner's prefetch.
    actions = await actions_for(services, data.token)
    opened = await actions.open(services, data.token, method="POST", has_cookies=True)
    return Verified(
        attempt_id=str(opened.attempt.id),
        state=opened.attempt.state,
        expires_at=opened.expires_at,
    )


@post(
    "/recovery/code",
    status_code=200,
    summary="Type the code from the email instead of opening its link",
    description=(
        "A right code answers a fresh token for POST /api/recovery/password, bound to the "
        "attempt and dying with its link. A wrong code, a code past its limit of wrong "
        "tries, and an address without an account or without a code all get the same 400 "
        "(invalid_code), after the same work; a right code for an attempt that is over "
        "gets the 410 a dead link gets."
    ),
    responses=documented(400, 410, 413, 415, 429),
)
async def enter_code(data: JSONBody[CodeBody], services: NamedDependency[Services]) -> CodeOpened:
    entered = await password_recovery.enter_code(services, data.email, data.code)
    return CodeOpened(
        attempt_id=str(entered.attempt.id),
        state=entered.attempt.state,
        expires_at=entered.expires_at,
        token=entered.token,
    )


@post(
    "/recovery/password",
    status_code=200,
    summary="Set the new password (consumes the token, exactly once)",
    description="422 lists every policy violation in the request's language.",
    opt={CONSUMES_TOKEN: True},
    responses=documented(400, 409, 410, 413, 415, 422, 429),
)
async def set_password(
    request: Request[Any, Any, Any],
    data: JSONBody[PasswordBody],
    services: NamedDependency[Services],
    lang: Lang = None,
) -> StateAnswer:
    actions = await actions_for(services, data.token)
    attempt = await actions.set_password(
        services,
        data.token,
        data.password,
        data.password_confirm,
        locale=request_locale(request, lang),
    )
    return StateAnswer(state=attempt.state)


@post(
    "/recovery/cancel",
    status_code=200,
    summary='"This wasn\'t me": cancel the attempt and kill its link',
    responses=documented(400, 409, 410, 413, 415, 429),
)
async def cancel_attempt(
    data: JSONBody[TokenBody], services: NamedDependency[Services]
) -> StateAnswer:
    actions = await actions_for(services, data.token, cancel=True)
    attempt = await actions.cancel(services, data.token)
    return StateAnswer(state=attempt.state)


@post(
    "/login",
    status_code=200,
    summary="Sign in (moves a reset attempt to logged_in)",
    description="401 is the same for an unknown address and a wrong password.",
    responses=documented(400, 401, 413, 415, 429),
)
async def login(data: JSONBody[LoginBody], services: NamedDependency[Services]) -> SessionCreated:
    signed_in = await services.signin.login(data.email, data.password)
    return SessionCreated(
        session_token=signed_in.session_token,
        expires_at=signed_in.expires_at,
        account_id=str(signed_in.account_id),
    )


@post(
    "/logout",
    status_code=204,
    summary="Revoke the bearer session",
    security=[{"session": []}],
    responses=documented(401, 429),
)
async def logout(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> None:
    await services.signin.logout(bearer(request))


@get(
    "/session",
    summary="Who the bearer session belongs to (401 once revoked or expired), and its notices",
    description=(
        "`notices` lists what the account's owner must know, in the account's language: "
        "each open support-handled recovery asking to move the account to another address "
        "(its reference, state, when it was asked, when the change happens once approved), "
        "which the \"This wasn't me\" link of the email to the account's address cancels."
    ),
    security=[{"session": []}],
    responses=documented(401, 429),
)
async def session(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> SessionAnswer:
    info = await services.signin.session(bearer(request))
    # What the flows have to tell the account's owner (a support-handled recovery asking
    # to move the account to another address, say), from each flow's `session_notices`.
    notices = []
    for _spec, hook in services.engine.flows.hooked("session_notices"):
        notices += [SessionNotice(**notice) for notice in await hook(services, info.account_id)]
    return SessionAnswer(
        email_masked=info.email_masked,
        expires_at=info.expires_at,
        account_id=str(info.account_id),
        locale=info.locale,
        notices=notices,
    )


router = Router(
    path="/api",
    route_handlers=[
        request_recovery,
        verify_link,
        enter_code,
        set_password,
        cancel_attempt,
        login,
        logout,
        session,
    ],
    tags=["public"],
    # JSON clients send no CSRF cookie; these endpoints take no ambient credentials.
    opt={"exclude_from_csrf": True},
)

route_handlers: list[Any] = [router]
