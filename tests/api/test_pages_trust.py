# ruff: noqa: F811  (the fixtures `site` and `make_site` are imported from test_pages)
"""Pages a person trusts (issue 16), through their forms like a browser would.

The brand and the support contact on every page, the sign-in that ends in a
redirect, forms that say what is missing, the first field focused, the new
password kept when only its confirmation was wrong, the inbox page that echoes
the address and offers "send again", the logo served by the service itself, and
the passphrase suggestion's word lists, which always give a password the policy
accepts (both profiles) without ever containing the account's personal data.
"""

from __future__ import annotations

import math
import re
import secrets
from pathlib import Path

import pytest

from api.accounts.policy import PasswordPolicy, PersonalData
from api.web.pages import PASSPHRASE_WORDS, avoided_words, word_list
from tests.api.test_pages import (
    EMAIL,
    NEW_PASSWORD,
    OLD_PASSWORD,
    Site,
    SiteFactory,
    doc,
    field_message,
    make_site,  # noqa: F401  (the fixture)
    site,  # noqa: F401  (the fixture)
    sqlite_only,
)

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
SUPPORT = {"support_email": "help@acme.example", "support_url": "https://acme.example/help"}
# A sample of suggestions per list and profile: enough to meet the rare word, cheap enough.
SAMPLES = 150


def suggestion(words: list[str]) -> str:
    """What pages.js builds: random words and one digit as its own word, space-separated."""
    parts = [secrets.choice(words) for _ in range(PASSPHRASE_WORDS)]
    parts.insert(secrets.randbelow(PASSPHRASE_WORDS + 1), str(secrets.randbelow(10)))
    return " ".join(parts)


# -- the brand and support -------------------------------------------------------------------


@sqlite_only
def test_without_settings_the_pages_name_the_host_never_account_recovery(site: Site) -> None:
    """The sign-in page's wordmark and title name the public host; no page says "Account
    recovery", and none promises a support it cannot name."""
    for path in ("/login", "/recovery", "/recovery/reset", "/signed-in"):
        response = site.client.get(path)
        assert "Account recovery" not in response.text, path
        assert "Récupération de compte" not in response.text, path
    login = doc(site.client.get("/login"))
    assert login.by_id("brand").text == "testserver.local"
    assert login.all("title")[0].text == "Sign in – testserver.local"
    inbox = site.submit("/recovery", {"email": EMAIL})
    assert "contact support" not in inbox.text.lower()
    assert not doc(inbox).has_id("support-contact")


@sqlite_only
def test_the_brand_name_logo_and_support_contact_appear_on_the_pages(
    make_site: SiteFactory,
    tmp_path: Path,
) -> None:
    """With the settings, every page carries the brand (its logo, served by the service at
    /brand/logo), and the pages that end a step say how to reach support."""
    logo = tmp_path / "acme.png"
    logo.write_bytes(PNG)
    site = make_site(brand_name="Acme", brand_logo=logo, **SUPPORT)
    login = doc(site.client.get("/login?lang=fr"))
    [image] = login.by_id("brand").children
    assert (image.tag, image.attrs["src"], image.attrs["alt"]) == ("img", "/brand/logo", "Acme")
    assert login.all("title")[0].text == "Se connecter – Acme"
    served = site.client.get("/brand/logo")
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/png"
    assert served.content == PNG
    inbox = doc(site.submit("/recovery", {"email": EMAIL}))
    contact = inbox.by_id("support-contact")
    assert inbox.by_id("support-email").attrs["href"] == "mailto:help@acme.example"
    assert inbox.by_id("support-url").attrs["href"] == "https://acme.example/help"
    assert "Contact support" in contact.text
    dead = doc(site.client.get("/recovery/reset?token=" + "A" * 43))
    assert dead.has_id("support-contact")
    french = doc(site.submit("/recovery?lang=fr", {"email": EMAIL}, form_page="/recovery?lang=fr"))
    assert "Contacter l’assistance" in french.by_id("support-contact").text


@sqlite_only
def test_no_logo_is_a_404(site: Site) -> None:
    """Without RECOVERY_BRAND_LOGO there is nothing at /brand/logo."""
    assert site.client.get("/brand/logo").status_code == 404


