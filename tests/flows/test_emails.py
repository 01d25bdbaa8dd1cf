"""The recovery and "password changed" emails: content, language, headers, and the catalog."""

from __future__ import annotations

import email.policy
import re
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import jinja2.ext
import jinja2.meta
import pytest
from babel.messages.pofile import read_po

from api import i18n
from api.brand import Sender
from api.mail import messages as emails
from api.mail.messages import password_changed_email, recovery_email
from api.mail.transports import envelope
from api.settings import Settings

# A 1x1 PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def branded(**overrides: object) -> Sender:
    """The sender of a service with a brand and both support contacts."""
    settings: dict[str, object] = {
        "public_base_url": "https://accounts.acme.example",
        "mail_from": "no-reply@acme.example",
        "brand_name": "Acme",
        "support_email": "help@acme.example",
        "support_url": "https://support.acme.example/help",
        **overrides,
    }
    return Sender.from_settings(Settings(**settings))  # type: ignore[arg-type]


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
    """Both parts hold the link, the expiry (UTC said as such without a zone), the "wasn't
    me" link, the reference."""
    text, html = parts(build_recovery())
    for body in (text, html):
        assert LINK in body
        assert CANCEL in body
        assert "Monday, November 30, 2026 at 3:05\u202fPM (UTC)" in body
        assert "ABCD-EFGH" in body
    assert re.search(rf'<a href="{re.escape(CANCEL)}"[^>]*>This wasn\'t me</a>', html)
    assert "Hello Jane Doe," in text


def test_expiry_is_shown_in_utc_when_no_zone_is_known_whatever_the_zone_given() -> None:
    """An expiry given in another zone is shown in UTC, and says so, when the person's
    zone is unknown (or not a real zone)."""
    paris = timezone(timedelta(hours=1))
    for zone in (None, "Mars/Olympus", "../../etc/passwd", ""):
        text, _ = parts(
            build_recovery(expires_at=datetime(2026, 11, 30, 16, 5, tzinfo=paris), time_zone=zone)
        )
        assert "November 30, 2026 at 3:05\u202fPM (UTC)" in text, zone


@pytest.mark.parametrize(
    ("locale", "zone", "expected"),
    [
        ("en", "Europe/Paris", "until Monday, November 30, 2026 at 4:05\u202fPM (Paris time)"),
        (
            "en",
            "America/New_York",
            "until Monday, November 30, 2026 at 10:05\u202fAM (New York time)",
        ),
        ("fr", "Europe/Paris", "jusqu’au lundi 30 novembre 2026 à 16:05 (heure de Paris)"),
        ("fr", "Asia/Tokyo", "jusqu’au mardi 1 décembre 2026 à 00:05 (heure de Tokyo)"),
        ("en", "Etc/GMT+5", "until Monday, November 30, 2026 at 10:05\u202fAM (UTC\u221205:00)"),
    ],
)
def test_expiry_is_shown_in_the_persons_language_and_time_zone(
    locale: str, zone: str, expected: str
) -> None:
    """With the browser's zone, the expiry is that zone's local date and time, in the
    person's language, and names the zone; in the HTML part and the text part alike."""
    text, html = parts(build_recovery(locale=locale, time_zone=zone))
    assert expected in text
    assert expected in html.replace("&#39;", "'")


def test_headers_name_one_recipient_with_date_and_message_id() -> None:
    """To is the given address, From the sender; Date and a Message-ID on the sender's domain."""
    sent = datetime(2026, 11, 30, 14, 5, tzinfo=UTC)
    message = build_recovery(sent_at=sent)
    assert message["To"].addresses[0].addr_spec == "Jane@Example.com"
    assert message["Subject"] == "accounts.example.test: reset your password"
    assert message["From"].addresses[0].display_name == "Account recovery"
    assert message["Date"].datetime == sent
    assert re.fullmatch(r"<[^<>@\s]+@accounts\.example\.test>", message["Message-ID"])
    assert message["Content-Language"] == "en"
    assert message["Auto-Submitted"] == "auto-generated"
    assert envelope(message) == ("no-reply@accounts.example.test", "Jane@Example.com")


