"""The server-rendered HTML pages: sign-in, "Forgot password?", the reset form, "this wasn't me".

The pages drive the same flow and sign-in as the JSON API, render with Jinja
(templates in `api/web/templates/`, our own CSS and one small script in
`api/web/static/`, no third-party asset) in English or French, speak for the
brand (`api.brand.Brand`: its name, logo and support contact), and post their
forms under Litestar's double-submit CSRF cookie. Every page works without the
script; with it, the forms send the browser's time zone (the emails' times are
given in it), the new-password form checks the rules a browser can check as the
person types, shows or hides the password, and suggests a passphrase made in
the browser (`crypto.getRandomValues` over the word list of the page's
language in `static/words/`): the server never sends a password, and its
verdict on submit stays the truth.

A sign-in answers with a redirect to `/signed-in` (post, redirect, get): a
reload never submits the password again.

The link's token never stays in the address bar: `GET /recovery/reset?token=…`
validates it, keeps it in an HttpOnly SameSite=Strict cookie scoped to
`/recovery`, and redirects to the token-free `/recovery/reset` (as Django does),
so it cannot leak through the Referer header, the history or a screenshot. The
code the email also carries (flow version 2), typed on "check your inbox" or on
`/recovery/code` (any browser, no cookie of ours needed), ends the same way: the
token a right code is exchanged for goes into the same cookie, then the same
redirect to the same form. The
"this wasn't me" link carries a cancel-only token of its own, kept the same way
in a cookie of its own scoped to `/recovery/cancel` (it never reaches the
password form), and cancels only on the POST of its confirmation form: mail
scanners prefetch links with GET and HEAD.

Pages are the one place where domain errors render as HTML forms rather than
JSON: every handler hands a caught `RecoveryError` (or engine conflict) to
`error_page`, which picks the page, the status and what to show.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from babel.dates import format_timedelta
from jinja2 import Environment, FileSystemLoader, StrictUndefined, pass_context
from jinja2.runtime import Context
from litestar import Request, Router, get, post, route
from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.enums import HttpMethod
from litestar.exceptions import HTTPException, NotFoundException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromQuery
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Response, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from api.accounts import links
from api.accounts.policy import PersonalData, Violation, personal_fragments
from api.accounts.tokens import plausible_token
from api.brand import LOGO_PATH, Brand
from api.errors import (
    InvalidCode,
    InvalidInput,
    LinkDead,
    LinkUsed,
    LoginFailed,
    LoginSlowedDown,
    PolicyFailed,
    RecoveryError,
    UnknownToken,
)
from api.i18n import SUPPORTED, pick_locale, translations
from api.mail.messages import zone_named
from api.services import Services
from api.settings import Settings
from api.support.reference import support_reference
from api.web.link_flows import actions_for
from api.web.ratelimit import client_ip, parse_networks
from engine import ConflictError, EngineError
from flows import password_recovery

__all__ = [
    "CANCEL_COOKIE",
    "CSRF_COOKIE",
    "DEVICE_COOKIE",
    "SESSION_COOKIE",
    "TOKEN_COOKIE",
    "csrf_config",
    "error_page",
    "route_handlers",
    "template_config",
]

TEMPLATE_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"

TOKEN_COOKIE = "recovery_token"
TOKEN_COOKIE_PATH = "/recovery"
# The "this wasn't me" link's cancel-only token, kept apart: sent only to the cancel
# page, so it can never reach (or open) the new-password form.
CANCEL_COOKIE = "recovery_cancel"
CANCEL_COOKIE_PATH = "/recovery/cancel"
SESSION_COOKIE = "session"
# The browser's device cookie (OWASP): set by a successful sign-in here, sent only to
# the sign-in page, it keeps others' failed sign-ins from slowing this browser down.
DEVICE_COOKIE = "login_device"
DEVICE_COOKIE_PATH = "/login"
CSRF_COOKIE = "csrftoken"

# Paths the CSRF middleware leaves alone: JSON clients carry no cookies of ours
# (bearer tokens instead), and operations endpoints take no form.
CSRF_EXEMPT = (r"^/api(/|$)", r"^/schema(/|$)", r"^/health$", r"^/ready$", r"^/metrics$")

# Every page: nothing cached (forms carry a CSRF token, token pages a secret
# context), and no Referer sent from here on (a token page's URL never leaves).
PAGE_HEADERS: Mapping[str, str] = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}

# Why a link no longer works, as the dead-link page tells it.
DEAD_REASONS = ("expired", "used", "superseded", "cancelled", "revoked", "unknown", "missing")
# Marks the navigation the "one more step" page starts (see `_missing_link`).
RESUME_PARAM = "resume"
# Where a sign-in lands (a GET, so a reload never re-submits the password).
SIGNED_IN_PATH = "/signed-in"
# The passphrase the new-password form suggests: this many random words and a digit.
PASSPHRASE_WORDS = 5
WORDS_DIR = STATIC_DIR / "words"
LOGO_MAX_AGE_SECONDS = 3600


# -- configuration handed to Litestar(...) by api.app -------------------------------


@pass_context
def _gettext(context: Context, message: str) -> str:
    """`_()` in templates: the message in the page's language (`locale` in the context)."""
    return translations(context.get("locale", "en")).gettext(message)


