"""The pages of support-handled recovery ("I can't access this email"), for people.

- `/assisted-recovery`: the request form (the account's address, a new contact
  address, the name on the account, optional birth date and creation time, a
  statement), then the "enter the code" page, the same for every address;
- `/assisted-recovery/confirm`: the code sent to the contact address, typed back;
- `/assisted-recovery/answer?token=…`: support's question and the form answering it;
- `/assisted-recovery/cancel?token=…`: "this wasn't me", from a notice to the
  account's address.

They work as the recovery pages do (`api.web.pages`, whose helpers they use): server
rendered, English or French, CSRF-protected forms, no script. A link's token never
stays in the address bar: it moves into an HttpOnly SameSite=Strict cookie scoped to
its page, then a 303 to the token-free URL; a GET never changes anything (mail
scanners prefetch links), the form's POST does. The grant link is a recovery link:
the usual reset page serves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from litestar import Request, Router, get, post
from litestar.datastructures import Cookie
from litestar.exceptions import HTTPException
from litestar.params import FromQuery
from litestar.response import Redirect, Response, Template

from api.accounts.tokens import plausible_token
from api.errors import (
    ContactCodeInvalid,
    InvalidInput,
    LinkDead,
    LinkUsed,
    RecoveryError,
    UnknownToken,
)
from api.support.reference import support_reference
from api.web.pages import (
    Page,
    _client_ip,
    _fields,
    _https,
    _page,
    _redirect,
    _service,
    _settings,
    http_error_page,
    render,
)
from engine import EngineError
from flows import assisted_recovery

BASE = "/assisted-recovery"
CONFIRM = f"{BASE}/confirm"
ANSWER = f"{BASE}/answer"
CANCEL = f"{BASE}/cancel"
ANSWER_COOKIE = "assisted_answer"
CANCEL_COOKIE = "assisted_cancel"
# A link's cookie outlives the page it serves by this much at most (the case decides).
TOKEN_COOKIE_SECONDS = 24 * 60 * 60
REQUEST_FIELDS = ("email", "contact_email", "name", "birth_date", "account_created", "statement")


def _cookie(request: Request[Any, Any, Any], name: str, path: str, value: str, age: int) -> Cookie:
    return Cookie(
        key=name,
        value=value,
        path=path,
        max_age=age,
        httponly=True,
        samesite="strict",
        secure=_https(_settings(request)),
    )


def _dead(
    request: Request[Any, Any, Any], page: Page, exc: RecoveryError | EngineError, cookie: Cookie
) -> Template:
    """A link of the case that no longer does anything, saying why; its cookie forgotten."""
    if isinstance(exc, UnknownToken):
        reason = "unknown"
    elif isinstance(exc, LinkUsed):
        reason = "used"
    elif isinstance(exc, LinkDead):
        reason = exc.reason
    else:
        return render(page, "error.html", status=409, error="conflict")
    return render(
        page,
        "dead.html",
        status=400 if reason == "unknown" else 410,
        cookies=[cookie],
        reason=reason,
        reference=getattr(exc, "reference", None),
    )


# -- the request --------------------------------------------------------------------------


def _request_form(
    page: Page, *, status: int = 200, errors: Mapping[str, str] | None = None, values: Any = None
) -> Template:
    return render(
        page, "assisted_request.html", status=status, errors=dict(errors or {}), values=values or {}
    )


@get(BASE, name="page_assisted")
async def request_form(request: Request[Any, Any, Any]) -> Template:
    """The request form."""
    return _request_form(_page(request))


@post(BASE, name="page_assisted_submit")
async def request_submit(request: Request[Any, Any, Any]) -> Template:
    """Record the case; the same "enter the code" page for every address."""
    page = _page(request)
    fields = await _fields(request, REQUEST_FIELDS)
    if isinstance(fields, InvalidInput):
        return _request_form(page, status=400, errors={fields.field: "invalid"})
    service = _service(request)
    case, problems = assisted_recovery.check_request(
        **fields, today=assisted_recovery.today(service)
    )
    if case is None:
        shown = {k: v[:4000] for k, v in fields.items()}
        errors = {problem.field: "invalid" for problem in problems}
        return _request_form(page, status=400, errors=errors, values=shown)
    attempt = await assisted_recovery.request(
        service,
        case,
        locale=page.locale,
        client_ip=_client_ip(request),
        user_agent=request.headers.get("user-agent"),
    )
    return render(
        page,
        "assisted_code.html",
        error=None,
        values={"contact_email": case.contact_email},
        reference=support_reference(attempt.id),
    )


# -- the code -------------------------------------------------------------------------------


@get(CONFIRM, name="page_assisted_confirm")
async def confirm_form(request: Request[Any, Any, Any]) -> Template:
    """The code form, for a person coming back to it."""
    return render(_page(request), "assisted_code.html", error=None, values={}, reference=None)


@post(CONFIRM, name="page_assisted_confirm_submit")
async def confirm_submit(request: Request[Any, Any, Any]) -> Template:
    """The code, typed back: the case goes to support, or the form again with the error."""
    page = _page(request)
    fields = await _fields(request, ("contact_email", "code"))
    if isinstance(fields, InvalidInput):
        return render(
            page, "assisted_code.html", status=400, error="invalid", values={}, reference=None
        )
    shown = {"contact_email": fields["contact_email"][:320]}
    try:
        attempt = await assisted_recovery.confirm(
            _service(request), fields["contact_email"], fields["code"]
        )
    except InvalidInput:
        return render(
            page,
            "assisted_code.html",
            status=400,
            error="contact_email",
            values=shown,
            reference=None,
        )
    except ContactCodeInvalid:
        return render(
            page, "assisted_code.html", status=400, error="code", values=shown, reference=None
        )
    return render(page, "assisted_confirmed.html", reference=support_reference(attempt.id))


# -- links from the case's emails: "this wasn't me", and the answer form ---------------------


def _take_token(request: Request[Any, Any, Any], path: str, name: str, token: str) -> Response[Any]:
    """Keep a link's token in its page's cookie and 303 to the token-free URL."""
    page = _page(request)
    if not plausible_token(token):
        gone = _cookie(request, name, path, "", 0)
        return _dead(request, page, UnknownToken(), gone)
    cookie = _cookie(request, name, path, token, TOKEN_COOKIE_SECONDS)
    return _redirect(page.url(path), cookies=[cookie])


def _no_link(page: Page) -> Template:
    return render(page, "dead.html", status=400, reason="missing", reference=None)


@get(CANCEL, name="page_assisted_cancel")
async def cancel_page(
    request: Request[Any, Any, Any], token: FromQuery[str | None] = None
) -> Response[Any]:
    """With `?token=`: into the cookie, 303. Without: the confirmation form (a GET never
    cancels: mail scanners open links)."""
    if token is not None:
        return _take_token(request, CANCEL, CANCEL_COOKIE, token)
    page = _page(request)
    if not request.cookies.get(CANCEL_COOKIE):
        return _no_link(page)
    return render(page, "assisted_cancel.html")


@post(CANCEL, name="page_assisted_cancel_submit")
async def cancel_submit(request: Request[Any, Any, Any]) -> Template:
    """Cancel the case at once."""
    page = _page(request)
    token = request.cookies.get(CANCEL_COOKIE)
    if not token:
        return _no_link(page)
    gone = _cookie(request, CANCEL_COOKIE, CANCEL, "", 0)
    try:
        attempt = await assisted_recovery.cancel_case(_service(request), token)
    except (RecoveryError, EngineError) as exc:
        return _dead(request, page, exc, gone)
    return render(
        page, "assisted_cancelled.html", cookies=[gone], reference=support_reference(attempt.id)
    )


@get(ANSWER, name="page_assisted_answer")
async def answer_page(
    request: Request[Any, Any, Any], token: FromQuery[str | None] = None
) -> Response[Any]:
    """With `?token=`: into the cookie, 303. Without: support's question and the form."""
    if token is not None:
        return _take_token(request, ANSWER, ANSWER_COOKIE, token)
    page = _page(request)
    cookie = request.cookies.get(ANSWER_COOKIE)
    if not cookie:
        return _no_link(page)
    try:
        attempt, asked = await assisted_recovery.question(_service(request), cookie)
    except (RecoveryError, EngineError) as exc:
        return _dead(request, page, exc, _cookie(request, ANSWER_COOKIE, ANSWER, "", 0))
    return render(
        page,
        "assisted_answer.html",
        question=asked,
        error=None,
        values={},
        reference=support_reference(attempt.id),
    )