def test_french_recovery_email_is_in_french() -> None:
    """A French attempt gets a French subject and body, with the date in French order."""
    message = build_recovery(locale="fr")
    text, html = parts(message)
    assert message["Subject"] == "accounts.example.test\u00a0: réinitialisez votre mot de passe"
    assert message["Content-Language"] == "fr"
    assert "Bonjour Jane Doe," in text
    assert "Ce lien fonctionne jusqu’au lundi 30 novembre 2026 à 15:05 (UTC)" in text
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
    assert "\nHello,\n" in text.replace("\r\n", "\n")


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


def test_password_changed_email_says_when_and_the_way_back() -> None:
    """The notification names the time, then "not you?": a new password first (the
    recovery page), then the support reference; in both parts."""
    message = build_changed(time_zone="Europe/Paris")
    text, html = parts(message)
    assert message["Subject"] == "accounts.example.test: your password was changed"
    for body in (text, html):
        assert "November 30, 2026 at 4:05\u202fPM (Paris time)" in body
        assert "Not you?" in body
        assert "ABCD-EFGH" in body
        assert "https://accounts.example.test/recovery" in body
        assert body.index("Not you?") < body.index("/recovery") < body.index("ABCD-EFGH")


def test_password_changed_email_in_french() -> None:
    """The French notification is in French, support named "l’assistance"."""
    message = build_changed(locale="fr", mail_from=branded())
    text, _ = parts(message)
    assert message["Subject"] == "Acme\u00a0: votre mot de passe a été modifié"
    assert "a été modifié le lundi 30 novembre 2026 à 15:05 (UTC)" in text
    assert "Contactez l’assistance de Acme" in text
    assert "support" not in text.replace("support.acme.example", "")


def test_every_mail_text_has_a_french_translation() -> None:
    """Each message id in the email templates and subjects has a French text with its fields."""
    msgids: set[str] = set(emails.SUBJECTS) | set(emails.TIME_TEXTS)
    for template in sorted(emails.TEMPLATE_DIR.iterdir()):
        if template.suffix not in (".html", ".txt"):
            continue
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


def test_no_email_template_loads_anything_from_elsewhere(tmp_path: Path) -> None:
    """The HTML emails load no remote image, script or stylesheet: a logo, when there is
    one, travels inside the message and is shown by its cid."""
    _, recovery_html = parts(build_recovery())
    _, changed_html = parts(build_changed())
    for html in (recovery_html, changed_html):
        assert not re.search(r"<(img|script|link|iframe)\b", html)
        assert "src=" not in html
    logo = tmp_path / "logo.png"
    logo.write_bytes(PNG)
    message = build_recovery(mail_from=branded(brand_logo=logo))
    _, html = parts(message)
    assert re.findall(r'src="([^"]*)"', html) == ["cid:brand-logo"]
    assert not re.search(r"<(script|link|iframe)\b", html)
    [image] = [p for p in message.walk() if p.get_content_type() == "image/png"]
    assert image["Content-ID"] == "<brand-logo>"
    assert image.get_content() == PNG


def test_an_svg_logo_stays_out_of_the_emails(tmp_path: Path) -> None:
    """Mail clients do not show SVG: with an SVG logo the emails show the brand's name."""
    logo = tmp_path / "logo.svg"
    logo.write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    message = build_recovery(mail_from=branded(brand_logo=logo))
    _, html = parts(message)
    assert "<img" not in html and ">Acme<" in html
    assert [p.get_content_type() for p in message.walk()].count("image/svg+xml") == 0


# -- the brand and the way to support ------------------------------------------------------


def test_emails_speak_for_the_brand_in_subject_sender_and_body() -> None:
    """With RECOVERY_BRAND_NAME the subject names the product first, the sender is the
    brand (per-language names win), and both parts carry it at the top."""
    sender = branded(mail_sender_name_fr="Assistance Acme")
    english = build_recovery(mail_from=sender)
    french = build_recovery(mail_from=sender, locale="fr")
    assert english["Subject"] == "Acme: reset your password"
    assert french["Subject"] == "Acme\u00a0: réinitialisez votre mot de passe"
    assert english["From"].addresses[0].display_name == "Acme"
    assert french["From"].addresses[0].display_name == "Assistance Acme"
    assert english["From"].addresses[0].addr_spec == "no-reply@acme.example"
    text, html = parts(english)
    assert text.lstrip().startswith("Acme\n") or text.lstrip().startswith("Acme\r\n")
    assert ">Acme</p>" in html
    assert "your Acme account" in text and "your Acme account" in html


