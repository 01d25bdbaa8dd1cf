"""The HTML pages, driven through their forms like a browser would, on SQLite and PostgreSQL.

Each test builds the real application (`api.app.create_app`) on a fresh
database, with real Argon2 (the cheap test profile), the real CSRF middleware,
and the real worker writing `.eml` files that the test reads the link
from. Time moves through an injected clock, the application's one time seam.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from jinja2.ext import babel_extract
from litestar.testing import TestClient
from sqlalchemy import select

from api.accounts.passwords import Argon2Hasher
from api.i18n import translations
from api.mail.transports import FileTransport
from api.services import Services
from api.settings import Settings
from api.support.reference import support_reference
from api.web.app import create_app
from api.web.pages import STATIC_DIR, TEMPLATE_DIR
from engine.core import AttemptRecord, attempt_t
from engine.worker import Worker

BASE = "http://testserver.local"
EMAIL = "jane.doe@example.com"
NAME = "Jane Doe"
OLD_PASSWORD = "Old-horse-battery-9!"
NEW_PASSWORD = "Tr0ub4dor&3-zebra-quilt"


# -- a tiny HTML reader (the standard library's parser, no extra dependency) ------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The element's text, its descendants' included, whitespace collapsed."""
        parts = [*self.texts, *(child.text for child in self.children)]
        # ASCII whitespace only: a no-break space (French typography) is content.
        return re.sub(r"[ \t\n\r\f]+", " ", " ".join(parts)).strip()

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].texts.append(data)


class Doc:
    """A parsed page: find elements by id, tag or attribute."""

    def __init__(self, html: str) -> None:
        builder = _TreeBuilder()
        builder.feed(html)
        self.root = builder.root
        self.html = html

    def all(self, tag: str | None = None) -> list[Node]:
        return [n for n in self.root.walk() if tag is None or n.tag == tag]

    def by_id(self, element_id: str) -> Node:
        found = [n for n in self.root.walk() if n.attrs.get("id") == element_id]
        assert len(found) == 1, f"expected one element with id={element_id!r}, found {len(found)}"
        return found[0]

    def has_id(self, element_id: str) -> bool:
        return any(n.attrs.get("id") == element_id for n in self.root.walk())

    @property
    def lang(self) -> str:
        return self.all("html")[0].attrs["lang"]

    @property
    def h1(self) -> str:
        return self.all("h1")[0].text


def field_message(node: Node) -> str:
    """A field's error message without its visually hidden "Error:" prefix."""
    assert "Error:" in node.text
    return node.text.replace("Error:", "").strip()


def doc(response: httpx.Response) -> Doc:
    assert response.headers["content-type"].startswith("text/html")
    return Doc(response.text)


# -- the site under test ----------------------------------------------------------------