@post(ANSWER, name="page_assisted_answer_submit")
async def answer_submit(request: Request[Any, Any, Any]) -> Template:
    """The answer joins the case (once); the form again if it is empty or too long."""
    page = _page(request)
    token = request.cookies.get(ANSWER_COOKIE)
    if not token:
        return _no_link(page)
    gone = _cookie(request, ANSWER_COOKIE, ANSWER, "", 0)
    service = _service(request)
    fields = await _fields(request, ("answer",))
    try:
        if isinstance(fields, InvalidInput):
            raise fields
        attempt = await assisted_recovery.answer(service, token, fields["answer"])
    except InvalidInput:
        try:
            attempt, asked = await assisted_recovery.question(service, token)
        except (RecoveryError, EngineError) as exc:
            return _dead(request, page, exc, gone)
        shown = {"answer": fields["answer"][:4000]} if isinstance(fields, dict) else {}
        return render(
            page,
            "assisted_answer.html",
            status=400,
            question=asked,
            error="answer",
            values=shown,
            reference=support_reference(attempt.id),
        )
    except (RecoveryError, EngineError) as exc:
        return _dead(request, page, exc, gone)
    return render(
        page, "assisted_answered.html", cookies=[gone], reference=support_reference(attempt.id)
    )


_EXCEPTION_HANDLERS: dict[int | type[Exception], Any] = {
    HTTPException: http_error_page,
    Exception: http_error_page,
    **dict.fromkeys((400, 403, 404, 405, 413, 429, 500), http_error_page),
}

router = Router(
    path="/",
    route_handlers=[
        request_form,
        request_submit,
        confirm_form,
        confirm_submit,
        cancel_page,
        cancel_submit,
        answer_page,
        answer_submit,
    ],
    exception_handlers=_EXCEPTION_HANDLERS,
    include_in_schema=False,
)

route_handlers: list[Any] = [router]

__all__ = ["ANSWER_COOKIE", "CANCEL_COOKIE", "Redirect", "route_handlers"]
