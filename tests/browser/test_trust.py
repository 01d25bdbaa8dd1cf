"""Pages a person trusts, in a real browser (issue 16), in English and French, on a phone too.

Against a `recovery serve` with a brand, a logo, a support address and page, and a
three-second resend cooldown: the passphrase suggestion (made in the browser with
crypto.getRandomValues, from the page language's word list, accepted by the
server), the checklist that follows the typing, the show/hide toggle, the form
without JavaScript, the phone layout with the confirmation in the first screen,
the first field focused and a focus ring that contrasts, the support reference on
one line, "send again" once the cooldown has passed, the signed-in page that a
reload does not re-submit, and branded emails.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect

from api.web.pages import word_list
from tests.browser.conftest import ACTION_TIMEOUT_MS, ORIGINAL_PASSWORD, Account, Screenshots
from tests.browser.live import LiveServer, live_server, reset_link

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LANGS = ["en", "fr"]
COOLDOWN_SECONDS = 3
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
# Counts the browser's random draws; Math.random must never be used for a password.
RANDOM_PROBE = """
window.__draws = 0;
const real = crypto.getRandomValues.bind(crypto);
crypto.getRandomValues = a => { window.__draws += 1; return real(a); };
Math.random = () => { throw new Error('Math.random used'); };
"""
TEXT = {
    "en": {"suggest": "Suggest a password I can remember", "show": "Show", "hide": "Hide"},
    "fr": {
        "suggest": "Me proposer un mot de passe facile à retenir",
        "show": "Afficher",
        "hide": "Masquer",
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A branded server with a support contact and a short resend cooldown."""
    folder = tmp_path_factory.mktemp("trust-server")
    logo = folder / "acme.png"
    logo.write_bytes(PNG)
    env = {
        "RECOVERY_BRAND_NAME": "Acme",
        "RECOVERY_BRAND_LOGO": str(logo),
        "RECOVERY_SUPPORT_EMAIL": "help@acme.example",
        "RECOVERY_SUPPORT_URL": "https://acme.example/help",
        "RECOVERY_RESEND_COOLDOWN_SECONDS": str(COOLDOWN_SECONDS),
    }
    with live_server(folder, env) as running:
        yield running


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


def phone(playwright: Playwright, name: str = "iPhone 13") -> dict[str, Any]:
    options = dict(playwright.devices[name])
    options.pop("default_browser_type", None)
    return options


def open_reset_form(server: LiveServer, page: Page, account: Account, lang: str) -> None:
    """Ask for a link on the page (waiting out the cooldown), open it from the email."""
    count = len(server.sink.to(account.email)) + 1
    page.goto(f"{server.base_url}/recovery?lang={lang}")
    page.locator("#email").fill(account.email)
    page.locator("#send-link").click()
    expect(page.locator("#email-sent-to")).to_have_text(account.email)
    page.goto(reset_link(server.mail_to(account.email, count)[-1]))
    expect(page.locator("#password")).to_be_visible()


@pytest.mark.parametrize("lang", LANGS)
def test_a_suggested_passphrase_is_made_in_the_browser_and_accepted(
    server: LiveServer,
    contexts: Callable[..., BrowserContext],
    make_account: Callable[..., Account],
    shots: Screenshots,
    lang: str,
) -> None:
    """The button fills both fields with five words of the page language's list and a
    digit, drawn with crypto.getRandomValues (never Math.random), shows it once with its
    entropy, and the server accepts it."""
    account = make_account(locale=lang, name="Tom Martin")
    page = contexts(locale="fr-FR" if lang == "fr" else "en-US").new_page()
    page.add_init_script(RANDOM_PROBE)
    open_reset_form(server, page, account, lang)
    assert "Math.random" not in page.content()
    page.get_by_role("button", name=TEXT[lang]["suggest"]).click()
    suggested = page.locator("#suggested-password")
    expect(suggested).to_be_visible()
    shots.take(page, "suggested")
    text = suggested.inner_text()
    parts = text.split(" ")
    words = [p for p in parts if not p.isdigit()]
    assert len(parts) == 6 and len(words) == 5, text
    assert set(words) <= set(word_list(lang)), text
    assert not any("tom" in w or "martin" in w for w in words), text
    assert page.evaluate("window.__draws") >= 6
    expect(page.locator("#password")).to_have_value(text)
    expect(page.locator("#password_confirm")).to_have_value(text)
    expect(page.locator("#password")).to_have_attribute("type", "text")
    entropy = page.locator("#suggestion-entropy").inner_text()
    assert re.search(r"\b7[0-9]\b", entropy), entropy
    for rule in ("length", "letter", "digit", "special", "match"):
        expect(page.locator(f"#rule-{rule}")).to_have_class("rule pass")
    # A second suggestion replaces the first: each is shown once.
    page.get_by_role("button", name=TEXT[lang]["suggest"]).click()
    expect(suggested).not_to_have_text(text)
    final = suggested.inner_text()
    page.locator("#change-password").click()
    expect(page.locator("h1")).to_have_text(
        "Votre mot de passe a été modifié" if lang == "fr" else "Your password has been changed"
    )
    shots.take(page, "accepted")
    # The server never sent it: the page that showed it came without it.
    assert final not in page.content()


