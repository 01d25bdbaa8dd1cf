"""The emails of support-handled recovery: content, language, what each may and may not say."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

from api import i18n
from api.mail import assisted as mails
from api.mail.messages import format_time

MAIL_FROM = "Account recovery <no-reply@accounts.example.test>"
WHEN = datetime(2026, 12, 4, 9, 30, tzinfo=UTC)
CANCEL = "https://accounts.example.test/assisted-recovery/cancel?token=Tok3n-abc_DEF&lang=fr"


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())  # type: ignore[attr-defined]


def all_kinds(locale: str) -> list[EmailMessage]:
    return [
        mails.code_email(
            locale=locale,
            to="new@mail.example",
            mail_from=MAIL_FROM,
            code="042917",
            expires_at=WHEN,
            confirm_page="https://accounts.example.test/assisted-recovery/confirm",
            reference="ABCD-EFGH",
        ),
        mails.notice_email(
            locale=locale,
            to="Jane.Doe@Example.com",
            mail_from=MAIL_FROM,
            name="Jane Doe",
            stage=mails.APPROVED,
            new_address="n***w@m***l.example",
            requested_at=WHEN,
            change_at=WHEN,
            cancel_link=CANCEL,
            reference="ABCD-EFGH",
        ),
        mails.info_email(
            locale=locale,
            to="new@mail.example",
            mail_from=MAIL_FROM,
            question="Which city? <b>bold</b>",
            answer_link="https://accounts.example.test/assisted-recovery/answer?token=T0k3n_x",
            reference="ABCD-EFGH",
        ),
        mails.grant_email(
            locale=locale,
            to="new@mail.example",
            mail_from=MAIL_FROM,
            link="https://accounts.example.test/recovery/reset?token=T0k3n_x",
            expires_at=WHEN,
            reference="ABCD-EFGH",
        ),
        mails.closed_email(
            locale=locale,
            to="new@mail.example",
            mail_from=MAIL_FROM,
            reference="ABCD-EFGH",
            recovery_page="https://accounts.example.test/recovery",
        ),
        mails.moved_email(
            locale=locale,
            to="Jane.Doe@Example.com",
            mail_from=MAIL_FROM,
            name="Jane Doe",
            new_address="n***w@m***l.example",
            changed_at=WHEN,
            reference="ABCD-EFGH",
        ),
    ]


def test_the_contact_address_is_never_greeted_by_a_name_and_the_owner_is() -> None:
    """The contact address may not be the owner's: its emails carry no name. The account's
    address gets its owner's name, and only ever the new address masked."""
    for message in all_kinds("en"):
        text, html = parts(message)
        to_contact = "new@mail.example" in str(message["To"])
        assert ("Jane Doe" in text) is not to_contact, message["Subject"]
        assert "new@mail.example" not in text + html or to_contact
        assert message["Content-Language"] == "en"
        assert "ABCD-EFGH" in text


def test_the_approved_notice_says_when_the_change_happens_and_how_to_cancel() -> None:
    notice = all_kinds("en")[1]
    text, html = parts(notice)
    assert notice["Subject"] == "Your account will move to a new address"
    assert f"On {format_time(WHEN, 'en')}, a link to choose a new password" in text
    assert CANCEL in text and CANCEL.replace("&", "&amp;") in html
    with pytest.raises(ValueError):
        mails.notice_email(
            locale="en",
            to="a@example.com",
            mail_from=MAIL_FROM,
            name="A",
            stage=mails.APPROVED,
            new_address="x",
            requested_at=WHEN,
            change_at=None,
            cancel_link=CANCEL,
            reference="R",
        )


def test_every_email_is_in_french_for_a_french_case() -> None:
    subjects = [m["Subject"] for m in all_kinds("fr")]
    assert subjects == [
        "Votre code de confirmation",
        "Votre compte va passer à une nouvelle adresse",
        "Nous avons besoin de précisions sur votre demande",
        "Choisir un nouveau mot de passe",
        "Nous n’avons pas pu vérifier votre demande",
        "L’adresse de votre compte a été modifiée",
    ]
    for message in all_kinds("fr"):
        text, _html = parts(message)
        assert message["Content-Language"] == "fr"
        assert "Bonjour" in text
    grant_text, _ = parts(all_kinds("fr")[3])
    assert format_time(WHEN, "fr") in grant_text


def test_every_subject_has_a_french_text() -> None:
    for subject in mails.SUBJECTS:
        assert i18n.gettext("fr", subject) != subject, subject


def test_supports_question_is_escaped_in_html_and_loads_nothing_from_elsewhere() -> None:
    for message in all_kinds("en"):
        _text, html = parts(message)
        assert not re.search(r"<(img|script|link|iframe)\b", html)
        assert "src=" not in html
    _text, html = parts(all_kinds("en")[2])
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold</b>" not in html


def test_a_code_email_holds_the_code_on_a_line_of_its_own() -> None:
    text, html = parts(all_kinds("en")[0])
    assert re.search(r"^042917$", text, re.MULTILINE)
    assert ">042917<" in html
