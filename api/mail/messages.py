"""The two emails of the recovery flow, rendered in the attempt's language and the person's time.

- `recovery_email`: the link to choose a new password (and, from version 2 of
  the flow, a one-time code to type instead), until when it works (in the
  person's time zone), and the "this wasn't me" link;
- `password_changed_email`: "your password was changed", when, and the way
  back for a person who did not do it (a new password, then support);
- `email_changed_email`: to the old address, when the admin API gave the account
  a new one.

They speak for the brand (`api.brand.Sender`): the sender's display name in
the email's language, a subject that names the product, the brand at the top,
and one "if this wasn't you" path that ends at support when a support address
or page is configured (the same words and order in the HTML and text parts).
Times are shown in the browser's time zone recorded with the request, else in
UTC, and say which.

Each is a multipart/alternative message (plain text first, then HTML)
rendered from Jinja2 templates in `templates/`. HTML templates are
autoescaped; texts go through gettext with English message ids, French in
`locale/fr/LC_MESSAGES/mail.po`. No password ever appears in either (none is
passed in). Headers are built with `email.headerregistry`, so a name holding
line breaks, quotes or commas stays a display name and cannot add headers or
recipients. A configured logo in a format mail clients show (PNG, JPEG, GIF)
travels inside the message (`cid:`), never fetched from anywhere.

The dispatcher builds one message per email, so the headers every message of a
language shares (From, Subject, the parts' Content-Type, ...) are parsed once
and kept as header objects, which the message takes as they are, each folded
once per kind of policy (`_Folded`); the To, Date, Message-ID and multipart
Content-Type, this message's alone, are written without being parsed when
they fit on one line (`_Written`). The parts are assembled from them instead of through
`set_content`, which re-parses each header it writes. The result is the same
message, byte for byte (`tests/flows/test_emails.py` compares it with the one
`set_content` builds).
"""

from __future__ import annotations

import binascii
import functools
import re
import secrets
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy as email_policy
from email import quoprimime
from email.contentmanager import _encode_base64
from email.errors import HeaderParseError
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale
from babel.dates import format_date, get_timezone_location
from babel.dates import format_time as babel_time
from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    pass_eval_context,
    select_autoescape,
)
from jinja2.nodes import EvalContext
from markupsafe import Markup

from api import i18n
from api.brand import Sender
from engine.clock import SystemClock

TEMPLATE_DIR = Path(__file__).parent / "templates"
MAX_NAME_CHARS = 200

# Subjects are translated in Python (the templates translate the bodies); each names the
# product first, so a person sees who writes before opening it.
RECOVERY_SUBJECT = "{brand}: reset your password"
PASSWORD_CHANGED_SUBJECT = "{brand}: your password was changed"
EMAIL_CHANGED_SUBJECT = "The email address of your account was changed"
SUBJECTS = (RECOVERY_SUBJECT, PASSWORD_CHANGED_SUBJECT, EMAIL_CHANGED_SUBJECT)

# A moment as the emails say it: the date and time in the person's language and zone.
MOMENT = "{date} at {time} ({zone})"
ZONE_OF_CITY = "{city} time"
UTC_LABEL = "UTC"
TIME_TEXTS = (MOMENT, ZONE_OF_CITY)
MAX_ZONE_CHARS = 64
# Logo formats mail clients show inline (SVG and WebP are not, widely).
INLINE_LOGO_TYPES = ("image/png", "image/jpeg", "image/gif")
LOGO_CID = "brand-logo"
# A multipart boundary in the stdlib's form: 15 "=", 19 random digits, "==".
BOUNDARY_EDGE = "=" * 15
BOUNDARY_RANGE = 10**19

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
        # The templates ship with the code: no file is looked at again once compiled
        # (checking each one's modification time cost ~4% of the dispatcher's CPU).
        auto_reload=False,
    )
    translations = i18n.translations(locale)
    env.install_gettext_translations(translations, newstyle=True)  # type: ignore[attr-defined]
    # `_` and `gettext` one call deep (the i18n extension's own pass through three
    # `Context.call`s per text, a third of a render); `ngettext` stays the extension's.
    translate = _translate(translations.gettext)
    env.globals.update(_=translate, gettext=translate)
    return env