@pass_context
def _ngettext(context: Context, singular: str, plural: str, n: int) -> str:
    """`ngettext()` in templates, in the page's language (French plural rules included)."""
    return translations(context.get("locale", "en")).ngettext(singular, plural, n)


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """Jinja over `api/templates`, autoescaped, with gettext bound to each page's locale.

    The translation callables read `locale` from the render context rather than
    being installed per request: one shared environment serves concurrent
    requests in different languages without a race.
    """
    env = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=StrictUndefined,
        extensions=["jinja2.ext.i18n", "jinja2.ext.do"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_callables(  # type: ignore[attr-defined]
        gettext=_gettext, ngettext=_ngettext, newstyle=True
    )
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(env))


def csrf_config(settings: Settings) -> CSRFConfig:
    """Double-submit CSRF cookie for the forms; the JSON API and operations are exempt.

    The HMAC secret is `settings.csrf_secret` when the settings carry one
    (several processes must share it); otherwise a random one per process, so
    a form posted to another process than the one that rendered it fails
    cleanly (403 page) rather than being accepted.
    """
    secret = getattr(settings, "csrf_secret", None)
    if hasattr(secret, "get_secret_value"):
        secret = secret.get_secret_value()
    return CSRFConfig(
        secret=str(secret) if secret else secrets.token_hex(32),
        cookie_name=CSRF_COOKIE,
        cookie_path="/",
        cookie_secure=_https(settings),
        cookie_httponly=True,  # read from the form field, never by a script
        cookie_samesite="lax",
        exclude=list(CSRF_EXEMPT),
    )


# -- per-request helpers ---------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """What every page needs to know about its request: language and links."""

    locale: str
    # The language the browser asks for; links carry `?lang=` only when the page differs.
    browser_locale: str
    path: str
    brand: Brand

    def url(self, path: str, **query: str) -> str:
        """A link to one of our pages that keeps the page's language."""
        if self.locale != self.browser_locale:
            query = {"lang": self.locale, **query}
        return f"{path}?{urlencode(query)}" if query else path

    @property
    def other_locale(self) -> str:
        return next(code for code in SUPPORTED if code != self.locale)

    @property
    def switch_url(self) -> str:
        """This page in the other language (the switch link)."""
        return f"{self.path}?{urlencode({'lang': self.other_locale})}"


def _page(request: Request[Any, Any, Any], locale: str | None = None) -> Page:
    """`?lang=` wins, then `Accept-Language`; `locale` overrides both (the attempt's language)."""
    accept = request.headers.get("accept-language")
    browser = pick_locale(accept)
    chosen = locale or pick_locale(accept, request.query_params.get("lang"))
    # The scope's path, not `request.url`: building that parses the Host header, and an
    # error page for a malformed one must not fail on it a second time.
    return Page(
        locale=chosen,
        browser_locale=browser,
        path=str(request.scope.get("path", "/")),
        brand=_service(request).mail.sender.brand,
    )


def _settings(request: Request[Any, Any, Any]) -> Settings:
    settings: Settings = request.app.state.services.settings
    return settings