def test_bad_brand_settings_fail_at_start_naming_the_variable(tmp_path: Path) -> None:
    """A logo that is not an image file, a support address that is two, a support page
    that is not a URL, a name on two lines: each refused, naming the variable."""
    from api.settings import SettingsError, settings_from_env

    text = tmp_path / "logo.txt"
    text.write_text("not an image")
    cases = {
        "RECOVERY_BRAND_LOGO": {"brand_logo": text},
        "RECOVERY_SUPPORT_EMAIL": {"support_email": "a@example.com, b@example.com"},
        "RECOVERY_SUPPORT_URL": {"support_url": "javascript:alert(1)"},
        "RECOVERY_BRAND_NAME": {"brand_name": "Acme\r\nBcc: x@example.com"},
    }
    for variable, overrides in cases.items():
        with pytest.raises(SettingsError, match=variable):
            settings_from_env(**overrides)


# -- sign-in ---------------------------------------------------------------------------------


def test_signing_in_redirects_and_the_signed_in_page_is_a_get(site: Site) -> None:
    """A successful sign-in answers 303 to /signed-in, which shows the person's own
    address; reloading it signs nobody in again; without a session it leads to sign-in."""
    before = site.services.engine.db
    answer = site.submit(
        "/login", {"email": EMAIL, "password": OLD_PASSWORD}, follow_redirects=False
    )
    assert (answer.status_code, answer.headers["location"]) == (303, "/signed-in")
    first = doc(site.client.get("/signed-in"))
    assert first.h1 == "You are signed in"
    assert first.by_id("signed-in-as").text == EMAIL
    again = site.client.get("/signed-in")
    assert again.status_code == 200
    assert before is site.services.engine.db
    site.client.cookies.clear()
    gone = site.client.get("/signed-in", follow_redirects=False)
    assert (gone.status_code, gone.headers["location"]) == (303, "/login")


@sqlite_only
def test_an_empty_sign_in_form_says_what_is_missing(site: Site) -> None:
    """Nothing typed is not "incorrect": each empty field gets its own message."""
    empty = doc(site.submit("/login", {"email": "", "password": ""}))
    assert field_message(empty.by_id("email-error")) == "Enter your email address."
    assert field_message(empty.by_id("password-error")) == "Enter your password."
    assert "incorrect" not in empty.html
    only_password = doc(site.submit("/login", {"email": EMAIL, "password": ""}))
    assert not only_password.has_id("email-error")
    assert only_password.by_id("email").attrs["value"] == EMAIL


@sqlite_only
def test_an_empty_recovery_form_asks_for_the_address(site: Site) -> None:
    """An empty "Forgot password?" field says to enter the address, records nothing."""
    page = doc(site.submit("/recovery", {"email": "  "}))
    assert field_message(page.by_id("email-error")) == "Enter your email address."
    assert site.attempts() == []


@sqlite_only
def test_the_first_field_of_each_form_is_focused_and_an_error_summary_first(site: Site) -> None:
    """On arrival the first field has the focus; after an error, the summary has it."""
    for path, first in (("/login", "email"), ("/recovery", "email")):
        page = doc(site.client.get(path))
        focused = [n.attrs.get("id") for n in page.all() if "autofocus" in n.attrs]
        assert focused == [first], path
    site.client.get(site.emailed_link())
    form = doc(site.client.get("/recovery/reset"))
    assert [n.attrs.get("id") for n in form.all() if "autofocus" in n.attrs] == ["password"]
    refused = doc(site.submit("/recovery/reset", {"password": "a", "password_confirm": "a"}))
    assert [n.attrs.get("id") for n in refused.all() if "autofocus" in n.attrs] == ["error-summary"]


# -- the new password --------------------------------------------------------------------


def test_the_password_is_kept_when_only_the_confirmation_was_wrong(site: Site) -> None:
    """A good password with a mistyped confirmation comes back in its field (the person
    retypes the confirmation alone); the confirmation field comes back empty."""
    site.client.get(site.emailed_link())
    refused = site.submit(
        "/recovery/reset", {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD + "!"}
    )
    assert refused.status_code == 422
    page = doc(refused)
    assert page.by_id("password").attrs["value"] == NEW_PASSWORD
    assert "value" not in page.by_id("password_confirm").attrs
    assert not page.has_id("password-error")
    assert field_message(page.by_id("password_confirm-error")) == "The two passwords do not match."
    marks = {
        li.attrs["id"]: li.attrs["class"].split()[-1]
        for li in page.all("li")
        if li.attrs.get("id", "").startswith("rule-")
    }
    assert marks.pop("rule-match") == "fail"
    # The history is checked only once every other rule, the confirmation too, has passed.
    assert marks.pop("rule-history") == "unknown"
    assert set(marks.values()) == {"pass"}, marks


