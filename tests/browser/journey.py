"""The five steps of a recovery, walked in a real browser, step by step.

`Journey` drives one Playwright page through the product's pages the way a
person does: sign-in page → "Forgot password?" → email form → the link from
the received email → a weak password (each reason next to its field) → a
mismatched confirmation → a good password → back to sign-in → signed in.
It can do it with the mouse or with the keyboard alone, check at every page
that nothing scrolls sideways, and screenshot every step. The texts it looks
for come from one table per language, so the French walk checks French pages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from playwright.sync_api import Locator, Page, expect

from api.accounts.policy import PasswordPolicy, PersonalData, Violation
from tests.browser.live import LiveServer, reset_link

if TYPE_CHECKING:
    from tests.browser.conftest import Account, Screenshots

# Weak on purpose: short, no special character, the person's first name, easy to guess.
WEAK_PASSWORD = "camille7"
# Strong for both profiles, unrelated to the account's personal data.
NEW_PASSWORD = "Velvet#Harbor-2958-Juniper"
MAX_TABS = 40

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "sign_in_title": "Sign in",
        "forgot": "Forgot password?",
        "recovery_title": "Forgot your password?",
        "email": "Email address",
        "password": "Password",
        "send": "Send me a link",
        "inbox_title": "Check your inbox",
        "reset_title": "Choose a new password",
        "new_password": "New password",
        "confirm": "Type the new password again",
        "change": "Change my password",
        "done_title": "Your password has been changed",
        "back_to_sign_in": "Sign in with your new password",
        "signed_in_title": "You are signed in",
        "sign_in_button": "Sign in",
    },
    "fr": {
        "sign_in_title": "Se connecter",
        "forgot": "Mot de passe oublié ?",
        "recovery_title": "Vous avez oublié votre mot de passe ?",
        "email": "Adresse e-mail",
        "password": "Mot de passe",
        "send": "M’envoyer un lien",
        "inbox_title": "Consultez votre boîte de réception",
        "reset_title": "Choisir un nouveau mot de passe",
        "new_password": "Nouveau mot de passe",
        "confirm": "Saisissez à nouveau le nouveau mot de passe",
        "change": "Changer mon mot de passe",
        "done_title": "Votre mot de passe a été modifié",
        "back_to_sign_in": "Se connecter avec le nouveau mot de passe",
        "signed_in_title": "Vous êtes connecté",
        "sign_in_button": "Se connecter",
    },
}


def expected_violations(password: str, confirmation: str, account: Account) -> list[Violation]:
    """What the policy refuses in this password, as the server computes it."""
    personal = PersonalData(name=account.name, email=account.email)
    return PasswordPolicy("classic").check(password, confirmation, personal)


@dataclass
class Journey:
    """One person's recovery in one browser page."""

    page: Page
    server: LiveServer
    account: Account
    shots: Screenshots
    lang: str = "en"
    keyboard: bool = False
    # On a phone: the screen's CSS width, which every page must fit.
    phone_width: int | None = None
    start_query: str = ""
    reference: str = ""
    visited: list[str] = field(default_factory=list)

    @property
    def text(self) -> dict[str, str]:
        return TEXT[self.lang]

    # -- what happens at every page ------------------------------------------------

    def arrived(self, step: str, title: str) -> None:
        """The page of `step` is shown (its heading), fits the screen, and is pictured."""
        expect(self.page.locator("h1")).to_have_text(title)
        expect(self.page.locator("html")).to_have_attribute("lang", self.lang)
        if self.phone_width is not None:
            assert_no_horizontal_scroll(self.page, step, self.phone_width)
        self.visited.append(self.page.url)
        self.shots.take(self.page, step)

    # -- ways of acting: the mouse, or the keyboard alone ---------------------------------

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

    def submit(self, button: Locator) -> None:
        if self.keyboard:
            # Enter in the last field submits the form, as a person would do it.
            self.page.keyboard.press("Enter")
        else:
            button.click()

    # -- the five steps ------------------------------------------------------------------

    def open_sign_in(self) -> None:
        self.page.goto(f"{self.server.base_url}/login{self.start_query}")
        self.arrived("sign-in", self.text["sign_in_title"])

    def ask_for_link(self) -> None:
        """Steps 1 and 2: "Forgot password?", then the email address."""
        self.follow(self.page.get_by_role("link", name=self.text["forgot"]))
        self.arrived("forgot-password", self.text["recovery_title"])
        self.type_into(self.page.get_by_label(self.text["email"]), self.account.email)
        self.submit(self.page.get_by_role("button", name=self.text["send"]))
        self.arrived("check-your-inbox", self.text["inbox_title"])
        reference = self.page.locator("#support-reference")
        expect(reference).to_be_visible()
        self.reference = reference.inner_text().strip()

    def open_link(self) -> str:
        """Step 3: the link from the email, opened in the browser; the link is returned."""
        message = self.server.mail_to(self.account.email)[-1]
        link = reset_link(message)
        assert link.startswith(f"{self.server.base_url}/recovery/reset?token="), link
        self.page.goto(link)
        self.arrived("new-password-form", self.text["reset_title"])
        # The rules are stated before anything is typed.
        expect(self.page.locator("#password-rules li").first).to_be_visible()
        return link

    def set_password(self, password: str, confirmation: str) -> None:
        self.type_into(self.page.get_by_label(self.text["new_password"], exact=True), password)
        self.type_into(self.page.get_by_label(self.text["confirm"], exact=True), confirmation)
        self.submit(self.page.get_by_role("button", name=self.text["change"]))

    def refuse_weak_password(self) -> None:
        """Step 4a: a weak password is refused: one message at the password field, and each
        broken rule marked on the checklist."""
        self.set_password(WEAK_PASSWORD, WEAK_PASSWORD)
        self.arrived("weak-password-refused", self.text["reset_title"])
        expected = expected_violations(WEAK_PASSWORD, WEAK_PASSWORD, self.account)
        codes = {v.code for v in expected}
        assert {"too_short", "missing_special", "contains_personal_data"} <= codes, codes
        assert_one_message_at(self.page, "password", field_message(expected, self.lang))
        assert_rules_marked(self.page, self.lang, codes)
        expect(self.page.locator("#password_confirm-error")).to_have_count(0)

    def refuse_mismatch(self) -> None:
        """Step 4b: a good password with a different confirmation is refused at the
        confirmation; the password stays in its field, the confirmation is to retype."""
        self.set_password(NEW_PASSWORD, NEW_PASSWORD + "!")
        self.arrived("confirmation-mismatch-refused", self.text["reset_title"])
        expected = expected_violations(NEW_PASSWORD, NEW_PASSWORD + "!", self.account)
        assert [v.code for v in expected] == ["confirmation_mismatch"]
        assert_one_message_at(self.page, "password_confirm", expected[0].message(self.lang))
        expect(self.page.locator("#password-error")).to_have_count(0)
        expect(self.page.locator("#password")).to_have_value(NEW_PASSWORD)
        expect(self.page.locator("#password_confirm")).to_have_value("")

    def choose_good_password(self) -> None:
        """Step 4c: a good password, typed twice, is accepted."""
        self.set_password(NEW_PASSWORD, NEW_PASSWORD)
        self.arrived("password-changed", self.text["done_title"])
        expect(self.page.locator("#support-reference")).to_have_text(self.reference)

    def sign_in(self) -> None:
        """Step 5: back to the sign-in page, and in with the new password."""
        self.follow(self.page.get_by_role("link", name=self.text["back_to_sign_in"]))
        self.arrived("back-to-sign-in", self.text["sign_in_title"])
        self.type_into(self.page.get_by_label(self.text["email"]), self.account.email)
        self.type_into(self.page.get_by_label(self.text["password"], exact=True), NEW_PASSWORD)
        self.submit(self.page.get_by_role("button", name=self.text["sign_in_button"]))
        self.arrived("signed-in", self.text["signed_in_title"])

    def walk(self) -> None:
        """All five steps, in order."""
        self.open_sign_in()
        self.ask_for_link()
        self.open_link()
        self.refuse_weak_password()
        self.refuse_mismatch()
        self.choose_good_password()
        self.sign_in()


