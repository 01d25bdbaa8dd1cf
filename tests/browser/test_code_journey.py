"""The journey by code in a real browser (Debian's Chromium): the link is never opened.

A person asks on "Forgot password?", reads the code in the email that arrived
(the loopback SMTP server of a live `recovery serve`), types it on "check your
inbox", reaches the same token-free new-password form as the link would give,
sets a new password and signs in: in English and French, on a desktop screen
and on two phones. A second browser context with no cookies at all gets there
too, from the code page the email names. Support then sees the attempt
`logged_in` by the code route, with no `open_link` in its timeline.
Screenshots of every step go to `test-output/browser/<test name>/`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Playwright, Request, expect

from tests.browser.conftest import ACTION_TIMEOUT_MS, Account, Screenshots
from tests.browser.journey import TEXT, Journey
from tests.browser.live import LiveServer, message_text

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ContextFactory = Callable[..., BrowserContext]
CODE_IN_MAIL = re.compile(r"^(\d{6,12})\s*$", re.MULTILINE)
CODE_PAGE_IN_MAIL = re.compile(r"https?://\S+/recovery/code\b")
CODE_TEXT = {
    "en": {
        "code": "Code from the email",
        "continue_with_code": "Continue with the code",
        "code_title": "Type the code from the email",
        "continue": "Continue",
    },
    "fr": {
        "code": "Code reçu par e-mail",
        "continue_with_code": "Continuer avec le code",
        "code_title": "Saisissez le code reçu par e-mail",
        "continue": "Continuer",
    },
}
# (screen, language): a desktop in both languages, and both phones.
SCREENS = [(None, "en"), (None, "fr"), ("iPhone 13", "en"), ("Pixel 7", "fr")]
EMAILED_WAIT_SECONDS = 20.0


@pytest.fixture(scope="module")
def support_key(server: LiveServer) -> str:
    return server.create_support_key("code-browser-tests", "read")


@pytest.fixture
def new_context(browser: Browser) -> Iterator[ContextFactory]:
    """Browser contexts (fresh cookies each) closed when the test ends."""
    made: list[BrowserContext] = []

    def make(**options: Any) -> BrowserContext:
        context = browser.new_context(**options)
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        made.append(context)
        return context

    yield make
    for context in made:
        context.close()


def support_view(server: LiveServer, key: str, reference: str) -> dict[str, Any]:
    """Support's view of the attempt the pages showed the reference of."""
    headers = {"Authorization": f"Bearer {key}"}
    listed = httpx.get(
        f"{server.base_url}/api/support/attempts",
        params={"reference": reference},
        headers=headers,
        timeout=30.0,
    )
    assert listed.status_code == 200, listed.text
    [item] = listed.json()["items"]
    detail = httpx.get(
        f"{server.base_url}/api/support/attempts/{item['id']}", headers=headers, timeout=30.0
    )
    assert detail.status_code == 200, detail.text
    return dict(detail.json())


def emailed_code(server: LiveServer, key: str, journey: Journey) -> tuple[str, str]:
    """The code (and the code page's address) from the email that arrived, once the
    attempt is recorded as emailed (a person reads the email; a test could be faster
    than the worker's commit after the send)."""
    message = server.mail_to(journey.account.email)[-1]
    text = message_text(message)
    deadline = time.monotonic() + EMAILED_WAIT_SECONDS
    while support_view(server, key, journey.reference)["state"] != "emailed":
        assert time.monotonic() < deadline, "the attempt was never recorded as emailed"
        time.sleep(0.05)
    return CODE_IN_MAIL.findall(text)[0], CODE_PAGE_IN_MAIL.findall(text)[0]


def finish_and_check(
    server: LiveServer, key: str, journey: Journey, requested: list[str]
) -> dict[str, Any]:
    """The same new-password form as the link's, token-free; then a good password and
    sign-in; support sees it logged in by the code, the link never opened."""
    page = journey.page
    journey.arrived("new-password-form", journey.text["reset_title"])
    assert page.url.split("?")[0] == f"{server.base_url}/recovery/reset", page.url
    assert "token" not in page.url
    [cookie] = [c for c in page.context.cookies() if c["name"] == "recovery_token"]
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/recovery")
    assert cookie["value"] not in page.content()
    journey.choose_good_password()
    journey.sign_in()
    view = support_view(server, key, journey.reference)
    assert view["state"] == "logged_in"
    assert view["route"] == "code"
    assert "open_link" not in [entry["event"] for entry in view["timeline"]]
    assert not [url for url in requested if "token=" in url], "a link was opened"
    return view