def _service(request: Request[Any, Any, Any]) -> Services:
    service: Services = request.app.state.services
    return service


def _https(settings: Settings) -> bool:
    return urlsplit(settings.public_base_url).scheme == "https"


def _client_ip(request: Request[Any, Any, Any]) -> str:
    """Who sent the request, trusted proxies applied (the same rule as the rate limits)."""
    return client_ip(request, parse_networks(_settings(request).trusted_proxies))


def render(
    page: Page,
    template: str,
    *,
    status: int = 200,
    cookies: Sequence[Cookie] = (),
    headers: Mapping[str, str] | None = None,
    **context: Any,
) -> Template:
    """A page in `page.locale`, with the page headers every page sends."""
    return Template(
        template_name=template,
        context={"page": page, "locale": page.locale, "brand": page.brand, **context},
        status_code=status,
        headers={**PAGE_HEADERS, **(headers or {})},
        cookies=list(cookies),
        media_type="text/html",
    )


def _redirect(location: str, *, cookies: Sequence[Cookie] = ()) -> Redirect:
    return Redirect(location, status_code=303, headers=dict(PAGE_HEADERS), cookies=list(cookies))


def _token_cookie(settings: Settings, token: str, max_age: int, *, cancel: bool = False) -> Cookie:
    return Cookie(
        key=CANCEL_COOKIE if cancel else TOKEN_COOKIE,
        value=token,
        path=CANCEL_COOKIE_PATH if cancel else TOKEN_COOKIE_PATH,
        max_age=max(max_age, 0),
        httponly=True,
        samesite="strict",
        secure=_https(settings),
    )


def _clear_token_cookie(settings: Settings, *, cancel: bool = False) -> Cookie:
    return _token_cookie(settings, "", 0, cancel=cancel)


async def _fields(
    request: Request[Any, Any, Any], names: Sequence[str]
) -> dict[str, str] | InvalidInput:
    """Each named form field as exactly one string, or the first field that is not.

    A repeated field (`email=a&email=b`) is refused here, before anything else
    sees it: it must never become a message to a second address. Lengths are
    the domain's to judge (a too-long password is a policy violation shown
    next to its field); the app's body cap bounds them all.
    """
    form = await request.form()
    values: dict[str, str] = {}
    for name in names:
        found = form.getall(name) if name in form else []
        if len(found) != 1 or not isinstance(found[0], str):
            return InvalidInput(name, "repeated" if len(found) > 1 else "missing")
        values[name] = found[0]
    return values


# -- the one place where domain errors become HTML ---------------------------------------