class ManualClock:
    """The application's clock, moved by the test (and by a millisecond per reading, so
    records made one after the other keep their order)."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def now(self) -> datetime:
        self.at += timedelta(milliseconds=1)
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


@dataclass
class Site:
    """The application, a browser-like client, and the mailbox the links arrive in."""

    client: TestClient[Any]
    services: Services
    settings: Settings
    mailbox: Path
    clock: ManualClock
    worker: Worker

    def csrf(self, path: str = "/recovery") -> str:
        """The CSRF token a GET of `path` put into its form (its cookie is now set)."""
        page = doc(self.client.get(path))
        return next(n.attrs["value"] for n in page.all("input") if n.attrs["name"] == "_csrf_token")

    def submit(
        self,
        path: str,
        data: dict[str, Any],
        *,
        form_page: str | None = None,
        follow_redirects: bool = True,
    ) -> httpx.Response:
        """POST a form the way a browser does: fetched first, then sent with its CSRF field."""
        token = self.csrf(form_page or path.split("?")[0])
        return self.client.post(
            path, data={**data, "_csrf_token": token}, follow_redirects=follow_redirects
        )

    def dispatch(self) -> None:
        """Run the mail worker once (requested attempts become emails)."""
        asyncio.run(self.worker.run_once())

    def emails(self) -> list[email.message.EmailMessage]:
        files = sorted(self.mailbox.glob("*.eml"))
        return [
            email.message_from_bytes(f.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for f in files
        ]

    def last_link(self, kind: str = "reset") -> str:
        """The path and query of the reset (or cancel) link in the newest email carrying one."""
        base = re.escape(self.settings.public_base_url)
        for message in reversed(self.emails()):
            body = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
            found = re.findall(rf"{base}(/recovery/{kind}\?token=[\w-]+)", body)
            if found:
                return str(found[0])
        raise AssertionError(f"no email carries a {kind} link")

    def emailed_link(self, address: str = EMAIL, kind: str = "reset") -> str:
        """Ask for a link on the page, let the worker send it, return the emailed link."""
        before = len(self.emails())
        response = self.submit("/recovery", {"email": address})
        assert response.status_code == 200
        self.dispatch()
        assert len(self.emails()) > before, "the worker sent no email (throttled?)"
        return self.last_link(kind)

    def attempts(self) -> list[AttemptRecord]:
        with self.services.engine.db.transaction(write=False) as conn:
            rows = conn.execute(select(attempt_t).order_by(attempt_t.c.created_at)).all()
        return [self.services.engine.get_sync(AttemptRecord.from_row(r).id) for r in rows]

    def only_attempt(self) -> AttemptRecord:
        attempts = self.attempts()
        assert len(attempts) == 1
        return attempts[0]


SiteFactory = Callable[..., Site]

# What a page shows does not depend on the database; tests of rendering alone run on
# SQLite only, to keep the suite fast. Anything that records or reads state runs on both.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.fixture
def make_site(db_url: str, tmp_path: Path) -> Iterator[SiteFactory]:
    """Build the site with settings overrides; every site is shut down after the test."""
    clients: list[TestClient[Any]] = []

    def make(base_url: str = BASE, **overrides: Any) -> Site:
        mailbox = tmp_path / f"mail{len(clients)}"
        settings = Settings(
            database_url=db_url,
            public_base_url=base_url,
            mail_url=f"file://{mailbox}",
            # Tests ask for several links in a row: no cooldown, a roomy hourly limit.
            **{"resend_cooldown_seconds": 0, "emails_per_hour": 50, **overrides},
        )
        clock = ManualClock()
        app = create_app(settings, hasher=Argon2Hasher.for_tests(), clock=clock)
        client = TestClient(app, base_url=base_url)
        client.__enter__()
        clients.append(client)
        services: Services = app.state.services
        services.accounts.create_sync(email=EMAIL, name=NAME, password=OLD_PASSWORD)
        worker = services.worker_with(FileTransport(mailbox))
        return Site(client, services, settings, mailbox, clock, worker)

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def site(make_site: SiteFactory) -> Site:
    return make_site()


def set_cookie(response: httpx.Response, name: str) -> str:
    """The Set-Cookie header of `response` for cookie `name`."""
    found = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    assert len(found) == 1, f"expected one Set-Cookie for {name}, got {found}"
    return found[0]


def token_cookies(response: httpx.Response) -> list[str]:
    """The Set-Cookie headers of `response` that touch the link-token cookie."""
    return [h for h in response.headers.get_list("set-cookie") if h.startswith("recovery_token=")]


def cookie_attributes(header: str) -> dict[str, str]:
    parts = [p.strip() for p in header.split(";")]
    return {p.split("=", 1)[0].lower(): (p.split("=", 1)[1] if "=" in p else "") for p in parts[1:]}


# -- language ---------------------------------------------------------------------------


@sqlite_only
def test_pages_speak_english_by_default_french_from_accept_language_and_lang_wins(
    site: Site,
) -> None:
    """`?lang=` beats Accept-Language, which beats the English default; the switch link
    leads to the other language."""
    english = doc(site.client.get("/login"))
    assert english.lang == "en"
    assert english.by_id("forgot-password").text == "Forgot password?"
    assert english.by_id("language-switch").attrs["href"] == "/login?lang=fr"

    french = doc(site.client.get("/login", headers={"Accept-Language": "fr-FR,fr;q=0.9"}))
    assert french.lang == "fr"
    assert french.by_id("forgot-password").text == "Mot de passe oublié\u00a0?"
    assert french.by_id("language-switch").attrs["href"] == "/login?lang=en"

    chosen = doc(site.client.get("/recovery?lang=en", headers={"Accept-Language": "fr"}))
    assert chosen.lang == "en"
    assert chosen.h1 == "Forgot your password?"
    # A chosen language sticks to the links of the page.
    switched = doc(site.client.get("/recovery?lang=fr"))
    assert switched.h1 == "Vous avez oublié votre mot de passe\u00a0?"
    assert any(a.attrs.get("href") == "/login?lang=fr" for a in switched.all("a"))


def test_every_page_text_has_a_french_translation() -> None:
    """Each message of the page templates is translated in the merged French catalog."""
    french = translations("fr")
    missing = []
    for template in sorted(TEMPLATE_DIR.glob("*.html")):
        with template.open("rb") as handle:
            options = {"extensions": "jinja2.ext.do", "trim_blocks": "1", "lstrip_blocks": "1"}
            for _line, function, message, _comments in babel_extract(
                handle, ["_", "gettext", "ngettext"], [], options
            ):
                if function == "ngettext":
                    singular, plural = message[0], message[1]
                    if french.ngettext(singular, plural, 2) == plural:
                        missing.append(plural)
                else:
                    text = message if isinstance(message, str) else message[0]
                    if french.gettext(text) == text:
                        missing.append(text)
    assert missing == []


@sqlite_only
def test_a_link_opens_in_the_language_the_person_asked_in(site: Site) -> None:
    """A request made on the French page sends the person to the French reset form,
    whatever their browser's Accept-Language says."""
    response = site.submit("/recovery?lang=fr", {"email": EMAIL}, form_page="/recovery?lang=fr")
    assert doc(response).h1 == "Consultez votre boîte de réception"
    site.dispatch()
    opened = site.client.get(site.last_link(), follow_redirects=False)
    assert opened.status_code == 303
    assert opened.headers["location"] == "/recovery/reset?lang=fr"
    form = doc(site.client.get(opened.headers["location"]))
    assert form.lang == "fr"
    assert form.h1 == "Choisir un nouveau mot de passe"