def _translate(gettext: Callable[[str], str]) -> Callable[..., str]:
    """Jinja2's new-style gettext: the text translated, marked safe where the template
    autoescapes (so the values filled in are escaped), and always %-formatted."""

    @pass_eval_context
    def translate(eval_ctx: EvalContext, string: str, **variables: Any) -> str:
        text = Markup(gettext(string)) if eval_ctx.autoescape else gettext(string)
        return text % variables  # type: ignore[no-any-return]

    return translate


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


@functools.cache
def _address_of(address: str) -> str:
    """The bare address in a configured sender address (parsed once per address)."""
    return parseaddr(address)[1]


def _sender(mail_from: str | Sender) -> Sender:
    sender = mail_from if isinstance(mail_from, Sender) else Sender.plain(mail_from)
    address = _address_of(sender.address)
    if "@" not in address or _CONTROL.search(sender.address):
        raise ValueError("mail_from must be one address, e.g. 'Support <no-reply@example.com>'")
    return sender


def zone_named(time_zone: object) -> ZoneInfo | None:
    """The IANA zone a browser reported (`Europe/Paris`), or None when it names none."""
    if not isinstance(time_zone, str) or not 0 < len(time_zone) <= MAX_ZONE_CHARS:
        return None
    if time_zone.startswith("/") or ".." in time_zone or _CONTROL.search(time_zone):
        return None
    try:
        return ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


@functools.cache
def _babel_locale(locale: str) -> Locale:
    """Babel's data for a language, parsed once (each formatting call given the code
    would parse it again)."""
    return Locale.parse(locale)


def _zone_label(local: datetime, zone: ZoneInfo | None, locale: str) -> str:
    """ "Paris time" for a city's zone; the UTC offset for the others; "UTC" for UTC."""
    if zone is None or zone.key in ("UTC", "Etc/UTC", "Etc/GMT", "GMT"):
        return UTC_LABEL
    if "/" in zone.key and not zone.key.startswith("Etc/"):
        city = get_timezone_location(zone, locale=_babel_locale(locale), return_city=True)
        return i18n.gettext(locale, ZONE_OF_CITY, city=city)
    offset = local.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "+" if minutes >= 0 else "\u2212"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def format_time(when: datetime, locale: str, time_zone: str | None = None) -> str:
    """`when` as a person reads it: date and time in their language and zone, the zone
    named ("Tuesday, December 1, 2026 at 8:32 AM (Paris time)"); UTC, said as such,
    when no usable zone is known."""
    if when.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    zone = zone_named(time_zone)
    local = when.astimezone(zone or UTC)
    return i18n.gettext(
        locale,
        MOMENT,
        date=format_date(local, "full", locale=_babel_locale(locale)),
        time=babel_time(local, "short", locale=_babel_locale(locale)),
        zone=_zone_label(local, zone, locale),
    )


def _render(kind: str, locale: str, context: dict[str, Any]) -> tuple[str, str]:
    env = _environment(locale)
    text = env.get_template(f"{kind}.txt").render(locale=locale, **context)
    html = env.get_template(f"{kind}.html").render(locale=locale, **context)
    return text, html


def _inline_logo(sender: Sender) -> tuple[bytes, str] | None:
    """The logo's bytes and media type when it can travel inside the message."""
    brand = sender.brand
    if brand.logo_file is None or brand.logo_type not in INLINE_LOGO_TYPES:
        return None
    try:
        return brand.logo_file.read_bytes(), brand.logo_type
    except OSError:
        return None


def _context(sender: Sender, locale: str, logo: bool) -> dict[str, Any]:
    """What every email's layout and support paragraph need."""
    brand = sender.brand
    return {
        "brand": brand.name,
        "logo_cid": LOGO_CID if logo else None,
        "support_email": brand.support_email,
        "support_url": brand.support_url,
    }