def error_page(
    request: Request[Any, Any, Any],
    page: Page,
    exc: RecoveryError | EngineError,
    *,
    form: str,
    values: Mapping[str, str] | None = None,
    password: str | None = None,
    personal: PersonalData | None = None,
) -> Template:
    """The page to show when a service call refused: the form again with its errors,
    or the dead-link page saying why the link no longer works.

    `form` names the page the request came from (`login`, `recovery`, `reset`,
    `cancel`); `values` are what the person typed that is safe to show again
    (never a password). `password` is the new password typed on the reset form:
    shown again only when it broke no rule and only its confirmation was wrong,
    so the person retypes the confirmation alone. `personal` is the reset link's
    account data, which the form's passphrase suggestion steers clear of.
    """
    shown = dict(values or {})
    if isinstance(exc, PolicyFailed):
        only_confirmation = all(v.field == "password_confirm" for v in exc.violations)
        return _reset_form(
            request,
            page,
            status=422,
            violations=exc.violations,
            kept_password=password if only_confirmation else None,
            personal=personal,
        )
    if isinstance(exc, LoginSlowedDown):
        return render(
            page,
            "login.html",
            status=429,
            headers={"Retry-After": str(exc.retry_after)},
            error="slowed_down",
            retry_after=exc.retry_after,
            values=shown,
            errors={},
        )
    if isinstance(exc, LoginFailed):
        return render(
            page, "login.html", status=401, error="invalid_credentials", values=shown, errors={}
        )
    if isinstance(exc, InvalidInput):
        if form == "reset":
            # A field missing or repeated: the form again, nothing typed shown back.
            return _reset_form(
                request, page, status=400, form_error="invalid_form", personal=personal
            )
        if form == "login":
            return render(
                page,
                "login.html",
                status=400,
                error=None,
                values=shown,
                errors={
                    exc.field: "email_invalid"
                    if exc.field == "email" and str(exc) == "repeated"
                    else f"{exc.field}_missing"
                },
            )
        if form == "recovery":
            typed = shown.get("email", "")
            several = typed.count("@") > 1 or any(c in typed for c in ",;\r\n")
            kind = {"repeated": "repeated", "missing": "missing"}.get(str(exc), "invalid")
            if several:
                kind = "repeated"  # a list, not one address: say "only one"
            return render(page, "recovery.html", status=400, error=kind, values=shown)
        if form == "code":
            return _code_form(request, page, status=400, error=f"invalid_{exc.field}", values=shown)
        return render(page, "error.html", status=400, error="invalid_form")
    if isinstance(exc, InvalidCode):
        return _code_form(request, page, status=400, error="code_refused", values=shown)
    if isinstance(exc, (LinkDead, UnknownToken)):
        if isinstance(exc, UnknownToken):
            reason = "unknown"
        elif isinstance(exc, LinkUsed):
            reason = "used"
        else:
            reason = exc.reason if exc.reason in DEAD_REASONS else "revoked"
        # A dead token from the cookie is forgotten; one from a URL leaves the cookie be.
        from_cookie = "token" not in request.query_params
        forget = _clear_token_cookie(_settings(request), cancel=form == "cancel")
        return render(
            page,
            "dead.html",
            status=400 if reason == "unknown" else 410,
            cookies=[forget] if from_cookie else [],
            reason=reason,
            # Shown when the domain tells which attempt the link belonged to.
            reference=getattr(exc, "reference", None),
        )
    if isinstance(exc, ConflictError):
        return render(page, "error.html", status=409, error="conflict")
    return render(page, "error.html", status=400, error="refused")


def _field_messages(violations: Sequence[Violation], locale: str) -> dict[str, str | None]:
    """One message per field: a lone violation's own words, else how many rules broke
    (the checklist marks which)."""
    messages: dict[str, str | None] = {"password": None, "password_confirm": None}
    for field in messages:
        broken = [v for v in violations if v.field == field]
        if len(broken) == 1:
            messages[field] = broken[0].message(locale)
        elif broken:
            messages[field] = translations(locale).ngettext(
                "This password does not meet %(num)d of the rules listed below.",
                "This password does not meet %(num)d of the rules listed below.",
                len(broken),
            ) % {"num": len(broken)}
    return messages


def _statuses(rules: Sequence[Any], violations: Sequence[Violation] | None) -> dict[str, str]:
    """Each rule's mark after a refused submit: broken, met, or not judged (the history is
    checked only once every other rule has passed; a too-long password only for length)."""
    if violations is None:
        return {}
    codes = {v.code for v in violations}
    judged_all = not codes - {"reused_password"}
    statuses = {}
    for rule in rules:
        if codes & set(rule.codes):
            statuses[rule.key] = "fail"
        elif rule.live or ("too_long" not in codes and (rule.key != "history" or judged_all)):
            statuses[rule.key] = "pass"
        else:
            statuses[rule.key] = "unknown"
    return statuses


@functools.cache
def word_list(locale: str) -> tuple[str, ...]:
    """The passphrase words of a language, as `static/words/<locale>.txt` serves them."""
    lines = (WORDS_DIR / f"{locale}.txt").read_text(encoding="utf-8").splitlines()
    return tuple(w.strip() for w in lines if w.strip() and not w.startswith("#"))


def avoided_words(locale: str, personal: PersonalData) -> list[int]:
    """Positions in the word list of the words holding the account's personal data, which
    the suggestion leaves out so that it passes the personal-data rule (its words are
    joined by spaces, which no personal fragment holds, so a word alone decides)."""
    fragments = [f for f in personal_fragments(personal) if " " not in f]
    return [n for n, word in enumerate(word_list(locale)) if any(f in word for f in fragments)]