# -- checks used at several steps ------------------------------------------------------


def field_message(violations: list[Violation], lang: str) -> str:
    """The one message the page shows at the password field for these violations."""
    mine = [v for v in violations if v.field == "password"]
    if len(mine) == 1:
        return mine[0].message(lang)
    if lang == "fr":
        return f"Ce mot de passe ne respecte pas {len(mine)} des règles ci-dessous."
    return f"This password does not meet {len(mine)} of the rules listed below."


def assert_rules_marked(page: Page, lang: str, codes: set[str]) -> None:
    """The checklist marks broken exactly the rules these violation codes break."""
    for rule in PasswordPolicy("classic").checklist(lang):
        if not rule.codes:
            continue
        item = page.locator(f"#rule-{rule.key}")
        if codes & set(rule.codes):
            expect(item).to_have_class("rule fail")
        else:
            expect(item).not_to_have_class("rule fail")


def assert_one_message_at(page: Page, field_id: str, message: str) -> None:
    """`field_id` has one message, in its own field group, and the field points to it."""
    block = page.locator(f"#{field_id}-error")
    expect(block).to_be_visible()
    expect(block).to_have_count(1)
    expect(block).to_contain_text(message)
    field_box = page.locator(f"#{field_id}")
    expect(field_box).to_have_attribute("aria-invalid", "true")
    described = (field_box.get_attribute("aria-describedby") or "").split()
    assert f"{field_id}-error" in described, described
    # "Next to": the reasons sit in the same field group as the input they concern.
    group = page.locator(".field", has=page.locator(f"#{field_id}"))
    expect(group.locator(f"#{field_id}-error")).to_have_count(1)


def assert_no_horizontal_scroll(page: Page, step: str, screen_width: int) -> None:
    """The page is laid out at the phone's width, is no wider, and no element sticks out.

    Without `<meta name="viewport">` a mobile browser lays a page out 980 px
    wide and shrinks it: it would "fit" while unreadable, so the layout width
    is checked first.
    """
    width = page.evaluate(
        "() => ({scroll: document.documentElement.scrollWidth, inner: window.innerWidth,"
        " sticking: [...document.querySelectorAll('body *')]"
        "   .filter(e => e.getClientRects().length)"
        "   .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)"
        "   .map(e => e.tagName + (e.id ? '#' + e.id : '')).slice(0, 5)})"
    )
    assert width["inner"] == screen_width, f"{step}: laid out {width['inner']} px wide"
    assert width["scroll"] <= width["inner"], f"{step}: scrolls sideways {width}"
    assert not width["sticking"], f"{step}: elements wider than the screen {width}"


def tab_to(page: Page, target: Locator) -> None:
    """Press Tab until `target` has the focus (a person moving through the page)."""
    handle = target.element_handle()
    assert handle is not None, "the element to reach is not on the page"
    for _ in range(MAX_TABS):
        if page.evaluate("e => document.activeElement === e", handle):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{MAX_TABS} presses of Tab never reached the element")