# -- the five steps ------------------------------------------------------------------------


def test_the_five_steps_through_the_forms(site: Site) -> None:
    """Login page → "Forgot password?" → email → link → new password → sign-in: every
    step through the HTML forms with their CSRF tokens, ending in `logged_in`."""
    login = doc(site.client.get("/login"))
    assert login.by_id("forgot-password").attrs["href"] == "/recovery"

    inbox = doc(site.submit("/recovery", {"email": EMAIL}))
    assert inbox.h1 == "Check your inbox"
    attempt = site.only_attempt()
    assert attempt.state == "requested"

    site.dispatch()
    assert site.only_attempt().state == "emailed"
    link = site.last_link()

    opened = site.client.get(link, follow_redirects=False)
    assert opened.status_code == 303
    assert opened.headers["location"] == "/recovery/reset"
    assert site.only_attempt().state == "link_opened"

    form = doc(site.client.get("/recovery/reset"))
    assert form.h1 == "Choose a new password"
    done = site.submit(
        "/recovery/reset", {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}
    )
    assert done.status_code == 200
    assert doc(done).by_id("sign-in").attrs["href"] == "/login"
    assert site.only_attempt().state == "password_set"

    signed_in = site.submit(
        "/login", {"email": EMAIL, "password": NEW_PASSWORD}, follow_redirects=False
    )
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/signed-in"
    assert doc(site.client.get("/signed-in")).h1 == "You are signed in"
    assert site.only_attempt().state == "logged_in"
    session = cookie_attributes(set_cookie(signed_in, "session"))
    assert "httponly" in session
    assert session["samesite"].lower() == "strict"
    assert "secure" not in session  # the public URL is http here


def test_the_old_password_no_longer_signs_in_after_the_reset(site: Site) -> None:
    """After the reset the old password gets the generic error, the new one signs in."""
    site.client.get(site.emailed_link())
    site.submit("/recovery/reset", {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD})
    refused = site.submit("/login", {"email": EMAIL, "password": OLD_PASSWORD})
    assert refused.status_code == 401
    assert "The email address or password is incorrect." in doc(refused).by_id("error-summary").text
    assert site.submit("/login", {"email": EMAIL, "password": NEW_PASSWORD}).status_code == 200


def test_forms_without_a_valid_csrf_token_are_refused_and_change_nothing(site: Site) -> None:
    """A POST without the CSRF field, or with a forged one, is a 403 page and records nothing."""
    site.client.get("/recovery")  # the CSRF cookie is set
    missing = site.client.post("/recovery", data={"email": EMAIL})
    forged = site.client.post("/recovery", data={"email": EMAIL, "_csrf_token": "0" * 128})
    for response in (missing, forged):
        assert response.status_code == 403
        assert doc(response).by_id("error").attrs["data-error"] == "csrf"
    assert site.attempts() == []


@sqlite_only
def test_csrf_cookie_is_httponly_and_secure_on_an_https_site(make_site: SiteFactory) -> None:
    """Behind an https public URL, the CSRF, link and session cookies are all Secure."""
    site = make_site(base_url="https://testserver.local")
    first = site.client.get("/recovery")
    csrf = cookie_attributes(set_cookie(first, "csrftoken"))
    assert "httponly" in csrf and "secure" in csrf
    link = site.emailed_link()
    assert link.startswith("/recovery/reset?token=")
    opened = site.client.get(link, follow_redirects=False)
    assert "secure" in cookie_attributes(set_cookie(opened, "recovery_token"))


# -- the token leaves the address bar --------------------------------------------------------


def test_the_link_token_moves_into_a_strict_httponly_cookie_and_out_of_the_url(
    site: Site,
) -> None:
    """Opening the link answers 303 to a token-free URL and keeps the token in an
    HttpOnly, SameSite=Strict cookie scoped to /recovery that lasts until the deadline."""
    link = site.emailed_link()
    token = parse_qs(urlsplit(link).query)["token"][0]
    opened = site.client.get(link, follow_redirects=False)
    assert opened.status_code == 303
    assert "token" not in opened.headers["location"]
    assert token not in opened.text
    header = set_cookie(opened, "recovery_token")
    assert header.split(";")[0] == f"recovery_token={token}"
    attributes = cookie_attributes(header)
    assert "httponly" in attributes
    assert attributes["samesite"].lower() == "strict"
    assert attributes["path"] == "/recovery"
    assert "secure" not in attributes
    deadline = site.only_attempt().deadline_at
    assert deadline is not None
    expected = (deadline - site.clock.now()).total_seconds()
    assert abs(int(attributes["max-age"]) - expected) <= 1
    # The form page itself never shows the token.
    form = site.client.get("/recovery/reset")
    assert form.status_code == 200
    assert token not in form.text


