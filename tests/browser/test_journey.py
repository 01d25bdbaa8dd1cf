"""A person gets back into their account in a real browser (Debian's Chromium), in every way
the issue names: in English and in French, with the keyboard alone, and on two phones; and
the reset page keeps its secret: the token leaves the address bar, nothing is fetched from
another origin, and a link clicked in a webmail on another site still works.

Each test drives a live `recovery serve` whose mail goes to a loopback SMTP
server, reads the link from the email that arrived, and saves a screenshot of
every step under `test-output/browser/<test name>/`. A complete walk ends by
asking the support API how the attempt ended: `logged_in`, found by the
support reference the pages showed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect

from tests.browser.conftest import ACTION_TIMEOUT_MS, Account, Screenshots
from tests.browser.journey import TEXT, Journey
from tests.browser.live import LiveServer, reset_link

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ContextFactory = Callable[..., BrowserContext]
PHONES = [("iPhone 13", "en"), ("Pixel 7", "fr")]
# Another site, as a webmail would be (answered by the browser itself, never the network).
WEBMAIL = "https://webmail.example"


@pytest.fixture(scope="module")
def support_key(server: LiveServer) -> str:
    return server.create_support_key("browser-tests", "read")


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


CLICK_RECORDER = """
document.addEventListener('click', event => {
  if (!event.isTrusted || event.detail === 0) return;
  const clicks = JSON.parse(sessionStorage.getItem('clicks') || '[]');
  clicks.push(event.target.tagName);
  sessionStorage.setItem('clicks', JSON.stringify(clicks));
}, true);
"""


def recorded_clicks(page: Page) -> list[str]:
    """The mouse clicks CLICK_RECORDER saw in this tab, in order."""
    return list(page.evaluate("JSON.parse(sessionStorage.getItem('clicks') || '[]')"))


def attempt_state(server: LiveServer, key: str, reference: str) -> str:
    """How support sees the attempt: found by the reference the pages showed."""
    answer = httpx.get(
        f"{server.base_url}/api/support/attempts",
        params={"reference": reference},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30.0,
    )
    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    assert len(items) == 1, items
    return str(items[0]["state"])


@pytest.mark.parametrize("lang", ["en", "fr"])
def test_a_person_recovers_their_account_through_the_five_steps(
    server: LiveServer,
    support_key: str,
    new_context: ContextFactory,
    make_account: Callable[..., Account],
    shots: Screenshots,
    lang: str,
) -> None:
    """Sign-in → "Forgot password?" → email → link → weak, mismatched, then good password →
    sign-in with it: the person is signed in, in English and in French."""
    account = make_account(locale=lang)
    # The browser's language (Accept-Language) picks the pages' language.
    context = new_context(locale="fr-FR" if lang == "fr" else "en-US")
    journey = Journey(context.new_page(), server, account, shots, lang=lang)
    journey.walk()
    assert attempt_state(server, support_key, journey.reference) == "logged_in"
    # Both emails (the link, then "your password was changed") speak the pages' language.
    messages = server.mail_to(account.email, 2)
    assert [str(m["Content-Language"]) for m in messages] == [lang, lang]
    assert len(shots.taken) == 9


def test_the_token_leaves_the_address_bar_once_the_link_is_opened(
    server: LiveServer,
    new_context: ContextFactory,
    make_account: Callable[..., Account],
    shots: Screenshots,
) -> None:
    """Opening the emailed link lands on a token-free URL; the token sits in an HttpOnly,
    SameSite=Strict cookie that scripts cannot read, and nowhere in the page."""
    account = make_account()
    context = new_context()
    journey = Journey(context.new_page(), server, account, shots)
    journey.open_sign_in()
    journey.ask_for_link()
    link = journey.open_link()
    token = link.split("token=", 1)[1]
    page = journey.page
    assert page.url == f"{server.base_url}/recovery/reset", page.url
    assert token not in page.url
    assert token not in page.content()
    assert token not in str(page.evaluate("document.cookie"))
    cookies = [c for c in context.cookies() if c["value"] == token]
    assert len(cookies) == 1, "the token is not kept in one cookie"
    assert cookies[0]["httpOnly"] is True
    assert cookies[0]["sameSite"] == "Strict"
    assert cookies[0]["path"] == "/recovery"
    # Nothing the browser keeps about this page carries the token either.
    assert token not in page.evaluate("document.referrer")
    assert token not in page.evaluate("location.href")


def test_the_reset_page_requests_nothing_from_any_other_origin(
    server: LiveServer,
    new_context: ContextFactory,
    make_account: Callable[..., Account],
    shots: Screenshots,
) -> None:
    """From opening the link to the success page, every request goes to the service's own origin,
    and the reset page answers with no-referrer, no-store and a same-origin CSP."""
    account = make_account()
    context = new_context()
    page = context.new_page()
    journey = Journey(page, server, account, shots)
    journey.open_sign_in()
    journey.ask_for_link()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    responses: list[Any] = []
    page.on(
        "response",
        lambda r: responses.append(r) if urlsplit(r.url).path == "/recovery/reset" else None,
    )
    journey.open_link()
    journey.refuse_weak_password()
    journey.choose_good_password()
    origin = server.base_url
    foreign = [url for url in requested if not url.startswith(origin + "/")]
    assert not foreign, f"requests to other origins: {foreign}"
    # Non-vacuous: the page's own stylesheet was fetched and seen.
    assert any(urlsplit(url).path.startswith("/static/") for url in requested), requested
    assert responses, "no answer from /recovery/reset was seen"
    for response in responses:
        headers = response.all_headers()
        assert headers.get("referrer-policy") == "no-referrer", headers
        assert "no-store" in headers.get("cache-control", ""), headers
        assert "default-src 'self'" in headers.get("content-security-policy", ""), headers


def test_the_whole_journey_works_with_the_keyboard_alone(
    server: LiveServer,
    support_key: str,
    new_context: ContextFactory,
    make_account: Callable[..., Account],
    shots: Screenshots,
) -> None:
    """Tab, typing and Enter get a person through all five steps: no click anywhere."""
    account = make_account()
    context = new_context()
    page = context.new_page()
    # Every trusted mouse click, kept in sessionStorage: written synchronously, before
    # any navigation the click starts, and kept across the journey's pages (one origin).
    page.add_init_script(CLICK_RECORDER)
    journey = Journey(page, server, account, shots, keyboard=True)
    journey.walk()
    assert attempt_state(server, support_key, journey.reference) == "logged_in"
    # `detail` is 0 for a click synthesised by Enter on a link or button; a mouse sets it.
    assert recorded_clicks(page) == [], "mouse clicks happened"
    # The recorder is not blind: a real click is recorded.
    page.get_by_role("heading", level=1).click()
    assert recorded_clicks(page) == ["H1"]


@pytest.mark.parametrize(("device", "lang"), PHONES, ids=[d for d, _ in PHONES])
def test_the_journey_fits_a_phone_screen_without_sideways_scrolling(
    server: LiveServer,
    support_key: str,
    playwright: Playwright,
    new_context: ContextFactory,
    make_account: Callable[..., Account],
    shots: Screenshots,
    device: str,
    lang: str,
) -> None:
    """On an iPhone 13 and a Pixel 7 screen (touch, mobile viewport), every page of the
    journey fits the width, and the journey completes."""
    descriptor = dict(playwright.devices[device])
    # The phone's screen, agent and touch; the engine stays Debian's Chromium.
    descriptor.pop("default_browser_type", None)
    account = make_account(locale=lang)
    context = new_context(**descriptor)
    page = context.new_page()
    # `?lang=` picks the language here, whatever the phone's own setting.
    start = "?lang=fr" if lang == "fr" else ""
    width = descriptor["viewport"]["width"]
    journey = Journey(page, server, account, shots, lang=lang, phone_width=width, start_query=start)
    journey.walk()
    assert attempt_state(server, support_key, journey.reference) == "logged_in"
    expect(page.get_by_role("heading", level=1)).to_have_text(TEXT[lang]["signed_in_title"])


def test_a_link_clicked_in_a_webmail_on_another_site_still_reaches_the_form(
    server: LiveServer,
    new_context: ContextFactory,
    make_account: Callable[..., Account],
    shots: Screenshots,
) -> None:
    """Clicked from another site, the link's SameSite=Strict cookie is withheld on the
    redirect; the person still reaches the new-password form, token-free, and can finish."""
    account = make_account()
    context = new_context()
    page = context.new_page()
    journey = Journey(page, server, account, shots)
    journey.open_sign_in()
    journey.ask_for_link()
    link = server.mail_to(account.email)[-1]
    inbox = f"<!doctype html><title>Inbox</title><a id=open href='{reset_link(link)}'>Reset</a>"
    context.route(
        f"{WEBMAIL}/**",
        lambda route: route.fulfill(status=200, content_type="text/html", body=inbox),
    )
    page.goto(f"{WEBMAIL}/inbox")
    shots.take(page, "webmail")
    page.locator("#open").click()
    journey.arrived("new-password-form", TEXT["en"]["reset_title"])
    assert urlsplit(page.url).path == "/recovery/reset", page.url
    assert "token" not in page.url, page.url
    journey.choose_good_password()