class _Registry(HeaderRegistry):
    """The stdlib's header classes, each made once: `HeaderRegistry` builds a new class
    each time it is asked for one, and a message asks for one with every header it is
    given (that alone was 9% of the dispatcher's event-loop time)."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


# The default policy (what `EmailMessage()` uses), with the registry above.
_POLICY = email_policy.default.clone(header_factory=_Registry())


class _Folded(str):
    """A shared header object that works out its folded form once per kind of policy.

    A message stores any value with a `name` as it is given and, when written, asks
    it to `fold` itself; a header object refolds its whole parse tree every time, for
    every message that holds it. This one answers for the header it wraps (its text,
    its attributes) and keeps each folded form, which depends only on the policy's
    line length, line ending and whether it may write UTF-8.
    """

    name: str

    def __new__(cls, header: BaseHeader) -> _Folded:
        folded = super().__new__(cls, header)
        folded.name = header.name
        folded._header = header  # type: ignore[attr-defined]
        folded._folds = {}  # type: ignore[attr-defined]
        return folded

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return getattr(self._header, attribute)  # type: ignore[attr-defined]

    def fold(self, *, policy: Any) -> str:
        key = (policy.max_line_length, policy.linesep, policy.utf8)
        folds: dict[tuple[Any, ...], str] = self._folds  # type: ignore[attr-defined]
        if key not in folds:
            folds[key] = self._header.fold(policy=policy)  # type: ignore[attr-defined]
        return folds[key]


class _Written(str):
    """A header of this message alone whose folded form is known without parsing it:
    `fold_as(policy)` gives it (the same as the header object would). The attributes
    given as `known` are answered as they are; the header object's others
    (`datetime`, `params`, ...) are parsed only if asked for."""

    name: str

    def __new__(cls, name: str, value: str, fold_as: Any, **known: Any) -> _Written:
        written = super().__new__(cls, value)
        written.name = name
        written._fold_as = fold_as  # type: ignore[attr-defined]
        written._known = known  # type: ignore[attr-defined]
        return written

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        known: dict[str, Any] = self._known  # type: ignore[attr-defined]
        if attribute in known:
            return known[attribute]
        return getattr(_POLICY.header_factory(self.name, str(self)), attribute)

    def fold(self, *, policy: Any) -> str:
        return self._fold_as(self, policy)  # type: ignore[attr-defined,no-any-return]


# The longest header line a policy writes unfolded.
_UNFOLDED_MAX = 78


def _unfolded(header: _Written, policy: Any) -> str:
    return f"{header.name}: {header}{policy.linesep}"


def _one_line(name: str, value: str, **known: Any) -> _Written | None:
    """`value` as a header that is written on one line as it is, if it can be (ASCII,
    short enough); else None, and the message parses the value as usual."""
    if not value.isascii() or len(name) + 2 + len(value) > _UNFOLDED_MAX:
        return None
    return _Written(name, value, _unfolded, **known)


def _to_header(to: Address) -> _Written | Address:
    """The To header: written as it is when it fits on one line, with the one address
    it names known (what the transports read to address the envelope); else the
    address, which the message parses and folds (or encodes) as usual."""
    return _one_line("To", str(to), addresses=(to,), defects=()) or to


@functools.cache
def _multipart_fold(linesep: str, max_line_length: int | None, utf8: bool) -> tuple[str, str]:
    """How the Content-Type of a multipart/alternative message folds, around its
    boundary: every boundary has the same shape and length, so it folds the same."""
    sample = f"{BOUNDARY_EDGE}{0:019d}{BOUNDARY_EDGE[:2]}"
    header = _POLICY.header_factory("Content-Type", f'multipart/alternative; boundary="{sample}"')
    policy = _POLICY.clone(linesep=linesep, max_line_length=max_line_length, utf8=utf8)
    before, _, after = header.fold(policy=policy).partition(sample)
    return before, after


def _multipart_type(boundary: str) -> _Written:
    def fold_as(_text: str, policy: Any) -> str:
        before, after = _multipart_fold(policy.linesep, policy.max_line_length, policy.utf8)
        return f"{before}{boundary}{after}"

    return _Written("Content-Type", f'multipart/alternative; boundary="{boundary}"', fold_as)


@functools.cache
def _header(name: str, value: str) -> _Folded:
    """A header parsed once and shared: a message stores a header object as it is given.
    Parsed as a message parses what it is given (a value with a line break is refused)."""
    return _Folded(_POLICY.header_store_parse(name, value)[1])


@functools.cache
def _from_header(name: str, address: str) -> _Folded:
    """The From header for the sender's display name (in one language) and address."""
    local_part, _, domain = _address_of(address).rpartition("@")
    return _Folded(
        _POLICY.header_factory(
            "From", Address(display_name=safe_name(name), username=local_part, domain=domain)
        )
    )