@sqlite_only
def test_token_pages_send_no_store_and_no_referrer(site: Site) -> None:
    """Every answer on the reset and cancel paths says Cache-Control: no-store and
    Referrer-Policy: no-referrer, redirects and errors included."""
    link = site.emailed_link()
    answers = [
        site.client.get(link, follow_redirects=False),
        site.client.get("/recovery/reset"),
        site.submit("/recovery/reset", {"password": "short", "password_confirm": "short"}),
        site.client.get(link.replace("/reset", "/cancel"), follow_redirects=False),
        site.client.get("/recovery/cancel"),
        site.submit("/recovery/cancel", {}),
        site.client.get(link),  # now dead
    ]
    for answer in answers:
        assert answer.headers["cache-control"] == "no-store", answer.url
        assert answer.headers["referrer-policy"] == "no-referrer", answer.url


def test_head_on_the_link_consumes_nothing_and_is_flagged(site: Site) -> None:
    """A HEAD on the link (a mail scanner) leaves it working and is recorded as a
    possibly automated open; the person's later GET and POST still succeed."""
    link = site.emailed_link()
    head = site.client.head(link, follow_redirects=False)
    assert head.status_code == 303
    assert head.content == b""
    attempt = site.only_attempt()
    opens = [e for e in site.services.engine.history_sync(attempt.id) if e.event == "open_link"]
    assert opens[-1].detail["method"] == "HEAD"
    assert opens[-1].detail["suspected_automated"] is True

    site.client.cookies.clear()  # the person's browser is not the scanner
    assert site.client.get(link, follow_redirects=False).status_code == 303
    done = site.submit(
        "/recovery/reset", {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}
    )
    assert done.status_code == 200
    assert site.only_attempt().state == "password_set"


@sqlite_only
def test_arriving_from_another_site_without_the_cookie_gets_one_more_step(site: Site) -> None:
    """A browser that withholds the Strict cookie after a cross-site click is sent on by
    a same-site navigation (meta refresh and a button), and only once."""
    site.client.cookies.clear()
    step = site.client.get("/recovery/reset", headers={"Sec-Fetch-Site": "cross-site"})
    assert step.status_code == 200
    page = doc(step)
    assert page.by_id("continue").attrs["href"] == "/recovery/reset?resume=1"
    refresh = [m for m in page.all("meta") if m.attrs.get("http-equiv") == "refresh"]
    assert refresh[0].attrs["content"] == "0; url=/recovery/reset?resume=1"

    again = site.client.get("/recovery/reset?resume=1", headers={"Sec-Fetch-Site": "cross-site"})
    assert again.status_code == 400
    assert doc(again).by_id("dead-link").attrs["data-reason"] == "missing"
    direct = site.client.get("/recovery/reset")
    assert doc(direct).by_id("dead-link").attrs["data-reason"] == "missing"


# -- the form: rules, violations, accessibility --------------------------------------------


@sqlite_only
def test_reset_form_states_the_rules_before_typing_and_labels_every_field(site: Site) -> None:
    """The form lists the policy's rules, labels both fields, asks for new-password
    autofill, and points the first field at the rules."""
    site.client.get(site.emailed_link())
    page = doc(site.client.get("/recovery/reset"))
    rules = [
        n.text
        for n in page.by_id("password-rules").walk()
        if "rule-text" in n.attrs.get("class", "")
    ]
    assert rules == site.services.policy.rules("en")
    # Before anything is typed no rule is marked met or broken.
    marks = [li.attrs["class"] for li in page.by_id("password-rules").walk() if li.tag == "li"]
    assert marks and all(m == "rule unknown" for m in marks), marks
    for field_id in ("password", "password_confirm"):
        field = page.by_id(field_id)
        assert field.attrs["type"] == "password"
        assert field.attrs["autocomplete"] == "new-password"
        assert "value" not in field.attrs
        assert [lb for lb in page.all("label") if lb.attrs.get("for") == field_id]
    assert "password-rules" in page.by_id("password").attrs["aria-describedby"].split()
    assert page.by_id("change-password").tag == "button"