async def _personal_data(request: Request[Any, Any, Any]) -> PersonalData | None:
    """The personal data of the account whose link the reset cookie carries, if live."""
    token = request.cookies.get(TOKEN_COOKIE)
    service = _service(request)
    try:
        link = await service.engine.db.run(links.find, service.engine.db, token, write=False)
    except RecoveryError:
        return None
    account = await service.accounts.by_id(link.account_id)
    if account is None:
        return None
    return PersonalData(account.name, account.email, account.birth_date)


def _reset_form(
    request: Request[Any, Any, Any],
    page: Page,
    *,
    status: int = 200,
    violations: Sequence[Violation] | None = None,
    form_error: str | None = None,
    kept_password: str | None = None,
    personal: PersonalData | None = None,
) -> Template:
    """The new-password form: the rules as one checklist, marked after a refused submit."""
    policy = _service(request).policy
    checklist = policy.checklist(page.locale)
    return render(
        page,
        "reset.html",
        status=status,
        rules=[rule for rule in checklist if rule.codes],
        note=next((rule.text for rule in checklist if not rule.codes), None),
        statuses=_statuses(checklist, violations),
        messages=_field_messages(violations or (), page.locale),
        form_error=form_error,
        kept_password=kept_password,
        min_length=policy.min_length,
        max_length=policy.max_length,
        avoid_words=avoided_words(page.locale, personal) if personal else [],
        passphrase_words=PASSPHRASE_WORDS,
    )


# -- sign-in -----------------------------------------------------------------------------


@get("/login", name="page_login")
async def login_form(request: Request[Any, Any, Any]) -> Template:
    """The sign-in form, with the "Forgot password?" link."""
    return render(_page(request), "login.html", error=None, values={}, errors={})


@post("/login", name="page_login_submit")
async def login_submit(request: Request[Any, Any, Any]) -> Response[Any]:
    """Sign in; on success a session cookie and a redirect to the signed-in page, else the
    form again: what is missing, or the generic error."""
    page = _page(request)
    settings = _settings(request)
    fields = await _fields(request, ("email", "password"))
    if isinstance(fields, InvalidInput):
        return error_page(request, page, fields, form="login")
    email = fields["email"].strip()
    missing = {
        field: f"{field}_missing"
        for field, value in (("email", email), ("password", fields["password"]))
        if not value
    }
    if missing:
        # Nothing to check yet: say what is missing, not that something is incorrect.
        return render(
            page, "login.html", status=400, error=None, values={"email": email}, errors=missing
        )
    service = _service(request)
    try:
        signed = await service.signin.login(
            email,
            fields["password"],
            device=request.cookies.get(DEVICE_COOKIE),
            remember_device=True,
        )
    except (RecoveryError, EngineError) as exc:
        return error_page(request, page, exc, form="login", values={"email": email})
    cookies = [
        Cookie(
            key=SESSION_COOKIE,
            value=signed.session_token,
            path="/",
            max_age=_seconds_until(signed.expires_at, service),
            httponly=True,
            samesite="strict",
            secure=_https(settings),
        )
    ]
    if signed.device_token is not None:
        cookies.append(
            Cookie(
                key=DEVICE_COOKIE,
                value=signed.device_token,
                path=DEVICE_COOKIE_PATH,
                max_age=_seconds_until(signed.device_expires_at, service),
                httponly=True,
                samesite="strict",
                secure=_https(settings),
            )
        )
    return _redirect(page.url(SIGNED_IN_PATH), cookies=cookies)


@get(SIGNED_IN_PATH, name="page_signed_in")
async def signed_in_page(request: Request[Any, Any, Any]) -> Response[Any]:
    """Who is signed in (their own address, unmasked: it is theirs), and the way on; no
    live session: back to the sign-in page."""
    page = _page(request)
    service = _service(request)
    try:
        info = await service.signin.session(request.cookies.get(SESSION_COOKIE))
    except RecoveryError:
        return _redirect(page.url("/login"))
    account = await service.accounts.by_id(info.account_id)
    if account is None:
        return _redirect(page.url("/login"))
    return render(
        page,
        "signed_in.html",
        email=account.email,
        expires_at=info.expires_at,
        brand_url=_settings(request).brand_url,
    )