# How many lines of a text `set_content` encodes to choose between quoted-printable and base64.
SNIFFED_LINES = 10


def encode_text(text: str, policy: Any) -> tuple[str, str]:
    """The transfer encoding and body `set_content` gives `text` in utf-8 under `policy`
    (`email.contentmanager._encode_text`), the quoted-printable body encoded once.

    The standard library encodes the first `SNIFFED_LINES` lines to choose, then the
    whole text again. Quoted-printable encodes each line on its own, so the choice's
    lines, and the rest encoded after them, are the whole text's encoding.
    """
    lines = text.encode("utf-8").splitlines()
    if max((len(line) for line in lines), default=0) <= policy.max_line_length:
        body = b"\n".join(lines) + b"\n"
        try:
            return "7bit", body.decode("ascii")
        except UnicodeDecodeError:
            pass
        if policy.cte_type == "8bit":
            return "8bit", body.decode("ascii", "surrogateescape")
    linesep = policy.linesep.encode("ascii")
    sniffed = linesep.join(lines[:SNIFFED_LINES]) + linesep
    quoted = quoprimime.body_encode(sniffed.decode("latin-1"), policy.max_line_length)
    if len(quoted) > len(binascii.b2a_base64(sniffed)):
        return "base64", _encode_base64(linesep.join(lines) + linesep, policy.max_line_length)
    if len(lines) > SNIFFED_LINES:
        rest = (b"\n".join(lines[SNIFFED_LINES:]) + b"\n").decode("latin-1")
        quoted += quoprimime.body_encode(rest, policy.max_line_length)
    return "quoted-printable", quoted


def _text_part(text: str, subtype: str) -> MIMEPart:
    """One text/<subtype> part, utf-8, in the transfer encoding `set_content` would choose."""
    cte, payload = encode_text(text, _POLICY)
    # As `add_alternative` builds them: the part it adds is a message of its own (its
    # MIME-Version, and that of a logo added to it).
    part = (EmailMessage if subtype == "html" else MIMEPart)(policy=_POLICY)
    part["Content-Type"] = _header("Content-Type", f'text/{subtype}; charset="utf-8"')
    part["Content-Transfer-Encoding"] = _header("Content-Transfer-Encoding", cte)
    if subtype == "html":
        part["MIME-Version"] = _header("MIME-Version", "1.0")
    part.set_payload(payload)
    return part


def _message(
    *,
    locale: str,
    subject: str,
    to: Address,
    sender: Sender,
    text: str,
    html: str,
    sent_at: datetime | None,
    logo: tuple[bytes, str] | None = None,
) -> EmailMessage:
    domain = _address_of(sender.address).rpartition("@")[2]
    message = EmailMessage(policy=_POLICY)
    message["Subject"] = _header("Subject", subject)
    message["From"] = _from_header(sender.name(locale), sender.address)
    message["To"] = _to_header(to)
    date = format_datetime((sent_at or SystemClock().now()).astimezone(UTC))
    message["Date"] = _one_line("Date", date) or date
    # An explicit domain: make_msgid would otherwise ask DNS for this host's name.
    message_id = make_msgid(domain=domain)
    message["Message-ID"] = _one_line("Message-ID", message_id) or message_id
    # RFC 3834: vacation responders should not answer this.
    message["Auto-Submitted"] = _header("Auto-Submitted", "auto-generated")
    message["MIME-Version"] = _header("MIME-Version", "1.0")
    # The boundary is chosen here, as unguessable as a token, so no text can hold it: the
    # generator would otherwise compile a pattern per message to search the parts for its own.
    boundary = f"{BOUNDARY_EDGE}{secrets.randbelow(BOUNDARY_RANGE):019d}{BOUNDARY_EDGE[:2]}"
    message["Content-Type"] = _multipart_type(boundary)
    html_part = _text_part(html, "html")
    message.set_payload([_text_part(text, "plain"), html_part])
    if logo is not None:
        # multipart/alternative[text, multipart/related[html, logo]]: the HTML shows it by cid.
        maintype, _, subtype = logo[1].partition("/")
        html_part.add_related(logo[0], maintype, subtype, cid=f"<{LOGO_CID}>")
    message["Content-Language"] = _header("Content-Language", locale)
    return message


