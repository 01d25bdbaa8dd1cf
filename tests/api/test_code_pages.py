# ruff: noqa: F811  (`site` and `make_site` are test_pages.py's fixtures, imported to be used)
"""The code from the email on the HTML pages, through their forms, on SQLite and PostgreSQL.

"Check your inbox" carries a code field; `/recovery/code` takes the address and
the code from any browser. A right code ends exactly as the link does: the
token in an HttpOnly SameSite=Strict cookie, a 303 to the token-free form. The
site is test_pages.py's (the real app, the real CSRF middleware, the real
worker writing .eml files).
"""

from __future__ import annotations

import re

from tests.api.test_pages import (  # noqa: F401
    EMAIL,
    NEW_PASSWORD,
    Site,
    cookie_attributes,
    doc,
    make_site,
    set_cookie,
    site,
    sqlite_only,
)

CODE_IN_MAIL = re.compile(r"^(\d{6,12})\s*$", re.MULTILINE)


def emailed_code(site: Site, address: str = EMAIL, lang: str = "") -> tuple[str, object]:
    """Ask on the page, let the worker send, and return the code and the inbox page."""
    inbox = site.submit(f"/recovery{lang}", {"email": address}, form_page="/recovery")
    assert inbox.status_code == 200
    site.dispatch()
    body = site.emails()[-1].get_body(("plain",))
    assert body is not None
    return CODE_IN_MAIL.findall(body.get_content())[0], doc(inbox)


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10 ** len(code):0{len(code)}d}"


def test_check_your_inbox_has_a_code_field_for_phones_and_keyboards(site: Site) -> None:
    _, inbox = emailed_code(site)
    field = inbox.by_id("code")
    assert field.attrs["inputmode"] == "numeric"
    assert field.attrs["autocomplete"] == "one-time-code"
    assert field.attrs["type"] == "text"
    assert inbox.by_id("code-hint").text.startswith("Or type here the 6-digit code")
    assert field.attrs["aria-describedby"] == "code-hint"
    [label] = [lb for lb in inbox.all("label") if lb.attrs.get("for") == "code"]
    assert label.text == "Code from the email"
    [form] = [f for f in inbox.all("form") if f.attrs.get("action") == "/recovery/code"]
    hidden = {
        i.attrs["name"]: i.attrs["value"]
        for i in form.walk()
        if i.tag == "input" and i.attrs.get("type") == "hidden"
    }
    assert hidden["email"] == EMAIL and hidden["_csrf_token"]


def test_a_right_code_moves_its_token_into_the_strict_cookie_and_opens_the_same_form(
    site: Site,
) -> None:
    """The inbox page's form: 303 to the token-free /recovery/reset, the token only in an
    HttpOnly SameSite=Strict cookie; the form sets the password; the link never opened."""
    code, _ = emailed_code(site)
    answer = site.submit(
        "/recovery/code",
        {"email": EMAIL, "code": code},
        form_page="/recovery/code",
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/recovery/reset"
    header = set_cookie(answer, "recovery_token")
    token = header.split(";")[0].split("=", 1)[1]
    assert token and token not in answer.headers["location"]
    attributes = cookie_attributes(header)
    assert "httponly" in attributes
    assert attributes["samesite"].lower() == "strict"
    assert attributes["path"] == "/recovery"
    form = site.client.get("/recovery/reset")
    assert form.status_code == 200
    assert doc(form).h1 == "Choose a new password"
    assert token not in form.text and code not in form.text
    done = site.submit(
        "/recovery/reset",
        {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD},
        form_page="/recovery/reset",
    )
    assert done.status_code == 200
    attempt = site.only_attempt()
    assert attempt.state == "password_set" and attempt.data["route"] == "code"
    assert "open_link" not in [e.event for e in site.services.engine.history_sync(attempt.id)]


def test_a_wrong_code_shows_the_form_again_with_one_message_for_every_address(
    site: Site,
) -> None:
    code, _ = emailed_code(site)
    pages = {}
    for address in (EMAIL, "nobody@example.com"):
        answer = site.submit("/recovery/code", {"email": address, "code": wrong(code)})
        assert answer.status_code == 400
        page = doc(answer)
        assert page.by_id("error-summary").attrs["role"] == "alert"
        assert page.by_id("code").attrs["aria-invalid"] == "true"
        assert page.by_id("email").attrs["value"] == address
        pages[address] = page.by_id("code-error").text
    assert pages[EMAIL] == pages["nobody@example.com"]
    assert pages[EMAIL].startswith("This code does not open a recovery for this address.")
    assert "After 5 wrong codes" in pages[EMAIL]


@sqlite_only
def test_a_malformed_code_or_address_is_told_next_to_its_field(site: Site) -> None:
    short = doc(site.submit("/recovery/code", {"email": EMAIL, "code": "12"}))
    assert short.by_id("code-error").text == "Enter the 6 digits of the code from the email."
    bad = doc(site.submit("/recovery/code", {"email": "not-an-address", "code": "123456"}))
    assert bad.by_id("email-error").text == "Enter one email address, like name@example.com."
    assert bad.by_id("email").attrs["aria-invalid"] == "true"


def test_a_right_code_for_a_superseded_email_gets_the_dead_link_page(site: Site) -> None:
    code, _ = emailed_code(site)
    site.clock.advance(minutes=2)
    emailed_code(site)
    answer = site.submit("/recovery/code", {"email": EMAIL, "code": code})
    assert answer.status_code == 410
    assert doc(answer).by_id("dead-link").attrs["data-reason"] == "superseded"


@sqlite_only
def test_the_code_page_works_from_a_browser_with_no_cookie_of_ours(site: Site) -> None:
    """A second browser: nothing but the code page's own CSRF cookie, the address typed."""
    code, _ = emailed_code(site)
    site.client.cookies.clear()
    page = doc(site.client.get("/recovery/code"))
    assert page.h1 == "Type the code from the email"
    labelled = {lb.attrs.get("for") for lb in page.all("label")}
    assert {"email", "code"} <= labelled
    assert page.by_id("code").attrs["inputmode"] == "numeric"
    assert page.by_id("code").attrs["autocomplete"] == "one-time-code"
    answer = site.submit("/recovery/code", {"email": EMAIL, "code": code}, follow_redirects=False)
    assert answer.status_code == 303
    assert site.client.get("/recovery/reset").status_code == 200


@sqlite_only
def test_the_code_pages_speak_french(site: Site) -> None:
    code, inbox = emailed_code(site, lang="?lang=fr")
    assert inbox.by_id("enter-code").text == "Continuer avec le code"
    page = doc(site.client.get("/recovery/code?lang=fr"))
    assert page.lang == "fr" and page.h1 == "Saisissez le code reçu par e-mail"
    refused = doc(
        site.submit(
            "/recovery/code?lang=fr",
            {"email": EMAIL, "code": wrong(code)},
            form_page="/recovery/code",
        )
    )
    assert refused.by_id("code-error").text.startswith("Ce code n’ouvre aucune récupération")
    french_mail = site.emails()[-1]
    for part in ("plain", "html"):
        body = french_mail.get_body((part,))
        assert body is not None
        assert "Ou saisissez ce code sur la page où vous l’avez demandé" in body.get_content()