@post("/logout", name="page_logout")
async def logout_submit(request: Request[Any, Any, Any]) -> Redirect:
    """Sign out: revoke the session (if it is still live) and forget its cookie."""
    page = _page(request)
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        # Already revoked or expired: signing out is done either way.
        with contextlib.suppress(RecoveryError):
            await _service(request).signin.logout(token)
    gone = Cookie(key=SESSION_COOKIE, value="", path="/", max_age=0, httponly=True)
    return _redirect(page.url("/login"), cookies=[gone])


def _seconds_until(moment: datetime | None, service: Services) -> int:
    if moment is None:
        return 0
    return max(0, int((moment - service.engine.clock.now()).total_seconds()))


# -- "Forgot password?" ------------------------------------------------------------------


@get("/recovery", name="page_recovery")
async def recovery_form(request: Request[Any, Any, Any]) -> Template:
    """The email form."""
    return render(_page(request), "recovery.html", error=None, values={})


def _duration(minutes: int, locale: str) -> str:
    """ "1 hour", "90 minutes", "2 days": in whole days or hours when it is some, in words."""
    unit = "day" if minutes % 1440 == 0 else "hour" if minutes % 60 == 0 else "minute"
    # A threshold this high keeps babel from rounding 90 minutes up to "2 hours".
    return format_timedelta(
        timedelta(minutes=minutes), granularity=unit, threshold=1000, locale=locale
    )


async def _time_zone(request: Request[Any, Any, Any]) -> str | None:
    """The browser's IANA time zone the form's hidden `tz` field carries, if it names one."""
    form = await request.form()
    found = form.getall("tz") if "tz" in form else []
    value = found[0] if len(found) == 1 and isinstance(found[0], str) else None
    return value if zone_named(value) else None


@post("/recovery", name="page_recovery_submit")
async def recovery_submit(request: Request[Any, Any, Any]) -> Template:
    """Record the request; the same "check your inbox" page for every address."""
    page = _page(request)
    settings = _settings(request)
    fields = await _fields(request, ("email",))
    if isinstance(fields, InvalidInput):
        return error_page(request, page, fields, form="recovery")
    typed = fields["email"].strip()
    if not typed:
        return render(page, "recovery.html", status=400, error="missing", values={})
    try:
        attempt = await password_recovery.request(
            _service(request),
            fields["email"],
            locale=page.locale,
            client_ip=_client_ip(request),
            user_agent=request.headers.get("user-agent"),
            time_zone=await _time_zone(request),
        )
    except (RecoveryError, EngineError) as exc:
        # Only the shape of the address can be refused here: show it again to fix it.
        shown = {"email": fields["email"][:320]}
        return error_page(request, page, exc, form="recovery", values=shown)
    return render(
        page,
        "inbox.html",
        reference=support_reference(attempt.id),
        # What was typed, as typed (bounded): it says nothing of whether an account has it.
        email=typed[:320],
        link_duration=_duration(settings.link_ttl_minutes, page.locale),
        cooldown_seconds=settings.resend_cooldown_seconds,
        code_digits=settings.code_digits,
    )


# -- the code from the email, typed instead of opening the link ----------------------------


def _code_form(
    request: Request[Any, Any, Any],
    page: Page,
    *,
    status: int = 200,
    error: str | None = None,
    values: Mapping[str, str] | None = None,
) -> Template:
    """The page that takes the address and the code (from any browser: no cookie needed)."""
    settings = _settings(request)
    return render(
        page,
        "code.html",
        status=status,
        error=error,
        values=dict(values or {}),
        code_digits=settings.code_digits,
        max_wrong=settings.code_max_wrong_per_attempt,
    )


@get("/recovery/code", name="page_code")
async def code_form(request: Request[Any, Any, Any]) -> Template:
    """The address and the code, for a browser other than the one that asked."""
    return _code_form(request, _page(request))


