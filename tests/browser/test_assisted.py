""" "I can't access this email" in a real browser (Debian's Chromium): the request form, the
code sent to the new address, support's question and its answer form, and the owner's
"this wasn't me", in English and in French, with the mouse and with the keyboard alone,
and on two phones' screens.

Each test drives a live `recovery serve` whose mail goes to a loopback SMTP
server, reads the code and the links from the emails that arrived, acts as support
through the support API with a real key, and saves a screenshot of every step
under `test-output/browser/<test name>/`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Playwright, expect

from tests.browser.conftest import ACTION_TIMEOUT_MS, Account, Screenshots
from tests.browser.journey import assert_no_horizontal_scroll, tab_to
from tests.browser.live import LiveServer, message_text

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ContextFactory = Callable[..., BrowserContext]
PHONES = [("iPhone 13", "en"), ("Pixel 7", "fr")]
CODE = re.compile(r"^\s*(\d{6})\s*$", re.MULTILINE)
STATEMENT = "I left my job and the company closed my mailbox. I still sign in on my phone."

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "recovery_title": "Forgot your password?",
        "cant_access": "I can't access this email",
        "form_title": "I can't access this email",
        "email": "Email address of your account",
        "contact": "A new address where we can reach you",
        "name": "The name on your account",
        "birth_date": "Your date of birth (optional)",
        "statement": "What happened?",
        "send": "Send my request",
        "code_title": "Check the inbox of your new address",
        "code": "Code",
        "confirm": "Confirm",
        "confirmed_title": "Your request is with our support team",
        "answer_title": "Answer our support team",
        "answer": "Your answer",
        "send_answer": "Send my answer",
        "answered_title": "Your answer was sent",
        "cancel_title": "You did not ask for this?",
        "cancel": "Cancel the request",
        "cancelled_title": "The request has been cancelled",
        "email_error": "Enter the address of your account, like name@example.com.",
    },
    "fr": {
        "recovery_title": "Vous avez oublié votre mot de passe\u00a0?",
        "cant_access": "Je n’ai plus accès à cette adresse",
        "form_title": "Je n’ai plus accès à cette adresse",
        "email": "Adresse e-mail de votre compte",
        "contact": "Une nouvelle adresse où vous joindre",
        "name": "Le nom figurant sur votre compte",
        "birth_date": "Votre date de naissance (facultatif)",
        "statement": "Que s’est-il passé\u00a0?",
        "send": "Envoyer ma demande",
        "code_title": "Consultez la boîte de réception de votre nouvelle adresse",
        "code": "Code reçu",
        "confirm": "Confirmer",
        "confirmed_title": "Votre demande est entre les mains de notre équipe d’assistance",
        "answer_title": "Répondre à notre équipe d’assistance",
        "answer": "Votre réponse",
        "send_answer": "Envoyer ma réponse",
        "answered_title": "Votre réponse a été envoyée",
        "cancel_title": "Vous n’avez rien demandé\u00a0?",
        "cancel": "Annuler la demande",
        "cancelled_title": "La demande a été annulée",
        "email_error": "Saisissez l’adresse de votre compte, par exemple nom@exemple.com.",
    },
}


@pytest.fixture(scope="module")
def support_key(server: LiveServer) -> str:
    return server.create_support_key("assisted-browser-tests", "write")


@pytest.fixture
def new_context(browser: Browser) -> Iterator[ContextFactory]:
    made: list[BrowserContext] = []

    def make(**options: Any) -> BrowserContext:
        context = browser.new_context(**options)
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        made.append(context)
        return context

    yield make
    for context in made:
        context.close()


def _support(server: LiveServer, key: str, method: str, path: str, **kw: Any) -> Any:
    answer = httpx.request(
        method,
        f"{server.base_url}/api/support{path}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30.0,
        **kw,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def _case(server: LiveServer, key: str, reference: str) -> dict[str, Any]:
    [item] = _support(server, key, "GET", "/attempts", params={"reference": reference})["items"]
    return dict(_support(server, key, "GET", f"/attempts/{item['id']}"))


@dataclass
class Walk:
    """One person through the case's pages, with the mouse or the keyboard alone."""

    page: Page
    server: LiveServer
    account: Account
    shots: Screenshots
    lang: str = "en"
    keyboard: bool = False
    phone_width: int | None = None
    reference: str = ""

    @property
    def text(self) -> dict[str, str]:
        return TEXT[self.lang]

    @property
    def contact(self) -> str:
        return f"new-{self.account.email}"

    def arrived(self, step: str, title: str) -> None:
        expect(self.page.locator("h1")).to_have_text(title)
        expect(self.page.locator("html")).to_have_attribute("lang", self.lang)
        if self.phone_width is not None:
            assert_no_horizontal_scroll(self.page, step, self.phone_width)
        self.shots.take(self.page, step)

    def follow(self, link: Locator) -> None:
        if self.keyboard:
            tab_to(self.page, link)
            self.page.keyboard.press("Enter")
        else:
            link.click()

    def type_into(self, box: Locator, value: str) -> None:
        if self.keyboard:
            tab_to(self.page, box)
            self.page.keyboard.press("Control+A")
            self.page.keyboard.type(value)
        else:
            box.fill(value)

    def press(self, button: Locator) -> None:
        if self.keyboard:
            tab_to(self.page, button)
            self.page.keyboard.press("Enter")
        else:
            button.click()

    def open_the_form(self) -> None:
        query = "?lang=fr" if self.lang == "fr" else ""
        self.page.goto(f"{self.server.base_url}/recovery{query}")
        self.arrived("forgot-password", self.text["recovery_title"])
        self.follow(self.page.get_by_role("link", name=self.text["cant_access"]))
        self.arrived("request-form", self.text["form_title"])

    def ask(self) -> None:
        """A mistake first (the account's address left malformed), told next to its field;
        then the request goes through and the code page follows."""
        page = self.page
        self.type_into(page.get_by_label(self.text["email"]), "not-an-address")
        self.type_into(page.get_by_label(self.text["contact"]), self.contact)
        self.type_into(page.get_by_label(self.text["name"]), self.account.name)
        if not self.keyboard:
            page.get_by_label(self.text["birth_date"]).fill("1985-03-14")
        self.type_into(page.get_by_label(self.text["statement"]), STATEMENT)
        self.press(page.get_by_role("button", name=self.text["send"]))
        self.arrived("request-refused", self.text["form_title"])
        expect(page.locator("#email-error")).to_have_text(self.text["email_error"])
        expect(page.locator("#email")).to_have_attribute("aria-invalid", "true")
        # What was typed stays; only the address needs fixing.
        expect(page.locator("#statement")).to_have_value(STATEMENT)
        self.type_into(page.get_by_label(self.text["email"]), self.account.email)
        self.press(page.get_by_role("button", name=self.text["send"]))
        self.arrived("enter-the-code", self.text["code_title"])
        expect(page.locator("#contact_email")).to_have_value(self.contact)
        self.reference = page.locator("#support-reference").inner_text().strip()

    def confirm(self) -> None:
        message = self.server.mail_to(self.contact)[-1]
        found = CODE.search(message_text(message))
        assert found, message_text(message)
        self.type_into(self.page.get_by_label(self.text["code"], exact=True), found.group(1))
        self.press(self.page.get_by_role("button", name=self.text["confirm"]))
        self.arrived("request-confirmed", self.text["confirmed_title"])
        expect(self.page.locator("#support-reference")).to_have_text(self.reference)

    def answer(self, link: str, reply: str, question: str) -> None:
        self.page.goto(link)
        self.arrived("answer-form", self.text["answer_title"])
        assert "token" not in self.page.url
        expect(self.page.locator("#question")).to_have_text(question)
        self.type_into(self.page.get_by_label(self.text["answer"], exact=True), reply)
        self.press(self.page.get_by_role("button", name=self.text["send_answer"]))
        self.arrived("answer-sent", self.text["answered_title"])


