"""The recovery and "password changed" emails: content, language, headers, and the catalog."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from typing import Any

import jinja2.ext
import pytest
from babel.messages.pofile import read_po

from api import i18n
from api.mail import messages as emails
from api.mail.messages import password_changed_email, recovery_email
from api.mail.transports import envelope

MAIL_FROM = "Account recovery <no-reply@accounts.example.test>"
EXPIRES = datetime(2026, 11, 30, 15, 5, tzinfo=UTC)
LINK = "https://accounts.example.test/recovery/reset?token=Tok3n-abc_DEF"
CANCEL = "https://accounts.example.test/recovery/cancel?token=Tok3n-abc_DEF"
PO_FILE = i18n.LOCALE_DIR / "fr" / "LC_MESSAGES" / "mail.po"


def build_recovery(**overrides: object) -> EmailMessage:
    args: dict[str, object] = {
        "locale": "en",
        "to": "Jane@Example.com",
        "mail_from": MAIL_FROM,
        "link": LINK,
        "cancel_link": CANCEL,
        "expires_at": EXPIRES,
        "reference": "ABCD-EFGH",
        "name": "Jane Doe",
    }
    args.update(overrides)
    return recovery_email(**args)  # type: ignore[arg-type]


def build_changed(**overrides: object) -> EmailMessage:
    args: dict[str, object] = {
        "locale": "en",
        "to": "jane@example.com",
        "mail_from": MAIL_FROM,
        "changed_at": EXPIRES,
        "reference": "ABCD-EFGH",
        "name": "Jane Doe",
        "recovery_page": "https://accounts.example.test/recovery",
    }
    args.update(overrides)
    return password_changed_email(**args)  # type: ignore[arg-type]


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def test_recovery_email_is_text_and_html_alternatives() -> None:
    """The message is multipart/alternative: a plain text part, then an HTML part."""
    message = build_recovery()
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]


def test_recovery_email_carries_link_expiry_cancel_and_reference() -> None:
    """Both parts hold the link, the expiry in labelled UTC, the "wasn't me" link, the reference."""
    text, html = parts(build_recovery())
    for body in (text, html):
        assert LINK in body
        assert CANCEL in body
        assert "2026-11-30 15:05 UTC" in body
        assert "ABCD-EFGH" in body
    assert f'<a href="{CANCEL}">This wasn\'t me</a>' in html
    assert "Hello Jane Doe," in text


def test_expiry_is_shown_in_utc_whatever_the_zone_given() -> None:
    """An expiry given in another zone is converted to UTC before it is shown."""
    paris = timezone(timedelta(hours=1))
    text, _ = parts(build_recovery(expires_at=datetime(2026, 11, 30, 16, 5, tzinfo=paris)))
    assert "2026-11-30 15:05 UTC" in text


def test_headers_name_one_recipient_with_date_and_message_id() -> None:
    """To is the given address, From the sender; Date and a Message-ID on the sender's domain."""
    sent = datetime(2026, 11, 30, 14, 5, tzinfo=UTC)
    message = build_recovery(sent_at=sent)
    assert message["To"].addresses[0].addr_spec == "Jane@Example.com"
    assert message["Subject"] == "Reset your password"
    assert message["Date"].datetime == sent
    assert re.fullmatch(r"<[^<>@\s]+@accounts\.example\.test>", message["Message-ID"])
    assert message["Content-Language"] == "en"
    assert message["Auto-Submitted"] == "auto-generated"
    assert envelope(message) == ("no-reply@accounts.example.test", "Jane@Example.com")


def test_french_recovery_email_is_in_french() -> None:
    """A French attempt gets a French subject and body, with the date in French order."""
    message = build_recovery(locale="fr")
    text, html = parts(message)
    assert message["Subject"] == "Réinitialiser votre mot de passe"
    assert message["Content-Language"] == "fr"
    assert "Bonjour Jane Doe," in text
    assert "Ce lien expire le 30/11/2026 15:05 UTC" in text
    assert "Ce n’était pas moi" in html
    assert '<html lang="fr">' in html
    assert "password" not in text.replace(LINK, "").replace(CANCEL, "")