@post("/recovery/code", name="page_code_submit")
async def code_submit(request: Request[Any, Any, Any]) -> Response[Any]:
    """A right code: its token into the link's cookie, then the token-free new-password
    form, exactly as the link gets there; otherwise the code form again, saying so."""
    page = _page(request)
    settings = _settings(request)
    fields = await _fields(request, ("email", "code"))
    if isinstance(fields, InvalidInput):
        return error_page(request, page, fields, form="code")
    service = _service(request)
    shown = {"email": fields["email"].strip()[:320]}
    try:
        entered = await password_recovery.enter_code(service, fields["email"], fields["code"])
    except (RecoveryError, EngineError) as exc:
        return error_page(request, page, exc, form="code", values=shown)
    cookie = _token_cookie(settings, entered.token, _seconds_until(entered.expires_at, service))
    return _redirect(page.url("/recovery/reset"), cookies=[cookie])


# -- the emailed link and the new password -----------------------------------------------


def _missing_link(request: Request[Any, Any, Any], page: Page, action: str) -> Template:
    """No token cookie: either the browser withheld it, or there is no link at all.

    A SameSite=Strict cookie is not sent on a redirect that a click in another
    site (a webmail) started, so the request right after our 303 arrives
    without it, marked `Sec-Fetch-Site: cross-site`. A navigation started by
    our own page does carry it: offer one, automatic (meta refresh) and as a
    button. `resume` marks that navigation, so a browser that still sends no
    cookie gets the "open the link from your email" page, not a loop.
    """
    cross_site = request.headers.get("sec-fetch-site") == "cross-site"
    if cross_site and RESUME_PARAM not in request.query_params:
        return render(page, "continue.html", continue_url=page.url(action, **{RESUME_PARAM: "1"}))
    return render(page, "dead.html", status=400, reason="missing", reference=None)


@route(
    "/recovery/reset",
    http_method=[HttpMethod.GET, HttpMethod.HEAD],
    name="page_reset",
)
async def reset_page(
    request: Request[Any, Any, Any], token: FromQuery[str | None] = None
) -> Response[Any]:
    """With `?token=`: check the link, move the token into a cookie, 303 to the bare URL.
    Without: the new-password form (the token comes from the cookie)."""
    settings = _settings(request)
    service = _service(request)
    if token is not None:
        try:
            actions = await actions_for(service, token)
            opened = await actions.open(
                service, token, method=request.method, has_cookies=bool(request.cookies)
            )
        except (RecoveryError, EngineError) as exc:
            return error_page(request, _page(request), exc, form="reset")
        # The language chosen when the link was requested, unless the URL says otherwise.
        explicit = request.query_params.get("lang")
        page = _page(request, None if explicit else opened.attempt.data.get("locale"))
        cookie = _token_cookie(settings, token, _seconds_until(opened.expires_at, service))
        return _redirect(page.url("/recovery/reset"), cookies=[cookie])
    page = _page(request)
    if not request.cookies.get(TOKEN_COOKIE):
        return _missing_link(request, page, "/recovery/reset")
    return _reset_form(request, page, personal=await _personal_data(request))


@post("/recovery/reset", name="page_reset_submit")
async def reset_submit(request: Request[Any, Any, Any]) -> Template:
    """Set the new password once; every violation next to its field, or the success page."""
    page = _page(request)
    settings = _settings(request)
    token = request.cookies.get(TOKEN_COOKIE)
    if not token:
        return _missing_link(request, page, "/recovery/reset")
    personal = await _personal_data(request)
    fields = await _fields(request, ("password", "password_confirm"))
    if isinstance(fields, InvalidInput):
        return error_page(request, page, fields, form="reset", personal=personal)
    try:
        actions = await actions_for(_service(request), token)
        attempt = await actions.set_password(
            _service(request),
            token,
            fields["password"],
            fields["password_confirm"],
            locale=page.locale,
        )
    except (RecoveryError, EngineError) as exc:
        return error_page(
            request, page, exc, form="reset", password=fields["password"], personal=personal
        )
    return render(
        page,
        "done.html",
        cookies=[_clear_token_cookie(settings)],
        reference=support_reference(attempt.id),
    )


# -- "this wasn't me" --------------------------------------------------------------------