def _link(server: LiveServer, address: str, kind: str, count: int) -> str:
    message = server.mail_to(address, count)[count - 1]
    found = re.search(
        rf"https?://\S+/assisted-recovery/{kind}\?token=[\w-]+&lang=\w+", message_text(message)
    )
    assert found, message_text(message)
    return found.group(0)


@pytest.mark.parametrize(
    ("lang", "keyboard"), [("en", False), ("fr", True)], ids=["en-mouse", "fr-keyboard"]
)
def test_a_person_asks_for_help_confirms_the_new_address_and_answers_a_question(
    server: LiveServer,
    support_key: str,
    new_context: ContextFactory,
    make_account: Callable[..., Account],
    shots: Screenshots,
    lang: str,
    keyboard: bool,
) -> None:
    """From "Forgot password?" to support's queue, then support's question answered on its
    form: in English with the mouse, in French with the keyboard alone."""
    account = make_account(locale=lang)
    context = new_context(locale="fr-FR" if lang == "fr" else "en-US")
    walk = Walk(context.new_page(), server, account, shots, lang=lang, keyboard=keyboard)
    walk.open_the_form()
    walk.ask()
    walk.confirm()
    case = _case(server, support_key, walk.reference)
    assert case["state"] == "in_review"
    assert case["flow_detail"]["matches"]["name"] == "match"
    question = "Which city did you last sign in from?"
    _support(
        server, support_key, "POST", f"/attempts/{case['id']}/events/request_info",
        json={"reason": question},
    )  # fmt: skip
    walk.answer(_link(server, walk.contact, "answer", 2), "Lyon, in May.", question)
    case = _case(server, support_key, walk.reference)
    assert case["state"] == "in_review"
    assert case["flow_detail"]["exchanges"][0]["answer"] == "Lyon, in May."
    # The account's address was told, in the account's language.
    [notice] = server.mail_to(account.email)
    assert str(notice["Content-Language"]) == lang