def test_violations_are_one_message_per_field_and_marked_on_the_checklist(
    site: Site,
) -> None:
    """After a refused submit each field has one message (aria-describedby, aria-invalid),
    the summary one line per field, and the checklist marks every broken rule; a
    password that broke rules is not echoed; the link still works."""
    site.client.get(site.emailed_link())
    # Neither can occur in a hex CSRF token or the page's own text.
    typed, confirm = "zq-typed-x", "zq-confirm-y"
    refused = site.submit("/recovery/reset", {"password": typed, "password_confirm": confirm})
    assert refused.status_code == 422
    page = doc(refused)
    password_errors = field_message(page.by_id("password-error"))
    assert password_errors == "This password does not meet 2 of the rules listed below."
    assert "do not match" not in password_errors
    assert field_message(page.by_id("password_confirm-error")) == "The two passwords do not match."
    summary = [li.text for li in page.by_id("error-summary").walk() if li.tag == "li"]
    assert summary == [
        "This password does not meet 2 of the rules listed below.",
        "The two passwords do not match.",
    ]
    marks = {
        li.attrs["id"]: li.attrs["class"].split()[-1]
        for li in page.all("li")
        if li.attrs.get("id", "").startswith("rule-")
    }
    assert marks == {
        "rule-length": "fail",
        "rule-letter": "pass",
        "rule-digit": "fail",
        "rule-special": "pass",
        "rule-personal": "pass",
        "rule-common": "pass",
        "rule-history": "unknown",
        "rule-match": "fail",
    }
    assert page.by_id("rule-digit").text.endswith("(not met)")
    for field_id in ("password", "password_confirm"):
        field = page.by_id(field_id)
        assert field.attrs["aria-invalid"] == "true"
        assert f"{field_id}-error" in field.attrs["aria-describedby"].split()
        assert "value" not in field.attrs
    assert page.by_id("error-summary").attrs["role"] == "alert"
    assert typed not in refused.text
    assert confirm not in refused.text
    assert site.only_attempt().state == "link_opened"

    french = doc(
        site.submit(
            "/recovery/reset?lang=fr",
            {"password": typed, "password_confirm": typed},
            form_page="/recovery/reset?lang=fr",
        )
    )
    assert (
        "Ce mot de passe ne respecte pas 2 des règles ci-dessous."
        in french.by_id("password-error").text
    )
    single = doc(
        site.submit(
            "/recovery/reset", {"password": "Aa1!Aa1!Aa1!", "password_confirm": "Aa1!Aa1!Aa1!"}
        )
    )
    assert field_message(single.by_id("password-error")) == (
        "This password is too easy to guess. Add more words or less predictable characters."
    )
    ok = site.submit(
        "/recovery/reset", {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}
    )
    assert ok.status_code == 200


@sqlite_only
def test_a_very_long_password_is_told_as_the_length_rule(site: Site) -> None:
    """A 10,000-character password is answered with the "at most 128 characters"
    violation next to its field, not a generic form error."""
    site.client.get(site.emailed_link())
    long_password = "Aa1!" * 2500
    refused = site.submit(
        "/recovery/reset", {"password": long_password, "password_confirm": long_password}
    )
    assert refused.status_code == 422
    errors = field_message(doc(refused).by_id("password-error"))
    assert errors == "The password must be at most 128 characters long."
    assert long_password not in refused.text


@sqlite_only
def test_a_reset_post_missing_a_field_is_a_400_form_and_changes_nothing(site: Site) -> None:
    """Leaving out the confirmation (or sending a field twice) re-shows the form with a
    clear message; the attempt stays where it was."""
    site.client.get(site.emailed_link())
    token = site.csrf("/recovery/reset")
    response = site.client.post(
        "/recovery/reset", data={"password": NEW_PASSWORD, "_csrf_token": token}
    )
    assert response.status_code == 400
    assert "Fill in both fields, once each." in doc(response).by_id("error-summary").text
    assert site.only_attempt().state == "link_opened"


@sqlite_only
def test_every_input_of_every_form_has_a_label(site: Site) -> None:
    """Login, recovery and reset forms: each visible input has a <label for=...>."""
    site.client.get(site.emailed_link())
    for path in ("/login", "/recovery", "/recovery/reset"):
        page = doc(site.client.get(path))
        labelled = {lb.attrs.get("for") for lb in page.all("label")}
        inputs = [i for i in page.all("input") if i.attrs.get("type") != "hidden"]
        assert inputs, path
        for element in inputs:
            assert element.attrs["id"] in labelled, (path, element.attrs)
    login = doc(site.client.get("/login"))
    assert login.by_id("email").attrs["autocomplete"] == "email"
    assert login.by_id("password").attrs["autocomplete"] == "current-password"
    recovery = doc(site.client.get("/recovery"))
    assert recovery.by_id("email").attrs["type"] == "email"
    assert recovery.by_id("email").attrs["autocomplete"] == "email"


# -- dead links ------------------------------------------------------------------------------


DEAD_PAGES: dict[str, tuple[int, str]] = {
    "unknown": (400, "This link is not valid"),
    "superseded": (410, "A newer link was sent"),
    "cancelled": (410, "This link was cancelled"),
    "used": (410, "This link has already been used"),
    "expired": (410, "This link has expired"),
}


def test_a_dead_link_page_says_why_and_offers_a_new_link(site: Site) -> None:
    """An unknown, superseded, cancelled, used or expired link gets a page naming the
    reason, whose main action fits it: sign in for a used link (the password is already
    changed), a new link for the others; no token is put in a cookie."""
    links = {"unknown": "/recovery/reset?token=" + "A" * 43}
    links["superseded"] = site.emailed_link()
    links["cancelled"] = site.emailed_link()  # supersedes the first
    site.client.get(links["cancelled"].replace("/reset", "/cancel"))
    site.submit("/recovery/cancel", {})
    links["used"] = site.emailed_link()
    site.client.get(links["used"])
    site.submit("/recovery/reset", {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD})
    links["expired"] = site.emailed_link()
    site.clock.advance(minutes=site.settings.link_ttl_minutes, seconds=1)

    site.client.cookies.clear()
    for reason, (status, heading) in DEAD_PAGES.items():
        response = site.client.get(links[reason], follow_redirects=False)
        assert response.status_code == status, reason
        page = doc(response)
        assert page.by_id("dead-link").attrs["data-reason"] == reason
        assert page.h1 == heading
        main = next(a for a in page.all("a") if "button" in a.attrs.get("class", ""))
        expected = ("sign-in", "/login") if reason == "used" else ("new-link", "/recovery")
        assert (main.attrs["id"], main.attrs["href"]) == expected, reason
        assert "autofocus" in main.attrs
        assert page.by_id("new-link").attrs["href"] == "/recovery"
        assert token_cookies(response) == [], reason