def test_without_a_brand_the_emails_name_the_public_host_never_account_recovery() -> None:
    """Unset, the brand is the host people reach the service at."""
    sender = Sender.from_settings(Settings(public_base_url="https://login.example.org"))
    message = build_recovery(mail_from=sender)
    assert message["Subject"] == "login.example.org: reset your password"
    assert message["From"].addresses[0].display_name == "login.example.org"
    assert "Account recovery" not in message.as_string()


@pytest.mark.parametrize("kind", ["recovery", "changed"])
def test_the_if_this_wasnt_you_path_reaches_support_in_both_parts(kind: str) -> None:
    """One path, in the same order in the HTML and text parts: the self-service step (the
    "wasn't me" link, or a new password), then support's address and page with the
    reference; no "ignore this email" beside a "this wasn't me" link."""
    build = build_recovery if kind == "recovery" else build_changed
    step = CANCEL if kind == "recovery" else "https://accounts.example.test/recovery"
    text, html = parts(build(mail_from=branded()))
    for body in (text, html):
        assert "help@acme.example" in body
        assert "https://support.acme.example/help" in body
        assert "ignore" not in body.lower()
        order = [body.index(step), body.index("ABCD-EFGH"), body.index("help@acme.example")]
        assert order == sorted(order), body
    assert 'href="mailto:help@acme.example"' in html
    assert 'href="https://support.acme.example/help"' in html
    assert "white-space:nowrap" in html.split("ABCD-EFGH")[0].rsplit("<strong", 1)[1]


def test_without_support_settings_the_emails_promise_no_support() -> None:
    """No support address or page: the reference stays, "contact support" does not."""
    for message in (build_recovery(), build_changed()):
        text, html = parts(message)
        for body in (text, html):
            assert "ABCD-EFGH" in body
            assert "support" not in body.lower()


def _through_set_content(built: EmailMessage) -> EmailMessage:
    """The same email as the stdlib's `set_content`/`add_alternative` build it (how
    `api.mail.messages` built every message before it kept its headers parsed once)."""
    text_part, html_part = built.get_payload()  # type: ignore[misc]
    html = html_part.get_body(("html",)) if html_part.is_multipart() else html_part
    message = EmailMessage()
    for name in ("Subject", "From", "To", "Date", "Message-ID", "Auto-Submitted"):
        message[name] = str(built[name])
    message.set_content(text_part.get_content())
    message.add_alternative(html.get_content(), subtype="html")
    if html_part.is_multipart():
        image = next(p for p in html_part.iter_parts() if p.get_content_maintype() == "image")
        message.get_payload()[1].add_related(  # type: ignore[index]
            image.get_content(),
            image.get_content_maintype(),
            image.get_content_subtype(),
            cid=image["Content-ID"],
        )
    message["Content-Language"] = built["Content-Language"]
    return message


def _wire(message: EmailMessage) -> bytes:
    """The bytes an SMTP server receives (and those of an SMTPUTF8 server, and of a
    file), boundaries made equal."""
    data = b"".join(
        message.as_bytes(policy=policy)
        for policy in (email.policy.SMTP, email.policy.SMTPUTF8, email.policy.default)
    )
    return re.sub(rb"={15}\d+==", b"BOUNDARY", data)