@pytest.mark.parametrize("lang", LANGS)
def test_the_checklist_follows_the_typing_and_the_toggle_shows_the_password(
    server: LiveServer,
    contexts: Callable[..., BrowserContext],
    make_account: Callable[..., Account],
    shots: Screenshots,
    lang: str,
) -> None:
    """As the person types, the rules a browser can check are marked met or not; the rules
    only the server knows stay "checked when you submit"; Show/Hide switches both fields."""
    account = make_account(locale=lang)
    page = contexts().new_page()
    open_reset_form(server, page, account, lang)
    password = page.locator("#password")
    password.press_sequentially("abc")
    expected = {"length": "fail", "letter": "pass", "digit": "fail", "special": "fail"}
    for rule, status in expected.items():
        expect(page.locator(f"#rule-{rule}")).to_have_class(f"rule {status}")
    for rule in ("personal", "common", "history"):
        expect(page.locator(f"#rule-{rule}")).to_have_class("rule unknown")
    shots.take(page, "typing")
    password.press_sequentially("-Quartz-2958")
    page.locator("#password_confirm").press_sequentially("abc-Quartz-2958")
    for rule in ("length", "letter", "digit", "special", "match"):
        expect(page.locator(f"#rule-{rule}")).to_have_class("rule pass")
    expect(page.locator("#rule-digit .status")).to_have_text(
        "(respectée)" if lang == "fr" else "(met)"
    )
    toggle = page.get_by_role("button", name=TEXT[lang]["show"])
    toggle.click()
    expect(password).to_have_attribute("type", "text")
    expect(page.locator("#password_confirm")).to_have_attribute("type", "text")
    expect(page.locator("#show-password")).to_have_attribute("aria-pressed", "true")
    shots.take(page, "shown")
    page.get_by_role("button", name=TEXT[lang]["hide"]).click()
    expect(password).to_have_attribute("type", "password")


def test_without_javascript_the_form_works_and_offers_no_dead_button(
    server: LiveServer,
    contexts: Callable[..., BrowserContext],
    make_account: Callable[..., Account],
    shots: Screenshots,
) -> None:
    """Scripts off: no suggestion button or toggle shows, the checklist is plain text, the
    server's verdict marks it, and a good password is accepted."""
    account = make_account()
    page = contexts(java_script_enabled=False).new_page()
    open_reset_form(server, page, account, "en")
    expect(page.locator("#suggest-password")).to_be_hidden()
    expect(page.locator("#show-password")).to_be_hidden()
    page.locator("#password").fill("short")
    page.locator("#password_confirm").fill("short")
    page.locator("#change-password").click()
    expect(page.locator("#rule-length")).to_have_class("rule fail")
    shots.take(page, "refused-without-script")
    page.locator("#password").fill("Velvet#Harbor-2958-Juniper")
    page.locator("#password_confirm").fill("Velvet#Harbor-2958-Juniper")
    page.locator("#change-password").click()
    expect(page.locator("h1")).to_have_text("Your password has been changed")


@pytest.mark.parametrize("lang", LANGS)
def test_on_a_phone_the_confirmation_field_is_in_the_first_screen(
    server: LiveServer,
    playwright: Playwright,
    contexts: Callable[..., BrowserContext],
    make_account: Callable[..., Account],
    shots: Screenshots,
    lang: str,
) -> None:
    """On an iPhone 13 the confirmation field is within the first screen, on arrival and
    after a refused weak password."""
    account = make_account(locale=lang)
    options = phone(playwright)
    page = contexts(**options).new_page()
    open_reset_form(server, page, account, lang)
    height = options["viewport"]["height"]

    def confirmation_bottom() -> float:
        box = page.locator("#password_confirm").bounding_box()
        assert box is not None
        return float(box["y"] + box["height"])

    assert confirmation_bottom() <= height
    shots.take(page, "arrival")
    page.locator("#password").fill("camille7")
    page.locator("#password_confirm").fill("camille7")
    page.locator("#change-password").click()
    expect(page.locator("#error-summary")).to_be_visible()
    page.evaluate("window.scrollTo(0, 0)")
    assert confirmation_bottom() <= height
    shots.take(page, "refused")


def contrast(first: list[float], second: list[float]) -> float:
    def luminance(rgb: list[float]) -> float:
        channels = [c / 255 for c in rgb[:3]]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(first), luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)


