"""The pages of support-handled recovery, driven through their forms like a browser would.

The same site as tests/api/test_pages.py (the real application, the real CSRF
middleware, the worker writing `.eml` files, the application's clock moved by
the test): the "I can't access this email" link, the request form, the code
page, the "this wasn't me" page of a notice, the "more information" form, and
the grant link on the usual reset page. Pages that record or read state run on
both databases; rendering alone on SQLite.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import httpx

from api.support.reference import support_reference
from tests.api.test_pages import (
    EMAIL,
    NEW_PASSWORD,
    Doc,
    Site,
    SiteFactory,
    cookie_attributes,
    doc,
    make_site,
    set_cookie,
    site,
    sqlite_only,
)

__all__ = ["make_site", "site"]  # fixtures, used by name

CONTACT = "jane.new@mail.example"
FORM = "/assisted-recovery"
CODE = re.compile(r"^\s*(\d{6})\s*$", re.MULTILINE)
CSRF = re.compile(r'name="_csrf_token" value="[0-9a-f]+"')
REFERENCE = re.compile(r"[A-Z2-7]{4}-[A-Z2-7]{4}")
WAIT = timedelta(minutes=4320)


def _case(**overrides: str) -> dict[str, str]:
    fields = {
        "email": EMAIL,
        "contact_email": CONTACT,
        "name": "Jane Doe",
        "birth_date": "",
        "account_created": "",
        "statement": "My old work mailbox was closed when I left.",
    }
    fields.update(overrides)
    return fields


def _body(message: Any) -> str:
    return str(message.get_body(("plain",)).get_content())


def _mail_to(site: Site, address: str) -> list[Any]:
    return [m for m in site.emails() if address.lower() in str(m["To"]).lower()]


def _drain(site: Site) -> None:
    for _ in range(5):
        site.dispatch()


def _link(message: Any, kind: str) -> str:
    found = re.search(
        rf"https?://[^/\s]+(/assisted-recovery/{kind}\?token=[\w-]+&lang=\w+)", _body(message)
    )
    assert found, _body(message)
    return found.group(1)


def _submitted(site: Site, **overrides: str) -> httpx.Response:
    answer = site.submit(FORM, _case(**overrides))
    _drain(site)
    return answer


def _confirmed(site: Site) -> str:
    """A case through the forms up to support's queue; its id."""
    _submitted(site)
    code = CODE.search(_body(_mail_to(site, CONTACT)[-1]))
    assert code
    done = site.submit(
        "/assisted-recovery/confirm",
        {"contact_email": CONTACT, "code": code.group(1)},
    )
    assert done.status_code == 200, done.text
    _drain(site)
    return str([a for a in site.attempts() if a.flow == "assisted_recovery"][-1].id)


# -- the way in ------------------------------------------------------------------------------------


@sqlite_only
def test_the_cant_access_link_is_on_forgot_password_and_on_check_your_inbox(site: Site) -> None:
    for page in (
        doc(site.client.get("/recovery")),
        doc(site.submit("/recovery", {"email": EMAIL})),
    ):
        link = page.by_id("cant-access")
        assert (link.text, link.attrs["href"]) == ("I can't access this email", FORM)
    french = doc(site.client.get("/recovery?lang=fr"))
    link = french.by_id("cant-access")
    assert (link.text, link.attrs["href"]) == (
        "Je n’ai plus accès à cette adresse",
        f"{FORM}?lang=fr",
    )
    opened = doc(site.client.get(link.attrs["href"]))
    assert (opened.lang, opened.h1) == ("fr", "Je n’ai plus accès à cette adresse")


@sqlite_only
def test_the_request_form_labels_every_field_and_says_which_are_optional(site: Site) -> None:
    for lang, heading, optional in (
        ("en", "I can't access this email", "(optional)"),
        ("fr", "Je n’ai plus accès à cette adresse", "(facultatif)"),
    ):
        page = doc(site.client.get(f"{FORM}?lang={lang}"))
        assert (page.lang, page.h1) == (lang, heading)
        labelled = {label.attrs["for"]: label.text for label in page.all("label")}
        fields = [
            n
            for n in page.all()
            if n.tag in ("input", "textarea") and n.attrs.get("type") != "hidden"
        ]
        assert [f.attrs["id"] for f in fields] == [
            "email", "contact_email", "name", "birth_date", "account_created", "statement",
        ]  # fmt: skip
        for field in fields:
            assert field.attrs["id"] in labelled, field.attrs
        assert optional in labelled["birth_date"] and optional in labelled["account_created"]
        assert optional not in labelled["email"]
        assert page.by_id("birth_date").attrs["type"] == "date"
        assert page.by_id("contact_email").attrs["autocomplete"] == "email"
        assert page.by_id("statement").attrs["maxlength"] == "4000"