def test_a_link_that_dies_while_the_form_is_open_is_told_on_submit(site: Site) -> None:
    """The link expires between opening the form and submitting it: the POST answers the
    expired page, forgets the cookie, and the password is unchanged."""
    site.client.get(site.emailed_link())
    site.clock.advance(minutes=site.settings.link_ttl_minutes, seconds=1)
    response = site.submit(
        "/recovery/reset", {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}
    )
    assert response.status_code == 410
    assert doc(response).by_id("dead-link").attrs["data-reason"] == "expired"
    assert set_cookie(response, "recovery_token").startswith('recovery_token="";')
    assert site.only_attempt().state == "expired"
    assert site.submit("/login", {"email": EMAIL, "password": OLD_PASSWORD}).status_code == 200


# -- "Forgot password?" input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        [EMAIL, "attacker@example.org"],
        f"{EMAIL},attacker@example.org",
        f"{EMAIL}\r\nBcc: attacker@example.org",
    ],
    ids=["repeated-field", "comma-list", "crlf"],
)
def test_more_than_one_address_is_a_400_page_and_nothing_is_sent(
    site: Site, value: str | list[str]
) -> None:
    """A repeated `email` field, a comma list or CR/LF is a 400 page with a clear
    message: no attempt is recorded and no email goes anywhere."""
    response = site.submit("/recovery", {"email": value})
    assert response.status_code == 400
    page = doc(response)
    assert "Enter only one email address" in page.by_id("email-error").text
    assert page.by_id("email").attrs["aria-invalid"] == "true"
    assert site.attempts() == []
    site.dispatch()
    assert site.emails() == []