def compose(
    kind: str,
    subject: str,
    *,
    locale: str,
    to: str,
    name: str,
    mail_from: str | Sender,
    sent_at: datetime | None,
    context: dict[str, Any],
) -> EmailMessage:
    """One email of `kind` (its `.txt` and `.html` templates) for the brand: the layout's
    brand, logo and support paragraph, the greeting's name, `context`, and `subject`
    translated with the brand's name (`{brand}`) filled in."""
    _check_locale(locale)
    sender = _sender(mail_from)
    recipient = _recipient(to, name)
    logo = _inline_logo(sender)
    text, html = _render(
        kind,
        locale,
        {**_context(sender, locale, logo is not None), "name": recipient.display_name, **context},
    )
    return _message(
        locale=locale,
        subject=i18n.gettext(locale, subject, brand=sender.brand.name),
        to=recipient,
        sender=sender,
        text=text,
        html=html,
        sent_at=sent_at,
        logo=logo,
    )


def recovery_email(
    *,
    locale: str,
    to: str,
    mail_from: str | Sender,
    link: str,
    cancel_link: str,
    expires_at: datetime,
    reference: str,
    name: str,
    sent_at: datetime | None = None,
    code: str | None = None,
    code_page: str | None = None,
    time_zone: str | None = None,
) -> EmailMessage:
    """The email with the link to choose a new password (and, when given, the code that
    does the same typed where the person asked, or on `code_page` from another device),
    and a "this wasn't me" link."""
    return compose(
        "recovery",
        RECOVERY_SUBJECT,
        locale=locale,
        to=to,
        name=name,
        mail_from=mail_from,
        sent_at=sent_at,
        context={
            "link": link,
            "cancel_link": cancel_link,
            "expires": format_time(expires_at, locale, time_zone),
            "reference": reference,
            "code": code,
            "code_page": code_page,
        },
    )


def password_changed_email(
    *,
    locale: str,
    to: str,
    mail_from: str | Sender,
    changed_at: datetime,
    reference: str,
    name: str,
    recovery_page: str,
    sent_at: datetime | None = None,
    time_zone: str | None = None,
) -> EmailMessage:
    """ "Your password was changed": when, and the way back if it was not you."""
    return compose(
        "password_changed",
        PASSWORD_CHANGED_SUBJECT,
        locale=locale,
        to=to,
        name=name,
        mail_from=mail_from,
        sent_at=sent_at,
        context={
            "changed": format_time(changed_at, locale, time_zone),
            "reference": reference,
            "recovery_page": recovery_page,
        },
    )


def email_changed_email(
    *,
    locale: str,
    to: str,
    mail_from: str | Sender,
    changed_at: datetime,
    name: str,
    recovery_page: str,
    sent_at: datetime | None = None,
) -> EmailMessage:
    """To the old address of an account whose address was changed (the admin API): when,
    and what to do if it was not expected. The new address is not in it."""
    return compose(
        "email_changed",
        EMAIL_CHANGED_SUBJECT,
        locale=locale,
        to=to,
        name=name,
        mail_from=mail_from,
        sent_at=sent_at,
        context={"changed": format_time(changed_at, locale), "recovery_page": recovery_page},
    )