def test_name_cannot_inject_headers_or_recipients() -> None:
    """CR/LF, Bcc: and commas in a name stay inside one quoted display name."""
    message = build_recovery(name="Eve\r\nBcc: evil@attacker.test, x@y.test")
    assert message["Bcc"] is None
    assert envelope(message)[1] == "Jane@Example.com"
    assert [a.addr_spec for a in message["To"].addresses] == ["Jane@Example.com"]
    raw = message.as_bytes()
    assert b"\r\nBcc:" not in raw and b"\nBcc:" not in raw


def test_html_escapes_the_name() -> None:
    """A name holding markup is shown as text in the HTML part."""
    _, html = parts(build_recovery(name='<script>alert("x")</script>'))
    assert "<script>" not in html
    assert "&lt;script&gt;" in html


def test_empty_name_gets_a_plain_greeting() -> None:
    """Without a usable name the greeting is just "Hello,"."""
    text, _ = parts(build_recovery(name="\r\n"))
    assert text.startswith("Hello,\n")


@pytest.mark.parametrize(
    "to",
    ["a@example.test, b@example.test", "a@example.test\r\nBcc: b@x.test", "nobody", "a@b;c@d"],
)
def test_recipient_must_be_exactly_one_address(to: str) -> None:
    """Anything but one address as recipient is a clear error, not a message."""
    with pytest.raises(ValueError, match="exactly one email address"):
        build_recovery(to=to)


def test_bad_locale_and_naive_times_are_refused() -> None:
    """An unsupported language or a time without a zone is a clear error."""
    with pytest.raises(ValueError, match="unsupported locale"):
        build_recovery(locale="de")
    with pytest.raises(ValueError, match="timezone-aware"):
        build_recovery(expires_at=datetime(2026, 11, 30, 15, 5))


def test_password_changed_email_says_when_and_whom_to_contact() -> None:
    """The notification names the time (UTC), the support reference and the recovery page."""
    message = build_changed()
    text, html = parts(message)
    assert message["Subject"] == "Your password was changed"
    for body in (text, html):
        assert "2026-11-30 15:05 UTC" in body
        assert "Not you? Contact support" in body
        assert "ABCD-EFGH" in body
        assert "https://accounts.example.test/recovery" in body


def test_password_changed_email_in_french() -> None:
    """The French notification is in French."""
    message = build_changed(locale="fr")
    text, _ = parts(message)
    assert message["Subject"] == "Votre mot de passe a été modifié"
    assert "a été modifié le 30/11/2026 15:05 UTC" in text
    assert "Contactez le support" in text


def test_every_mail_text_has_a_french_translation() -> None:
    """Each message id in the email templates and subjects has a French text with its fields."""
    msgids: set[str] = set(emails.SUBJECTS)
    for template in sorted(emails.TEMPLATE_DIR.iterdir()):
        with template.open("rb") as handle:
            for _line, _func, message, _comments in jinja2.ext.babel_extract(
                handle, ("_", "gettext"), (), {"trimmed": "true"}
            ):
                # A call with keyword fields comes back as (msgid, None).
                msgid = message if isinstance(message, str) else message[0]
                assert isinstance(msgid, str)
                msgids.add(msgid)
    # The catalogs of the folder are merged (a flow's emails may keep theirs apart).
    catalog: dict[str, Any] = {}
    for path in sorted(PO_FILE.parent.glob("*.po")):
        with path.open("rb") as handle:
            catalog.update({m.id: m for m in read_po(handle, locale="fr") if m.id})
    assert len(msgids) >= 15
    for msgid in sorted(msgids):
        entry = catalog.get(msgid)
        assert entry is not None and entry.string, f"no French text for {msgid!r}"
        assert set(re.findall(r"%\(\w+\)s", msgid)) == set(
            re.findall(r"%\(\w+\)s", str(entry.string))
        ), f"placeholders differ for {msgid!r}"
        assert i18n.translations("fr").gettext(msgid) == entry.string


def test_no_email_template_loads_anything_from_elsewhere() -> None:
    """The HTML emails load no remote image, script or stylesheet."""
    _, recovery_html = parts(build_recovery())
    _, changed_html = parts(build_changed())
    for html in (recovery_html, changed_html):
        assert not re.search(r"<(img|script|link|iframe)\b", html)
        assert "src=" not in html
