"""A picture of every page and email state, in English and French, on a desktop and a phone.

Not a check of behaviour (the other browser tests are): a walk through every
state a person can meet (sign-in and its errors, "Forgot password?" and its
error, the inbox page, the new-password form and its refusals, success, the
signed-in page, every dead link, "this wasn't me", the error pages), each
screenshotted under `test-output/browser/<test name>/`, and both emails
rendered in the browser (the HTML part as a page, the text part as plain text)
and screenshotted beside them, so a reviewer can look at all of it at once.
States that need time to pass (an expired link, a slowed-down sign-in) come
from a second server whose links live one minute and whose sign-in slows down
after one failure.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect

from tests.browser.conftest import ACTION_TIMEOUT_MS, Account, Screenshots
from tests.browser.live import LiveServer, live_server, message_text, reset_link

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DESKTOP: dict[str, Any] = {"viewport": {"width": 1280, "height": 800}}
DEVICES = ["desktop", "phone"]
LANGS = ["en", "fr"]
WEAK = "camille7"
GOOD = "Velvet#Harbor-2958-Juniper"
UNKNOWN_TOKEN = "A" * 43
LINK_TTL_ENV = {"RECOVERY_LINK_TTL_MINUTES": "1", "RECOVERY_LOGIN_FREE_FAILURES": "1"}
EXPIRY_WAIT_SECONDS = 62


def device_options(playwright: Playwright, device: str, lang: str) -> dict[str, Any]:
    if device == "desktop":
        options = dict(DESKTOP)
    else:
        options = dict(playwright.devices["iPhone 13"])
        options.pop("default_browser_type", None)
    options["locale"] = "fr-FR" if lang == "fr" else "en-US"
    options["timezone_id"] = "Europe/Paris" if lang == "fr" else "America/New_York"
    return options


AXE = Axe()


class CheckedShots:
    """Screenshots of the service's pages, each checked by axe-core first (0 violations)."""

    def __init__(self, shots: Screenshots) -> None:
        self.shots = shots
        self.checked = 0

    def take(self, page: Page, step: str) -> None:
        if not step.startswith("email-"):
            results = AXE.run(page)
            assert results.violations_count == 0, f"{step}: {results.generate_report()}"
            self.checked += 1
        self.shots.take(page, step)


@pytest.fixture
def contexts(browser: Browser) -> Iterator[Callable[..., BrowserContext]]:
    made: list[BrowserContext] = []

    def make(**options: Any) -> BrowserContext:
        context = browser.new_context(**options)
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        made.append(context)
        return context

    yield make
    for context in made:
        context.close()


def submit(page: Page) -> None:
    page.locator("main form button[type=submit]").last.click()
    page.wait_for_load_state()


def show_email(page: Page, shots: Any, message: Any, name: str) -> None:
    """The email's HTML part as a page, then its text part as plain text, screenshotted."""
    part = message.get_body(("html",))
    # On a blank page: the service's CSP would block the email's inline styles.
    page.goto("about:blank")
    page.set_content(part.get_content())
    shots.take(page, f"email-{name}-html")
    text = html.escape(message_text(message))
    page.set_content(
        "<!doctype html><meta name=viewport content='width=device-width'>"
        f"<pre style='white-space:pre-wrap;font:14px monospace;padding:12px'>{text}</pre>"
    )
    shots.take(page, f"email-{name}-text")


def request_link(server: LiveServer, page: Page, query: str, account: Account) -> int:
    """Ask for a link on the page; the number of emails the account will then have."""
    before = len(server.sink.to(account.email))
    page.goto(f"{server.base_url}/recovery{query}")
    page.locator("#email").fill(account.email)
    submit(page)
    return before + 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lang", LANGS)