@sqlite_only
def test_the_form_offers_the_suggestion_and_toggle_only_to_the_script(site: Site) -> None:
    """The suggestion and the show/hide toggle are hidden until pages.js shows them (a
    page without the script has no dead buttons); the form names the word list of its
    language and how many words a suggestion takes."""
    site.client.get(site.emailed_link())
    for lang in ("en", "fr"):
        page = doc(site.client.get(f"/recovery/reset?lang={lang}"))
        box = page.by_id("suggestion-box")
        assert "hidden" in box.attrs and "hidden" in page.by_id("show-password").attrs
        assert box.attrs["data-words"] == f"/static/words/{lang}.txt"
        assert box.attrs["data-word-count"] == str(PASSPHRASE_WORDS)
        served = site.client.get(box.attrs["data-words"])
        assert served.status_code == 200
        lines = [w for w in served.text.splitlines() if w and not w.startswith("#")]
        assert tuple(lines) == word_list(lang)


# -- the inbox page --------------------------------------------------------------------------


@sqlite_only
def test_the_inbox_page_echoes_the_address_and_offers_send_again(
    make_site: SiteFactory,
) -> None:
    """The page repeats the address as typed, says how long the link works in words, and
    its "send again" form re-posts that address once the cooldown has passed."""
    site = make_site(resend_cooldown_seconds=60)
    typed = "Jane.Doe@Example.com"
    page = doc(site.submit("/recovery", {"email": typed}))
    assert page.by_id("email-sent-to").text == typed
    assert "The link works for 1 hour, and only once." in page.html
    again = page.by_id("send-again")
    assert again.attrs["data-wait"] == "60"
    form = next(f for f in page.all("form") if any(n is again for n in f.walk()))
    hidden = {n.attrs["name"]: n.attrs.get("value") for n in form.walk() if n.tag == "input"}
    assert hidden["email"] == typed
    assert "60 seconds" in page.by_id("send-again-wait").text
    # Inside the cooldown the page is the same, bar the reference: nothing tells it apart.
    second = site.submit("/recovery", {"email": typed})
    refs = re.findall(r'id="support-reference" class="code">([^<]+)<', second.text)
    assert doc(second).h1 == "Check your inbox" and refs


# -- the passphrase suggestion -----------------------------------------------------------


@pytest.mark.parametrize("profile", ["classic", "nist"])
@pytest.mark.parametrize("lang", ["en", "fr"])
def test_suggestions_from_the_word_lists_always_pass_the_policy(lang: str, profile: str) -> None:
    """Passphrases of the suggestion's shape (five words of the page's list, one digit,
    spaces), the account's personal words left out, pass every rule of both profiles."""
    personal = PersonalData(name="Tom Martin", email="tom.martin@example.com")
    avoid = set(avoided_words(lang, personal))
    words = [w for n, w in enumerate(word_list(lang)) if n not in avoid]
    assert avoid, "the sample account's name is in some words, which must be left out"
    assert any("tom" in word_list(lang)[n] for n in avoid)
    policy = PasswordPolicy(profile)  # type: ignore[arg-type]
    for _ in range(SAMPLES):
        passphrase = suggestion(words)
        assert policy.check(passphrase, passphrase, personal) == [], passphrase


@pytest.mark.parametrize("lang", ["en", "fr"])
def test_the_word_lists_are_long_and_give_over_seventy_bits(lang: str) -> None:
    """Each list holds 7,775 or more distinct lower-case words; five of them and a digit
    at one of six places give more than 70 bits of entropy, as the page states."""
    words = word_list(lang)
    assert len(words) >= 7775 and len(set(words)) == len(words)
    assert all(re.fullmatch(r"[a-z-]+", w) for w in words)
    bits = PASSPHRASE_WORDS * math.log2(len(words)) + math.log2(10) + math.log2(6)
    assert bits > 70