@pytest.mark.parametrize(
    ("device", "lang"), SCREENS, ids=[f"{d or 'desktop'}-{lang}" for d, lang in SCREENS]
)
def test_a_person_recovers_with_the_code_and_never_opens_the_link(
    server: LiveServer,
    support_key: str,
    playwright: Playwright,
    new_context: ContextFactory,
    make_account: Callable[..., Account],
    shots: Screenshots,
    device: str | None,
    lang: str,
) -> None:
    account = make_account(locale=lang)
    options: dict[str, Any] = {"locale": "fr-FR" if lang == "fr" else "en-US"}
    width = None
    if device is not None:
        options = dict(playwright.devices[device])
        options.pop("default_browser_type", None)
        width = options["viewport"]["width"]
    context = new_context(**options)
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    start = "?lang=fr" if (lang == "fr" and device is not None) else ""
    journey = Journey(page, server, account, shots, lang=lang, phone_width=width, start_query=start)
    journey.open_sign_in()
    journey.ask_for_link()
    code, _ = emailed_code(server, support_key, journey)
    box = page.get_by_label(CODE_TEXT[lang]["code"], exact=True)
    expect(box).to_have_attribute("inputmode", "numeric")
    expect(box).to_have_attribute("autocomplete", "one-time-code")
    # A wrong code first: the code page says so, with the address kept.
    journey.type_into(box, f"{(int(code) + 1) % 10**6:06d}")
    journey.submit(page.get_by_role("button", name=CODE_TEXT[lang]["continue_with_code"]))
    journey.arrived("wrong-code", CODE_TEXT[lang]["code_title"])
    expect(page.locator("#error-summary")).to_be_visible()
    expect(page.locator("#code")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#email")).to_have_value(account.email)
    journey.type_into(page.get_by_label(CODE_TEXT[lang]["code"], exact=True), code)
    journey.submit(page.get_by_role("button", name=CODE_TEXT[lang]["continue"], exact=True))
    view = finish_and_check(server, support_key, journey, requested)
    tries = [
        (e["accepted"], e["detail"]["outcome"])
        for e in view["timeline"]
        if e["event"] == "enter_code"
    ]
    assert tries == [(False, "wrong_code"), (True, "right_code")]
    expect(page.get_by_role("heading", level=1)).to_have_text(TEXT[lang]["signed_in_title"])


def test_a_code_typed_in_a_second_browser_with_no_cookies_gets_there_too(
    server: LiveServer,
    support_key: str,
    new_context: ContextFactory,
    make_account: Callable[..., Account],
    shots: Screenshots,
) -> None:
    """Asked in one browser; the code typed in another one that has never seen the site
    (an in-app browser, a second device), on the code page the email names."""
    account = make_account()
    asking = new_context().new_page()
    first = Journey(asking, server, account, shots)
    first.open_sign_in()
    first.ask_for_link()
    code, code_page = emailed_code(server, support_key, first)
    assert code_page == f"{server.base_url}/recovery/code"

    other = new_context()
    assert other.cookies() == []
    page = other.new_page()
    requested: list[str] = []

    def record(request: Request) -> None:
        requested.append(request.url)

    page.on("request", record)
    second = Journey(page, server, account, shots, reference=first.reference)
    page.goto(code_page)
    second.arrived("code-page-second-browser", CODE_TEXT["en"]["code_title"])
    second.type_into(page.get_by_label(TEXT["en"]["email"]), account.email)
    second.type_into(page.get_by_label(CODE_TEXT["en"]["code"], exact=True), code)
    second.submit(page.get_by_role("button", name=CODE_TEXT["en"]["continue"], exact=True))
    finish_and_check(server, support_key, second, requested)
    # The first browser never got a token: only the second one holds (held) it.
    assert [c for c in asking.context.cookies() if c["name"] == "recovery_token"] == []