def test_check_your_inbox_is_the_same_for_known_and_unknown_addresses(site: Site) -> None:
    """The answer for an address with an account and one without differ only by the
    attempt's own support reference and the address echoed as typed (the code form sends
    it on); inside the resend cooldown (nothing sent) the page says the same thing again."""
    known = site.submit("/recovery", {"email": EMAIL})
    unknown = site.submit("/recovery", {"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 200
    references = [support_reference(a.id) for a in site.attempts()]
    known_text = known.text.replace(references[0], "REF").replace(EMAIL, "ADDRESS")
    unknown_text = unknown.text.replace(references[1], "REF").replace(
        "nobody@example.com", "ADDRESS"
    )
    assert known_text == unknown_text
    assert set(known.headers.keys()) == set(unknown.headers.keys())
    assert doc(known).by_id("email-sent-to").text == EMAIL
    assert doc(unknown).by_id("email-sent-to").text == "nobody@example.com"


# -- the support reference -------------------------------------------------------------------


def test_end_of_step_pages_show_the_support_reference(site: Site) -> None:
    """ "Check your inbox", the success page and the cancelled page each show the
    attempt's short support reference."""
    inbox = doc(site.submit("/recovery", {"email": EMAIL}))
    first = site.only_attempt()
    assert inbox.by_id("support-reference").text == support_reference(first.id)
    site.dispatch()
    site.client.get(site.last_link())
    done = doc(
        site.submit("/recovery/reset", {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD})
    )
    assert done.by_id("support-reference").text == support_reference(first.id)

    cancel_link = site.emailed_link(kind="cancel")
    second = site.attempts()[-1]
    site.client.get(cancel_link)
    cancelled = doc(site.submit("/recovery/cancel", {}))
    assert cancelled.by_id("support-reference").text == support_reference(second.id)


# -- "this wasn't me" ------------------------------------------------------------------------


def test_cancel_link_only_asks_on_get_and_cancels_on_the_confirmed_post(site: Site) -> None:
    """GET on the cancel link (even twice, as a scanner would) changes nothing; the
    confirmation form's POST cancels and the reset link then says so."""
    reset_link = site.emailed_link()
    cancel_link = site.last_link("cancel")
    for _ in range(2):
        opened = site.client.get(cancel_link, follow_redirects=False)
        assert opened.status_code == 303
        assert opened.headers["location"] == "/recovery/cancel"
    confirm = doc(site.client.get("/recovery/cancel"))
    assert confirm.by_id("cancel-link").tag == "button"
    assert site.only_attempt().state == "emailed"

    cancelled = site.submit("/recovery/cancel", {})
    assert cancelled.status_code == 200
    assert doc(cancelled).h1 == "The link no longer works"
    assert site.only_attempt().state == "cancelled"
    site.client.cookies.clear()
    dead = doc(site.client.get(reset_link))
    assert dead.by_id("dead-link").attrs["data-reason"] == "cancelled"


@sqlite_only
def test_a_malformed_cancel_link_is_told_at_once(site: Site) -> None:
    """A cancel link whose token cannot be one of ours is the "not valid" page, no cookie."""
    response = site.client.get("/recovery/cancel?token=not%20a%20token", follow_redirects=False)
    assert response.status_code == 400
    assert doc(response).by_id("dead-link").attrs["data-reason"] == "unknown"
    assert token_cookies(response) == []


def test_the_this_wasnt_me_link_carries_a_cancel_only_token_that_opens_no_password_form(
    site: Site,
) -> None:
    """The email's "this wasn't me" link has its own token: it cannot open the reset
    link, verify or set a password; kept in a cookie of its own (sent only to the
    cancel page), it never makes the new-password form appear; it does cancel."""
    reset_link = site.emailed_link()
    cancel_link = site.last_link("cancel")
    reset_token = parse_qs(urlsplit(reset_link).query)["token"][0]
    cancel_token = parse_qs(urlsplit(cancel_link).query)["token"][0]
    assert cancel_token != reset_token
    opened = site.client.get(f"/recovery/reset?token={cancel_token}", follow_redirects=False)
    assert opened.status_code == 400 and token_cookies(opened) == []
    body = {"token": cancel_token, "password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}
    assert site.client.post("/api/recovery/verify", json={"token": cancel_token}).status_code == 400
    assert site.client.post("/api/recovery/password", json=body).status_code == 400
    assert site.only_attempt().state == "emailed"

    asked = site.client.get(cancel_link, follow_redirects=False)
    assert asked.status_code == 303 and token_cookies(asked) == []
    kept = cookie_attributes(set_cookie(asked, "recovery_cancel"))
    assert kept["path"] == "/recovery/cancel" and "httponly" in kept
    form = site.client.get("/recovery/reset", follow_redirects=False)
    assert not doc(form).has_id("password")  # no new-password form with the cancel cookie
    assert site.only_attempt().state == "emailed"

    done = site.submit("/recovery/cancel", {})
    assert done.status_code == 200
    assert site.only_attempt().state == "cancelled"
    dead = site.client.get(reset_link, follow_redirects=False)
    assert dead.status_code == 410


# -- sign-in -------------------------------------------------------------------------------


def test_login_failure_is_the_same_generic_page_for_unknown_and_known_addresses(
    site: Site,
) -> None:
    """A wrong password and an unknown address get the same status and message."""
    wrong = site.submit("/login", {"email": EMAIL, "password": "Not-the-password-1!"})
    unknown = site.submit("/login", {"email": "nobody@example.com", "password": "whatever"})
    assert wrong.status_code == unknown.status_code == 401
    assert doc(wrong).by_id("error-summary").text == doc(unknown).by_id("error-summary").text
    assert "Not-the-password-1!" not in wrong.text
    assert not [h for h in wrong.headers.get_list("set-cookie") if h.startswith("session=")]


@sqlite_only
def test_a_slowed_down_login_says_how_long_to_wait(make_site: SiteFactory) -> None:
    """Past the free failures, the login page answers 429 with Retry-After and the wait
    in words, in the person's language."""
    site = make_site(login_free_failures=1)
    site.submit("/login", {"email": EMAIL, "password": "wrong-password-1!"})
    slowed = site.submit("/login?lang=fr", {"email": EMAIL, "password": "x"}, form_page="/login")
    assert slowed.status_code == 429
    wait = int(slowed.headers["retry-after"])
    assert wait >= 1
    assert f"Réessayez dans {wait} seconde" in doc(slowed).by_id("error-summary").text


def test_a_strangers_failed_sign_ins_do_not_slow_down_a_browser_that_signed_in_here(
    site: Site,
) -> None:
    """Signing in on the page leaves a device cookie (HttpOnly, SameSite=Strict, sent only
    to /login); while a stranger's wrong passwords slow the address down for everyone
    else, this browser still signs in at once (OWASP's device cookies)."""
    first = site.submit(
        "/login", {"email": EMAIL, "password": OLD_PASSWORD}, follow_redirects=False
    )
    assert first.status_code == 303
    device = cookie_attributes(set_cookie(first, "login_device"))
    assert device["path"] == "/login" and device["samesite"].lower() == "strict"
    assert "httponly" in device and int(device["max-age"]) > 150 * 86400
    for _ in range(8):
        stranger = site.client.post(
            "/api/login", json={"email": EMAIL, "password": "Guessing-Wrong-1!"}
        )
        assert stranger.status_code in (401, 429)
    assert stranger.status_code == 429
    again = site.submit(
        "/login", {"email": EMAIL, "password": OLD_PASSWORD}, follow_redirects=False
    )
    assert again.status_code == 303
    # The browser keeps the cookie it has: no second one is handed out.
    assert not [h for h in again.headers.get_list("set-cookie") if h.startswith("login_device=")]
    cookies = dict(site.client.cookies)
    site.client.cookies.clear()
    assert site.submit("/login", {"email": EMAIL, "password": OLD_PASSWORD}).status_code == 429
    site.client.cookies.update(cookies)


@sqlite_only
def test_signing_out_revokes_the_session(site: Site) -> None:
    """The sign-out button revokes the session and forgets its cookie."""
    signed_in = site.submit(
        "/login", {"email": EMAIL, "password": OLD_PASSWORD}, follow_redirects=False
    )
    token = set_cookie(signed_in, "session").split(";")[0].split("=", 1)[1]
    out = site.submit("/logout", {}, form_page="/login", follow_redirects=False)
    assert out.status_code == 303
    assert out.headers["location"] == "/login"
    assert set_cookie(out, "session").startswith('session="";')
    session = site.client.get("/api/session", headers={"Authorization": f"Bearer {token}"})
    assert session.status_code == 401


# -- no other origin, no script, HTTP errors as pages ---------------------------------------


def _urls(page: Doc) -> list[str]:
    found = []
    for node in page.all():
        for attribute in ("href", "src", "action", "formaction", "srcset", "poster", "data"):
            if attribute in node.attrs:
                found.append(node.attrs[attribute])
        if node.tag == "meta" and node.attrs.get("http-equiv", "").lower() == "refresh":
            found.append(node.attrs["content"].split("url=", 1)[-1])
    return found


@sqlite_only
def test_pages_reference_no_other_origin_and_carry_no_script_or_inline_style(
    site: Site,
) -> None:
    """No page links, loads or posts to another host, and none has an inline script, a
    style element or a style attribute (the CSP allows our own files only): the one
    script is our own file, /static/pages.js, loaded deferred."""
    pages = [
        site.client.get("/login"),
        site.client.get("/recovery"),
        site.client.get("/recovery/reset"),  # no cookie yet: the "open your link" page
        site.client.get("/recovery/reset", headers={"Sec-Fetch-Site": "cross-site"}),
        site.submit("/recovery", {"email": [EMAIL, EMAIL]}),
        site.submit("/login", {"email": EMAIL, "password": "wrong"}),
    ]
    link = site.emailed_link()
    pages.append(site.client.get(link))
    pages.append(site.submit("/recovery/reset", {"password": "a", "password_confirm": "b"}))
    pages.append(
        site.submit("/recovery/reset", {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD})
    )
    pages.append(site.client.get(link))
    pages.append(site.submit("/login", {"email": EMAIL, "password": NEW_PASSWORD}))
    pages.append(site.client.get("/signed-in"))
    for response in pages:
        page = doc(response)
        for url in _urls(page):
            parts = urlsplit(url)
            assert not parts.scheme and not parts.netloc, (response.url, url)
            assert url.startswith(("/", "#", "?")), (response.url, url)
        scripts = page.all("script")
        assert [n.attrs.get("src") for n in scripts] == ["/static/pages.js"], response.url
        assert all(not n.text and "defer" in n.attrs for n in scripts), response.url
        assert not page.all("style"), response.url
        assert not [n for n in page.all() if "style" in n.attrs], response.url
        assert not [n for n in page.all() if any(a.startswith("on") for a in n.attrs)]


@sqlite_only
def test_the_stylesheet_is_served_and_keeps_pages_usable_on_a_phone(site: Site) -> None:
    """Our own CSS is served from /static; every page has the viewport meta, inputs are
    full width at 16px or more, and focus is visible."""
    css = site.client.get("/static/pages.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert css.text == (STATIC_DIR / "pages.css").read_text(encoding="utf-8")
    assert "url(" not in css.text and "@import" not in css.text
    assert re.search(r"input\[type=\"password\"\][^{]*\{[^}]*width: 100%", css.text)
    assert "font-size: max(1rem, 16px)" in css.text
    assert ":focus-visible" in css.text
    page = doc(site.client.get("/login"))
    viewport = [m for m in page.all("meta") if m.attrs.get("name") == "viewport"]
    assert viewport[0].attrs["content"] == "width=device-width, initial-scale=1"
    stylesheets = [n.attrs["href"] for n in page.all("link") if n.attrs.get("rel") == "stylesheet"]
    assert stylesheets == ["/static/pages.css"]
    assert page.by_id("main").tag == "main"


@sqlite_only
def test_a_too_large_form_is_a_413_page(make_site: SiteFactory) -> None:
    """A form body past the size cap is refused with an HTML page, nothing recorded."""
    site = make_site(max_body_bytes=1024)
    response = site.submit("/recovery", {"email": EMAIL, "padding": "x" * 4096})
    assert response.status_code == 413
    assert doc(response).by_id("error").attrs["data-error"] == "too_large"
    assert site.attempts() == []


@sqlite_only
def test_a_rate_limited_form_is_a_429_page_with_retry_after(make_site: SiteFactory) -> None:
    """Past the per-IP limit, the page answers 429 in HTML with Retry-After."""
    site = make_site(public_rate_limit_per_minute=2)
    statuses = [site.submit("/recovery", {"email": EMAIL}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = site.submit("/recovery", {"email": EMAIL})
    assert int(limited.headers["retry-after"]) >= 1
    assert doc(limited).by_id("error").attrs["data-error"] == "rate_limited"