def _comparable(text: str) -> str:
    """A page as compared: the CSRF token and the support reference left out."""
    return REFERENCE.sub("REF", CSRF.sub("CSRF", text))


def test_the_request_gives_the_same_code_page_for_an_address_with_or_without_an_account(
    site: Site,
) -> None:
    known = site.submit(FORM, _case())
    site.clock.advance(seconds=1)
    unknown = site.submit(FORM, _case(email="nobody@example.com", contact_email="c2@mail.example"))
    assert known.status_code == unknown.status_code == 200
    # The contact address typed is shown back; the rest is the same, byte for byte.
    assert _comparable(known.text) == _comparable(unknown.text.replace("c2@mail.example", CONTACT))
    page = doc(known)
    assert page.h1 == "Check the inbox of your new address"
    assert page.by_id("contact_email").attrs["value"] == CONTACT
    assert page.by_id("code").attrs["autocomplete"] == "one-time-code"
    cases = [a for a in site.attempts() if a.flow == "assisted_recovery"]
    assert page.by_id("support-reference").text == support_reference(cases[0].id)
    assert [a.state for a in cases] == ["submitted", "submitted"]


def test_each_bad_field_is_told_next_to_it_what_was_typed_stays_and_nothing_is_recorded(
    site: Site,
) -> None:
    answer = site.submit(
        FORM,
        _case(email="not an address", name="  ", birth_date="2999-01-01", statement="Kept text"),
    )
    assert answer.status_code == 400
    page = doc(answer)
    links = [a.attrs["href"] for a in page.by_id("error-summary").walk() if a.tag == "a"]
    assert links == ["#email", "#name", "#birth_date"]
    for field in ("email", "name", "birth_date"):
        box = page.by_id(field)
        assert box.attrs["aria-invalid"] == "true"
        assert f"{field}-error" in box.attrs["aria-describedby"].split()
        assert page.by_id(f"{field}-error").text
    assert page.by_id("email").attrs["value"] == "not an address"
    assert page.by_id("statement").text == "Kept text"
    assert not page.has_id("contact_email-error")
    assert site.attempts() == []
    repeated = site.submit(FORM, {**_case(), "email": [EMAIL, "b@example.com"]})
    assert repeated.status_code == 400 and site.attempts() == []


def test_the_code_page_confirms_the_case_and_tells_a_wrong_code_next_to_its_field(
    site: Site,
) -> None:
    _submitted(site)
    wrong = site.submit("/assisted-recovery/confirm", {"contact_email": CONTACT, "code": "00000"})
    assert wrong.status_code == 400
    page = doc(wrong)
    assert page.by_id("code").attrs["aria-invalid"] == "true"
    assert "code-error" in page.by_id("code").attrs["aria-describedby"].split()
    assert page.by_id("contact_email").attrs["value"] == CONTACT
    code = CODE.search(_body(_mail_to(site, CONTACT)[-1]))
    assert code
    done = site.submit(
        "/assisted-recovery/confirm", {"contact_email": CONTACT, "code": code.group(1)}
    )
    assert done.status_code == 200
    assert doc(done).h1 == "Your request is with our support team"
    [case] = [a for a in site.attempts() if a.flow == "assisted_recovery"]
    assert case.state == "in_review"
    assert doc(done).by_id("support-reference").text == support_reference(case.id)
    # The code page alone, for a person coming back to it, in French.
    alone = doc(site.client.get("/assisted-recovery/confirm?lang=fr"))
    assert (alone.lang, alone.h1) == ("fr", "Saisissez votre code")


def test_the_case_forms_need_their_csrf_token(site: Site) -> None:
    site.client.get(FORM)
    for path, data in (
        (FORM, _case()),
        ("/assisted-recovery/confirm", {"contact_email": CONTACT, "code": "123456"}),
    ):
        refused = site.client.post(path, data=data)
        assert refused.status_code == 403
        assert doc(refused).by_id("error").attrs["data-error"] == "csrf"
    assert site.attempts() == []


# -- links from the case's emails ------------------------------------------------------------------


