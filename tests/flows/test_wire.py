"""A message's bytes written by `api.mail.wire` are the stdlib generator's, byte for byte.

Every email the service builds (each kind, both languages, hostile names, with
and without a logo), messages the stdlib builds itself (8-bit bodies, bodies
with any line endings, attachments), and the shapes left to the generator, for
each policy a transport writes with.
"""

from __future__ import annotations

import email.policy
import io
from email.contentmanager import _encode_text as stdlib_encode_text
from email.generator import BytesGenerator
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import Policy
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from api.mail.messages import email_changed_email, encode_text
from api.mail.wire import message_bytes
from tests.flows.test_emails import EXPIRES, MAIL_FROM, PNG, branded, build_changed, build_recovery

POLICIES = {
    "smtp": email.policy.SMTP,
    "smtputf8": email.policy.SMTPUTF8,
    "default": email.policy.default,
    "smtp-7bit": email.policy.SMTP.clone(cte_type="7bit"),
    "smtputf8-7bit": email.policy.SMTPUTF8.clone(cte_type="7bit"),
    "compat32": email.policy.compat32,
}


def generated(message: Message, policy: Policy) -> bytes:
    """What aiosmtplib and `as_bytes` send: the stdlib's generator."""
    out = io.BytesIO()
    BytesGenerator(out, policy=policy).flatten(message)
    return out.getvalue()


def assert_as_generated(message: Message) -> None:
    for name, policy in POLICIES.items():
        expected = generated(message, policy)
        assert message_bytes(message, policy) == expected, name
        # Writing it changed nothing: a second time gives the same bytes.
        assert message_bytes(message, policy) == expected, name


def service_emails(locale: str, name: str, logo: Path) -> list[EmailMessage]:
    emails = []
    for sender in (MAIL_FROM, branded(), branded(brand_logo=logo)):
        for to in ("Jane@Example.com", "İda@example.com"):
            person: dict[str, object] = {
                "locale": locale,
                "to": to,
                "mail_from": sender,
                "name": name,
            }
            emails += [
                build_recovery(
                    **person,
                    code="123456",
                    code_page="https://accounts.example.test/recovery/code",
                    time_zone="Europe/Paris",
                ),
                build_changed(**person),
                email_changed_email(
                    **person,  # type: ignore[arg-type]
                    changed_at=EXPIRES,
                    recovery_page="https://accounts.example.test/recovery",
                ),
            ]
    return emails


@pytest.mark.parametrize("locale", ["en", "fr"])
@pytest.mark.parametrize(
    "name",
    ["Jane Doe", 'Jéanne, "Doe" <x@evil.example>', "İda\r\nBcc: x@evil.example", "Zoë " * 30],
)
def test_every_email_the_service_builds_is_written_as_the_generator_writes_it(
    locale: str, name: str, tmp_path: Path
) -> None:
    logo = tmp_path / "logo.png"
    logo.write_bytes(PNG)
    emails = service_emails(locale, name, logo)
    assert len(emails) == 18
    for message in emails:
        assert_as_generated(message)


def stdlib_message(
    text: str, html: str | None = None, attachment: bytes | None = None
) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = "Un résumé"
    message["From"] = "Zoë <zoe@example.test>"
    message["To"] = "jane@example.test"
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    if attachment is not None:
        message.add_attachment(attachment, maintype="application", subtype="octet-stream")
    return message


def test_messages_the_stdlib_builds_are_written_as_the_generator_writes_them() -> None:
    """7-bit, 8-bit (held with surrogates), quoted-printable and base64 bodies, nested
    multiparts and attachments."""
    for message in (
        stdlib_message("plain ASCII\n"),
        stdlib_message("Déjà vu, short lines: an 8-bit body\n"),
        stdlib_message("é" * 200 + "\nlong lines: quoted-printable or base64\n"),
        stdlib_message("texte\n", "<p>déjà</p>\n", attachment=b"\x00\x01binary\r\n"),
        stdlib_message("no final line break"),
        stdlib_message(""),
    ):
        assert_as_generated(message)
    no_parts = EmailMessage()
    no_parts["Content-Type"] = 'multipart/mixed; boundary="b"'
    no_parts.set_payload([])
    assert_as_generated(no_parts)


def test_a_parsed_message_keeps_its_bytes_and_any_line_endings_become_the_policys() -> None:
    """A body read from bytes (8-bit, held with surrogates) with CRLF, LF and lone CR."""
    raw = (
        b"Subject: parsed\r\nFrom: a@example.test\r\nTo: b@example.test\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        b"caf\xc3\xa9\r\nline two\nline three\rend"
    )
    for policy in (email.policy.default, email.policy.compat32):
        assert_as_generated(BytesParser(policy=policy).parsebytes(raw))


def test_what_the_generator_handles_its_own_way_is_left_to_it() -> None:
    """A preamble and an epilogue, an attached message, a multipart without its
    boundary yet: the generator writes them (and chooses the boundary)."""
    with_preamble = stdlib_message("a\n", "<p>b</p>\n")
    with_preamble.preamble = "This is a multi-part message."
    with_preamble.epilogue = "the end"
    attached = EmailMessage()
    attached["Subject"] = "outer"
    attached.set_content("see the attached message\n")
    attached.add_attachment(stdlib_message("inner\n"))
    for message in (with_preamble, attached):
        assert_as_generated(message)
    unbounded = Message()
    unbounded["Content-Type"] = "multipart/mixed"
    unbounded.attach(stdlib_message("one\n"))
    written = message_bytes(unbounded, email.policy.SMTP)
    boundary = unbounded.get_boundary()
    assert boundary is not None and f"--{boundary}--".encode() in written


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=400),
    html=st.none() | st.text(st.characters(blacklist_categories=("Cs",)), max_size=200),
)
def test_any_text_is_written_as_the_generator_writes_it(text: str, html: str | None) -> None:
    assert_as_generated(stdlib_message(text, html))


WORDS = st.sampled_from(
    ["word ", "a", "Zoë ", "€", "😀", "=", ".", " ", "\t", "\x0b", "\x85", "\u2028", "x" * 40]
)
TEXTS = st.tuples(
    st.lists(st.lists(WORDS, max_size=12).map("".join), max_size=40),
    st.sampled_from(["\n", "\r\n", "\r"]),
).map(lambda lines_and_end: lines_and_end[1].join(lines_and_end[0]))
# A letter's shape: more lines than the standard library looks at, one too long for 8bit.
LETTER = "\n".join(["Bonjour Zoë,", "x" * 90, *(f"ligne {n} = fin " for n in range(30))])


@example(text=LETTER, policy=email.policy.SMTP)
@settings(max_examples=300, deadline=None)
@given(text=TEXTS, policy=st.sampled_from(list(POLICIES.values())))
def test_text_parts_are_encoded_as_set_content_encodes_them(text: str, policy: Policy) -> None:
    """`encode_text` encodes quoted-printable once where the standard library encodes the
    first lines twice: the encoding it picks and the body are the standard library's."""
    assert encode_text(text, policy) == stdlib_encode_text(text, "utf-8", None, policy)