@pytest.mark.parametrize("locale", ["en", "fr"])
@pytest.mark.parametrize(
    "name",
    [
        "Jane Doe",
        'Jéanne, "Doe" <x@evil.example>',
        'Doe, "Jane" (x) <x@evil.example>',
        "A display name long enough that the To header folds " * 2,
        "İda\r\nBcc: x@evil.example",
        "",
    ],
)
def test_the_messages_built_from_kept_headers_are_the_ones_set_content_builds(
    locale: str, name: str, tmp_path: Path
) -> None:
    """Headers parsed once and shared, parts assembled from them: byte for byte the
    message the stdlib builds, in both languages, with hostile names, with a logo."""
    logo = tmp_path / "logo.png"
    logo.write_bytes(PNG)
    for sender in (MAIL_FROM, branded(), branded(brand_logo=logo)):
        address = sender if isinstance(sender, str) else sender.address
        for message, to in (
            (
                build_recovery(locale=locale, name=name, mail_from=sender, code="123456"),
                "Jane@Example.com",
            ),
            (
                build_changed(locale=locale, to="İda@example.com", mail_from=sender, name=name),
                "İda@example.com",
            ),
        ):
            assert _wire(message) == _wire(_through_set_content(message))
            # The shared header objects are not changed by the message they went into.
            assert _wire(message) == _wire(_through_set_content(message))
            # Headers written without parsing still address the envelope.
            assert envelope(message) == (parseaddr(address)[1], to)


def test_a_message_id_too_long_for_one_line_is_folded_as_the_stdlib_folds_it() -> None:
    """A sender domain so long that the Message-ID cannot be written on one line as it is:
    the header is parsed and folded as usual, and the message is still the stdlib's."""
    domain = "mail." + "very-long-label." * 5 + "example"
    message = build_recovery(mail_from=f"Account recovery <no-reply@{domain}>")
    assert len(f"Message-ID: {message['Message-ID']}") > 78
    assert message["Message-ID"].endswith(f"@{domain}>")
    assert _wire(message) == _wire(_through_set_content(message))


def test_each_message_has_its_own_unguessable_boundary_that_no_part_holds() -> None:
    """The boundary is chosen when the message is built (not searched for by the
    generator): a fresh random one each time, found in no part's text."""
    messages = [build_recovery(name=f"={'=' * 14}{'1' * 19}==") for _ in range(20)]
    boundaries = {m.get_boundary() for m in messages}
    assert len(boundaries) == len(messages)
    for message in messages:
        boundary = message.get_boundary()
        assert boundary is not None and re.fullmatch(r"={15}\d{19}==", boundary)
        for part in message.iter_parts():
            assert boundary not in str(part.get_content())
        assert len(message.get_payload()) == 2  # type: ignore[arg-type]


@pytest.mark.parametrize("subject", ["Hi\r\nBcc: x@evil.example", "Hi\nBcc: x@evil.example"])
def test_a_subject_with_a_line_break_is_refused_as_before(subject: str) -> None:
    """The kept headers are parsed as a message parses what it is given: a subject
    holding a line break cannot add a header."""
    with pytest.raises(ValueError, match="linefeed or carriage return"):
        emails.compose(
            "password_changed",
            subject,
            locale="en",
            to="jane@example.com",
            name="Jane",
            mail_from=MAIL_FROM,
            sent_at=EXPIRES,
            context={"changed": "now", "reference": "R", "recovery_page": "https://x.example"},
        )


@pytest.mark.parametrize("locale", ["en", "fr"])
def test_every_template_renders_as_with_the_i18n_extensions_own_gettext(locale: str) -> None:
    """The mail templates' `_` is one call deep, not the extension's: every template, in
    both languages, with values holding markup and `%`, renders exactly as before."""
    stock = jinja2.Environment(
        loader=jinja2.FileSystemLoader(emails.TEMPLATE_DIR),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        undefined=jinja2.StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    stock.install_gettext_translations(i18n.translations(locale), newstyle=True)  # type: ignore[attr-defined]
    every = sorted(p.name for p in emails.TEMPLATE_DIR.iterdir())
    variables: set[str] = set()
    for name in every:
        source = stock.loader.get_source(stock, name)[0]  # type: ignore[union-attr]
        variables |= jinja2.meta.find_undeclared_variables(stock.parse(source))
    hostile = '<b>"50%"</b> & <i>%(x)s</i>'
    context = {**dict.fromkeys(variables, hostile), "logo_cid": None, "locale": locale}
    names = [name for name in every if not name.startswith("_")]
    assert len(names) == 18
    for name in names:
        ours = emails._environment(locale).get_template(name).render(**context)
        assert ours == stock.get_template(name).render(**context), name
        assert "&lt;b&gt;" in ours if name.endswith(".html") else "<b>" in ours