def test_gallery_of_every_page_and_email(
    server: LiveServer,
    playwright: Playwright,
    contexts: Callable[..., BrowserContext],
    make_account: Callable[..., Account],
    shots: Screenshots,
    lang: str,
    device: str,
) -> None:
    """Every page state and both emails, pictured in one language on one device; axe-core
    finds no violation on any page."""
    shots = CheckedShots(shots)  # type: ignore[assignment]
    account = make_account(locale=lang)
    options = device_options(playwright, device, lang)
    q = f"?lang={lang}"
    base = server.base_url
    page = contexts(**options).new_page()

    page.goto(f"{base}/login{q}")
    shots.take(page, "sign-in")
    submit(page)
    shots.take(page, "sign-in-empty")
    page.locator("#email").fill(account.email)
    page.locator("#password").fill("Not-the-password-1!")
    submit(page)
    shots.take(page, "sign-in-wrong-password")

    page.goto(f"{base}/recovery{q}")
    shots.take(page, "forgot-password")
    submit(page)
    shots.take(page, "forgot-password-empty")
    page.locator("#email").fill("not an address")
    submit(page)
    shots.take(page, "forgot-password-invalid")
    page.locator("#email").fill(account.email)
    submit(page)
    shots.take(page, "check-your-inbox")

    message = server.mail_to(account.email, 1)[-1]
    show_email(page, shots, message, "recovery")
    page.goto(reset_link(message))
    expect(page.locator("#password")).to_be_visible()
    shots.take(page, "new-password")
    page.locator("#password").fill(WEAK)
    page.locator("#password_confirm").fill(WEAK)
    submit(page)
    shots.take(page, "new-password-weak")
    page.locator("#password").fill(GOOD)
    page.locator("#password_confirm").fill(GOOD + "!")
    submit(page)
    shots.take(page, "new-password-mismatch")
    page.locator("#password").fill(GOOD)
    page.locator("#password_confirm").fill(GOOD)
    submit(page)
    shots.take(page, "password-changed")
    changed = server.mail_to(account.email, 2)[-1]
    show_email(page, shots, changed, "password-changed")

    page.goto(f"{base}/login{q}")
    page.locator("#email").fill(account.email)
    page.locator("#password").fill(GOOD)
    submit(page)
    shots.take(page, "signed-in")
    page.reload()
    shots.take(page, "signed-in-reloaded")

    page.goto(reset_link(message))
    shots.take(page, "dead-link-used")

    # Superseded: a first link, then a second one; the first no longer works.
    first = server.mail_to(account.email, request_link(server, page, q, account))[-1]
    second_count = request_link(server, page, q, account)
    server.mail_to(account.email, second_count)
    time.sleep(0.5)  # the second send supersedes the first once recorded
    fresh = contexts(**options).new_page()
    fresh.goto(reset_link(first))
    shots.take(fresh, "dead-link-superseded")

    # "This wasn't me" on the newest email, then its reset link.
    newest = server.mail_to(account.email, second_count)[-1]
    cancel_token = message_text(newest).split("/recovery/cancel?token=", 1)[1].split()[0]
    cancel_link = f"{base}/recovery/cancel?token={cancel_token}"
    fresh.goto(cancel_link)
    shots.take(fresh, "this-wasnt-me")
    submit(fresh)
    shots.take(fresh, "link-cancelled")
    other = contexts(**options).new_page()
    other.goto(reset_link(newest))
    shots.take(other, "dead-link-cancelled")

    other.goto(f"{base}/recovery/reset?token={UNKNOWN_TOKEN}&lang={lang}")
    shots.take(other, "dead-link-unknown")
    bare = contexts(**options).new_page()
    bare.goto(f"{base}/recovery/reset{q}")
    shots.take(bare, "dead-link-missing")

    # The "one more step" page a click from another site meets (its automatic step held).
    hop = contexts(**options).new_page()
    hop.route("**/recovery/reset?*resume=1*", lambda route: route.fulfill(status=204))
    webmail = "https://webmail.example/inbox"
    link = reset_link(server.mail_to(account.email, request_link(server, hop, q, account))[-1])
    hop.context.route(
        f"{webmail}*",
        lambda route: route.fulfill(
            status=200, content_type="text/html", body=f"<a id=open href='{link}'>open</a>"
        ),
    )
    hop.goto(webmail)
    hop.locator("#open").click()
    hop.wait_for_load_state()
    shots.take(hop, "one-more-step")

    # Error pages: a form whose CSRF cookie is gone, and a body past the size cap.
    errors = contexts(**options)
    broken = errors.new_page()
    broken.goto(f"{base}/recovery{q}")
    errors.clear_cookies()
    broken.locator("#email").fill(account.email)
    submit(broken)
    shots.take(broken, "error-form-not-checked")
    broken.goto(f"{base}/recovery{q}")
    broken.locator("#email").fill("x" * 70_000)
    submit(broken)
    shots.take(broken, "error-too-large")


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server whose links live one minute and whose sign-in slows down after one failure."""
    with live_server(tmp_path_factory.mktemp("gallery-slow"), LINK_TTL_ENV) as running:
        yield running


def test_gallery_of_states_that_need_time(
    slow_server: LiveServer,
    playwright: Playwright,
    contexts: Callable[..., BrowserContext],
    shots: Screenshots,
) -> None:
    """An expired link and a slowed-down sign-in, in both languages on both devices; axe-core
    finds no violation on either."""
    shots = CheckedShots(shots)  # type: ignore[assignment]
    combos = [(lang, device) for lang in LANGS for device in DEVICES]
    pending = []
    for n, (lang, device) in enumerate(combos):
        email = f"gallery-time-{n}@example.test"
        slow_server.create_account(email, "Camille Martin", GOOD, locale=lang)
        page = contexts(**device_options(playwright, device, lang)).new_page()
        account = Account(email=email, name="Camille Martin", password=GOOD, locale=lang)
        count = request_link(slow_server, page, f"?lang={lang}", account)
        pending.append((lang, device, page, account, count))
    started = time.monotonic()
    for lang, device, page, account, _ in pending:
        page.goto(f"{slow_server.base_url}/login?lang={lang}")
        for password in ("Wrong-password-1!", "Wrong-password-2!"):
            page.locator("#email").fill(account.email)
            page.locator("#password").fill(password)
            submit(page)
        shots.take(page, f"{lang}-{device}-sign-in-slowed-down")
    time.sleep(max(0.0, EXPIRY_WAIT_SECONDS - (time.monotonic() - started)))
    for lang, device, page, account, count in pending:
        message = slow_server.mail_to(account.email, count)[-1]
        page.goto(reset_link(message))
        shots.take(page, f"{lang}-{device}-dead-link-expired")