def test_the_notice_link_keeps_its_token_in_a_cookie_and_cancels_only_on_the_post(
    site: Site,
) -> None:
    case_id = _confirmed(site)
    link = _link(_mail_to(site, EMAIL)[0], "cancel")
    opened = site.client.get(link, follow_redirects=False)
    assert opened.status_code == 303
    assert opened.headers["location"] == "/assisted-recovery/cancel"
    assert opened.headers["cache-control"] == "no-store"
    assert opened.headers["referrer-policy"] == "no-referrer"
    cookie = cookie_attributes(set_cookie(opened, "assisted_cancel"))
    assert cookie["path"] == "/assisted-recovery/cancel" and cookie["samesite"].lower() == "strict"
    assert "httponly" in cookie
    form = site.client.get("/assisted-recovery/cancel")
    assert doc(form).h1 == "You did not ask for this?"
    site.client.head(link)
    assert site.services.engine.get_sync(case_id).state == "in_review"  # GET and HEAD: nothing
    done = site.submit("/assisted-recovery/cancel", {}, form_page="/assisted-recovery/cancel")
    assert done.status_code == 200
    assert doc(done).h1 == "The request has been cancelled"
    assert site.services.engine.get_sync(case_id).state == "cancelled"
    assert cookie_attributes(set_cookie(done, "assisted_cancel"))["max-age"] == "0"
    site.client.get(link)
    again = site.submit("/assisted-recovery/cancel", {}, form_page="/assisted-recovery/cancel")
    assert again.status_code == 410
    assert doc(again).by_id("dead-link").attrs["data-reason"] == "cancelled"


def test_the_answer_link_shows_the_question_and_takes_the_answer_once(site: Site) -> None:
    case_id = _confirmed(site)
    question = "Which city did you last sign in from?"
    site.services.support.fire_event_sync("agent", case_id, "request_info", question)
    _drain(site)
    link = _link(_mail_to(site, CONTACT)[-1], "answer")
    assert link.endswith("&lang=en")
    opened = site.client.get(link, follow_redirects=False)
    assert (opened.status_code, opened.headers["location"]) == (303, "/assisted-recovery/answer")
    page = doc(site.client.get("/assisted-recovery/answer"))
    assert page.h1 == "Answer our support team"
    assert page.by_id("question").text == question
    empty = site.submit("/assisted-recovery/answer", {"answer": "   "})
    assert empty.status_code == 400
    assert doc(empty).by_id("answer").attrs["aria-invalid"] == "true"
    sent = site.submit("/assisted-recovery/answer", {"answer": "Lyon."})
    assert (sent.status_code, doc(sent).h1) == (200, "Your answer was sent")
    assert site.services.engine.get_sync(case_id).state == "in_review"
    used = site.client.get(link)  # followed to the form, which says the link was used
    assert used.status_code == 410
    assert doc(used).by_id("dead-link").attrs["data-reason"] == "used"
    assert site.client.get("/assisted-recovery/answer?token=bad").status_code == 400


@sqlite_only
def test_the_case_pages_carry_no_inline_script_or_style_and_reference_no_other_origin(
    site: Site,
) -> None:
    pages: list[httpx.Response] = [
        site.client.get(FORM),
        site.client.get("/assisted-recovery/confirm"),
        site.submit(FORM, _case(email="bad")),
        site.submit(FORM, _case()),
        site.client.get("/assisted-recovery/cancel"),
        site.client.get("/assisted-recovery/answer"),
    ]
    for response in pages:
        page: Doc = doc(response)
        # Scripts only as this service's own files (the site's one, pages.js), never inline.
        scripts = page.all("script")
        assert all(n.attrs.get("src", "").startswith("/static/") for n in scripts), response.url
        assert not [n for n in scripts if "".join(n.texts).strip()], response.url
        assert not page.all("style"), response.url
        assert not [n for n in page.all() if "style" in n.attrs], response.url
        for node in page.all():
            for attr in ("href", "src", "action"):
                url = node.attrs.get(attr)
                if url is not None:
                    assert url.startswith(("/", "#", "?")), (response.url, url)
        sheets = [n.attrs["href"] for n in page.all("link") if n.attrs.get("rel") == "stylesheet"]
        assert sheets[0] == "/static/pages.css"
    css = site.client.get("/static/assisted.css")
    assert css.status_code == 200 and "url(" not in css.text


def test_the_grant_link_opens_the_usual_reset_page_and_the_new_address_signs_in(
    make_site: SiteFactory,
) -> None:
    site = make_site()
    case_id = _confirmed(site)
    site.services.support.fire_event_sync("agent", case_id, "approve", "checked")
    site.clock.advance(minutes=4320, seconds=1)
    _drain(site)
    grant = _mail_to(site, CONTACT)[-1]
    found = re.search(r"https?://[^/\s]+(/recovery/reset\?token=[\w-]+)", _body(grant))
    assert found
    opened = site.client.get(found.group(1), follow_redirects=False)
    assert (opened.status_code, opened.headers["location"]) == (303, "/recovery/reset")
    form = doc(site.client.get("/recovery/reset"))
    assert form.h1 == "Choose a new password"
    done = site.submit(
        "/recovery/reset", {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}
    )
    assert doc(done).h1 == "Your password has been changed"
    assert site.services.engine.get_sync(case_id).state == "password_set"
    signed = site.submit("/login", {"email": CONTACT, "password": NEW_PASSWORD})
    assert doc(signed).h1 == "You are signed in"
    assert site.services.engine.get_sync(case_id).state == "logged_in"