def test_the_owner_cancels_the_request_from_the_notice(
    server: LiveServer,
    support_key: str,
    new_context: ContextFactory,
    make_account: Callable[..., Account],
    shots: Screenshots,
) -> None:
    """The notice's "this wasn't me" opens a token-free page that asks; its button cancels."""
    account = make_account()
    walk = Walk(new_context().new_page(), server, account, shots)
    walk.open_the_form()
    walk.ask()
    walk.confirm()
    owner = new_context()  # another browser: the owner's
    page = owner.new_page()
    link = _link(server, account.email, "cancel", 1)
    page.goto(link)
    walk.page = page
    walk.arrived("cancel-asks", TEXT["en"]["cancel_title"])
    assert urlsplit_path(page.url) == "/assisted-recovery/cancel"
    cookies = [c for c in owner.cookies() if c["name"] == "assisted_cancel"]
    assert cookies and cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
    assert _case(server, support_key, walk.reference)["state"] == "in_review"
    page.get_by_role("button", name=TEXT["en"]["cancel"]).click()
    walk.arrived("cancelled", TEXT["en"]["cancelled_title"])
    assert _case(server, support_key, walk.reference)["state"] == "cancelled"


def urlsplit_path(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url).split("?", 1)[0]


@pytest.mark.parametrize(("device", "lang"), PHONES, ids=[d for d, _ in PHONES])
def test_the_case_pages_fit_a_phone_screen_without_sideways_scrolling(
    server: LiveServer,
    support_key: str,
    playwright: Playwright,
    new_context: ContextFactory,
    make_account: Callable[..., Account],
    shots: Screenshots,
    device: str,
    lang: str,
) -> None:
    descriptor = dict(playwright.devices[device])
    descriptor.pop("default_browser_type", None)
    account = make_account(locale=lang)
    context = new_context(**descriptor)
    width = descriptor["viewport"]["width"]
    walk = Walk(context.new_page(), server, account, shots, lang=lang, phone_width=width)
    walk.open_the_form()
    walk.ask()
    walk.confirm()
    case = _case(server, support_key, walk.reference)
    _support(
        server, support_key, "POST", f"/attempts/{case['id']}/events/request_info",
        json={"reason": "Which device do you use?"},
    )  # fmt: skip
    walk.answer(_link(server, walk.contact, "answer", 2), "A phone.", "Which device do you use?")
    walk.page.goto(_link(server, account.email, "cancel", 1))
    walk.arrived("cancel-asks", TEXT[lang]["cancel_title"])
    walk.page.get_by_role("button", name=TEXT[lang]["cancel"]).click()
    walk.arrived("cancelled", TEXT[lang]["cancelled_title"])