RGB = "c => c.match(/[\\d.]+/g).slice(0, 3).map(Number)"


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("lang", LANGS)
def test_the_first_field_is_focused_and_the_focus_ring_contrasts(
    server: LiveServer, contexts: Callable[..., BrowserContext], lang: str, scheme: str
) -> None:
    """The sign-in and "Forgot password?" pages open with the first field focused, and the
    keyboard's focus ring contrasts at least 3:1 with the card and the page behind it."""
    page = contexts(color_scheme=scheme).new_page()
    for path in ("/login", "/recovery"):
        page.goto(f"{server.base_url}{path}?lang={lang}")
        assert page.evaluate("document.activeElement.id") == "email", path
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    ring = page.evaluate(
        f"""() => {{
        const e = document.activeElement, s = getComputedStyle(e), rgb = {RGB};
        return {{ring: rgb(s.outlineColor), width: parseFloat(s.outlineWidth),
                 style: s.outlineStyle,
                 card: rgb(getComputedStyle(document.querySelector('main')).backgroundColor),
                 page: rgb(getComputedStyle(document.body).backgroundColor)}};
    }}"""
    )
    assert ring["style"] == "solid" and ring["width"] >= 2, ring
    assert contrast(ring["ring"], ring["card"]) >= 3, ring
    assert contrast(ring["ring"], ring["page"]) >= 3, ring


@pytest.mark.parametrize("lang", LANGS)
def test_the_inbox_page_offers_send_again_once_the_cooldown_has_passed(
    server: LiveServer,
    playwright: Playwright,
    contexts: Callable[..., BrowserContext],
    make_account: Callable[..., Account],
    shots: Screenshots,
    lang: str,
) -> None:
    """The inbox page echoes the address, keeps its "send again" button disabled with a
    countdown for the cooldown, then sends a second email; the support reference stays
    on one line on a 320-pixel-wide phone, and support's address is offered."""
    account = make_account(locale=lang)
    options = phone(playwright, "iPhone SE")
    page = contexts(**options).new_page()
    page.goto(f"{server.base_url}/recovery?lang={lang}")
    page.locator("#email").fill(account.email)
    page.locator("#send-link").click()
    expect(page.locator("#email-sent-to")).to_have_text(account.email)
    again = page.locator("#send-again")
    expect(again).to_be_disabled()
    expect(page.locator("#send-again-wait")).to_contain_text("s")
    shots.take(page, "waiting")
    reference = page.locator("#support-reference")
    assert page.evaluate("e => e.getClientRects().length", reference.element_handle()) == 1
    expect(page.locator("#support-email")).to_have_attribute("href", "mailto:help@acme.example")
    server.mail_to(account.email, 1)
    expect(again).to_be_enabled(timeout=(COOLDOWN_SECONDS + 5) * 1000)
    time.sleep(0.5)  # past the server's cooldown too, measured from the attempt's record
    again.click()
    expect(page.locator("#email-sent-to")).to_have_text(account.email)
    shots.take(page, "sent-again")
    assert len(server.mail_to(account.email, 2)) == 2


def test_signing_in_lands_on_a_page_a_reload_does_not_resubmit(
    server: LiveServer,
    contexts: Callable[..., BrowserContext],
    make_account: Callable[..., Account],
    shots: Screenshots,
) -> None:
    """After signing in the address bar shows /signed-in with the person's own address;
    reloading it sends no second sign-in, and signing out leads back to sign-in."""
    account = make_account()
    page = contexts().new_page()
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.goto(f"{server.base_url}/login")
    page.locator("#email").fill(account.email)
    page.locator("#password").fill(ORIGINAL_PASSWORD)
    page.locator("#sign-in").click()
    expect(page).to_have_url(f"{server.base_url}/signed-in")
    expect(page.locator("#signed-in-as")).to_have_text(account.email)
    page.reload()
    expect(page.locator("#signed-in-as")).to_have_text(account.email)
    assert [urlpath(u) for u in posts] == ["/login"]
    shots.take(page, "signed-in")
    page.locator("#sign-out").click()
    expect(page).to_have_url(f"{server.base_url}/login")


def urlpath(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1].split("?")[0]


def test_the_emails_of_a_branded_service_name_it(
    server: LiveServer, make_account: Callable[..., Account], tmp_path: Path
) -> None:
    """Subject, sender and body name the brand; the support path is in both parts."""
    account = make_account(locale="fr")
    import httpx

    answer = httpx.post(
        f"{server.base_url}/api/recovery", json={"email": account.email}, timeout=30
    )
    assert answer.status_code == 202
    [message] = server.mail_to(account.email, 1)
    assert message["Subject"] == "Acme\u00a0: réinitialisez votre mot de passe"
    assert message["From"].addresses[0].display_name == "Acme"
    for part in ("plain", "html"):
        body = message.get_body((part,)).get_content()  # type: ignore[union-attr]
        assert "help@acme.example" in body and "https://acme.example/help" in body
        assert "(UTC)" in body  # a JSON request sends no time zone: UTC, said as such
