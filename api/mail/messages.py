"""The two emails of the recovery flow, rendered in the attempt's language.

- `recovery_email`: the link to choose a new password (and, from version 2 of
  the flow, a one-time code to type instead), when it expires, and a "this
  wasn't me" link;
- `password_changed_email`: "your password was changed", with a "not you?
  contact support" line carrying the support reference;
- `email_changed_email`: to the old address, when the admin API gave the account
  a new one.

Each is a multipart/alternative message (plain text first, then HTML)
rendered from Jinja2 templates in `templates/email/`. HTML templates are
autoescaped; texts go through gettext with English message ids, French in
`locale/fr/LC_MESSAGES/mail.po`. No password ever appears in either (none is
passed in). Headers are built with `email.headerregistry`, so a name holding
line breaks, quotes or commas stays a display name and cannot add headers or
recipients.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from api import i18n
from engine.clock import SystemClock

TEMPLATE_DIR = Path(__file__).parent / "templates"
MAX_NAME_CHARS = 200

# Subjects are translated in Python (the templates translate the bodies).
RECOVERY_SUBJECT = "Reset your password"
PASSWORD_CHANGED_SUBJECT = "Your password was changed"
EMAIL_CHANGED_SUBJECT = "The email address of your account was changed"
SUBJECTS = (RECOVERY_SUBJECT, PASSWORD_CHANGED_SUBJECT, EMAIL_CHANGED_SUBJECT)

# Times are always shown in UTC and say so; only the date order follows the language.
TIME_FORMATS = {"en": "%Y-%m-%d %H:%M UTC", "fr": "%d/%m/%Y %H:%M UTC"}

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


@functools.cache
def _environment(locale: str) -> Environment:
    """One Jinja2 environment per language, with that language's gettext installed."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=select_autoescape(enabled_extensions=("html",), default=False),
        undefined=StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.install_gettext_translations(i18n.translations(locale), newstyle=True)  # type: ignore[attr-defined]
    return env


def _check_locale(locale: str) -> None:
    if locale not in i18n.SUPPORTED:
        raise ValueError(f"unsupported locale {locale!r}; expected one of {i18n.SUPPORTED}")


def safe_name(name: str) -> str:
    """A display name with control characters and line breaks turned into spaces, bounded."""
    cleaned = _CONTROL.sub(" ", unicodedata.normalize("NFC", str(name)))
    return " ".join(cleaned.split())[:MAX_NAME_CHARS]


def _recipient(to: str, name: str) -> Address:
    """Exactly one address, or ValueError; the name can never smuggle in another."""
    if not isinstance(to, str) or _CONTROL.search(to) or "," in to or ";" in to:
        raise ValueError("recipient must be exactly one email address")
    local, at, domain = to.strip().rpartition("@")
    if not at or not local or not domain:
        raise ValueError("recipient must be exactly one email address")
    try:
        if local.isascii():
            return Address(display_name=safe_name(name), addr_spec=to.strip())
        # Python's parser refuses a non-ASCII local part (`İda@example.com`), which
        # SMTPUTF8 (RFC 6531) allows: given in parts it is kept as typed, once checked
        # to hold nothing a mailer could read as a second address.
        if any(c.isspace() or c in '<>()[]\\"@' for c in local):
            raise ValueError("recipient must be exactly one email address")
        return Address(display_name=safe_name(name), username=local, domain=domain)
    except (ValueError, HeaderParseError, IndexError):
        raise ValueError("recipient must be exactly one email address") from None


def _sender_domain(mail_from: str) -> str:
    address = parseaddr(mail_from)[1]
    if "@" not in address or _CONTROL.search(mail_from):
        raise ValueError("mail_from must be one address, e.g. 'Support <no-reply@example.com>'")
    return address.rpartition("@")[2]


def format_time(when: datetime, locale: str) -> str:
    """`when` in UTC, labelled as such, in the language's date order."""
    if when.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return when.astimezone(UTC).strftime(TIME_FORMATS.get(locale, TIME_FORMATS["en"]))


def _render(kind: str, locale: str, context: dict[str, Any]) -> tuple[str, str]:
    env = _environment(locale)
    text = env.get_template(f"{kind}.txt").render(locale=locale, **context)
    html = env.get_template(f"{kind}.html").render(locale=locale, **context)
    return text, html


def _message(
    *,
    locale: str,
    subject: str,
    to: Address,
    mail_from: str,
    text: str,
    html: str,
    sent_at: datetime | None,
) -> EmailMessage:
    domain = _sender_domain(mail_from)
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = mail_from
    message["To"] = to
    message["Date"] = format_datetime((sent_at or SystemClock().now()).astimezone(UTC))
    # An explicit domain: make_msgid would otherwise ask DNS for this host's name.
    message["Message-ID"] = make_msgid(domain=domain)
    # RFC 3834: vacation responders should not answer this.
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    # After the body: setting content clears every Content-* header.
    message["Content-Language"] = locale
    return message


def recovery_email(
    *,
    locale: str,
    to: str,
    mail_from: str,
    link: str,
    cancel_link: str,
    expires_at: datetime,
    reference: str,
    name: str,
    sent_at: datetime | None = None,
    code: str | None = None,
    code_page: str | None = None,
) -> EmailMessage:
    """The email with the link to choose a new password (and, when given, the code that
    does the same typed where the person asked, or on `code_page` from another device),
    and a "this wasn't me" link."""
    _check_locale(locale)
    recipient = _recipient(to, name)
    text, html = _render(
        "recovery",
        locale,
        {
            "name": recipient.display_name,
            "link": link,
            "cancel_link": cancel_link,
            "expires": format_time(expires_at, locale),
            "reference": reference,
            "code": code,
            "code_page": code_page,
        },
    )
    return _message(
        locale=locale,
        subject=i18n.gettext(locale, RECOVERY_SUBJECT),
        to=recipient,
        mail_from=mail_from,
        text=text,
        html=html,
        sent_at=sent_at,
    )


def password_changed_email(
    *,
    locale: str,
    to: str,
    mail_from: str,
    changed_at: datetime,
    reference: str,
    name: str,
    recovery_page: str,
    sent_at: datetime | None = None,
) -> EmailMessage:
    """ "Your password was changed": when, and whom to contact if it was not you."""
    _check_locale(locale)
    recipient = _recipient(to, name)
    text, html = _render(
        "password_changed",
        locale,
        {
            "name": recipient.display_name,
            "changed": format_time(changed_at, locale),
            "reference": reference,
            "recovery_page": recovery_page,
        },
    )
    return _message(
        locale=locale,
        subject=i18n.gettext(locale, PASSWORD_CHANGED_SUBJECT),
        to=recipient,
        mail_from=mail_from,
        text=text,
        html=html,
        sent_at=sent_at,
    )


def email_changed_email(
    *,
    locale: str,
    to: str,
    mail_from: str,
    changed_at: datetime,
    name: str,
    recovery_page: str,
    sent_at: datetime | None = None,
) -> EmailMessage:
    """To the old address of an account whose address was changed (the admin API): when,
    and what to do if it was not expected. The new address is not in it."""
    _check_locale(locale)
    recipient = _recipient(to, name)
    text, html = _render(
        "email_changed",
        locale,
        {
            "name": recipient.display_name,
            "changed": format_time(changed_at, locale),
            "recovery_page": recovery_page,
        },
    )
    return _message(
        locale=locale,
        subject=i18n.gettext(locale, EMAIL_CHANGED_SUBJECT),
        to=recipient,
        mail_from=mail_from,
        text=text,
        html=html,
        sent_at=sent_at,
    )