@get("/recovery/cancel", name="page_cancel")
async def cancel_page(
    request: Request[Any, Any, Any], token: FromQuery[str | None] = None
) -> Response[Any]:
    """With `?token=`: keep it in the cancel cookie and 303 to the bare URL. Without: the
    confirmation form. A GET never cancels (mail scanners prefetch links)."""
    settings = _settings(request)
    page = _page(request)
    if token is not None:
        if not plausible_token(token):
            return error_page(request, page, UnknownToken(), form="cancel")
        # Not looked up here (a lookup would be recorded as an open): the POST decides.
        cookie = _token_cookie(settings, token, settings.link_ttl_minutes * 60, cancel=True)
        return _redirect(page.url("/recovery/cancel"), cookies=[cookie])
    if not request.cookies.get(CANCEL_COOKIE):
        return _missing_link(request, page, "/recovery/cancel")
    return render(page, "cancel.html")


@post("/recovery/cancel", name="page_cancel_submit")
async def cancel_submit(request: Request[Any, Any, Any]) -> Template:
    """Cancel the attempt the link belongs to; its link stops working."""
    page = _page(request)
    settings = _settings(request)
    token = request.cookies.get(CANCEL_COOKIE)
    if not token:
        return _missing_link(request, page, "/recovery/cancel")
    try:
        actions = await actions_for(_service(request), token, cancel=True)
        attempt = await actions.cancel(_service(request), token)
    except (RecoveryError, EngineError) as exc:
        return error_page(request, page, exc, form="cancel")
    return render(
        page,
        "cancelled.html",
        cookies=[_clear_token_cookie(settings, cancel=True), _clear_token_cookie(settings)],
        reference=support_reference(attempt.id),
    )


# -- the brand's logo ----------------------------------------------------------------------


@get(LOGO_PATH, name="brand_logo")
async def brand_logo(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The configured logo (RECOVERY_BRAND_LOGO), served by the service itself."""
    brand = _service(request).mail.sender.brand
    if brand.logo_file is None:
        raise NotFoundException()
    return Response(
        content=_logo_bytes(brand.logo_file),
        media_type=brand.logo_type,
        headers={
            "Cache-Control": f"public, max-age={LOGO_MAX_AGE_SECONDS}",
            "X-Content-Type-Options": "nosniff",
        },
    )


@functools.cache
def _logo_bytes(path: Path) -> bytes:
    return path.read_bytes()


# -- HTTP errors raised around the handlers (CSRF, body size, rate limit) -----------------


def http_error_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """An error on a page route that no handler turned into a page (a failed CSRF
    check, a body too large, a rate limit, a crash) as a page in the person's
    language rather than JSON. Nothing of the exception's text is shown."""
    if isinstance(exc, HTTPException):
        status = exc.status_code
        headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() == "retry-after"}
    else:
        status, headers = 500, {}
    error = {403: "csrf", 413: "too_large", 429: "rate_limited", 500: "server"}.get(status, "http")
    return render(_page(request), "error.html", status=status, headers=headers, error=error)


# Status codes first: Litestar prefers a status-code handler (perhaps the app's
# JSON one) over a class handler, so the codes pages meet are named too.
_PAGE_EXCEPTION_HANDLERS: dict[int | type[Exception], Any] = {
    HTTPException: http_error_page,
    Exception: http_error_page,
    **dict.fromkeys((400, 403, 404, 405, 413, 429, 500), http_error_page),
}

pages_router = Router(
    path="/",
    route_handlers=[
        login_form,
        login_submit,
        signed_in_page,
        logout_submit,
        brand_logo,
        recovery_form,
        recovery_submit,
        code_form,
        code_submit,
        reset_page,
        reset_submit,
        cancel_page,
        cancel_submit,
    ],
    exception_handlers=_PAGE_EXCEPTION_HANDLERS,
    include_in_schema=False,
)


async def plain_file_name(
    connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
) -> None:
    """A static file name with a NUL or another control character names no file (and the
    file system would raise on it): a 404, before the file system is asked."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in str(connection.scope.get("path", ""))):
        raise NotFoundException()


static_router = create_static_files_router(
    path="/static",
    directories=[STATIC_DIR],
    name="static",
    include_in_schema=False,
    guards=[plain_file_name],
)

route_handlers: list[Router] = [pages_router, static_router]
