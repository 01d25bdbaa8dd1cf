"""Mail transports against real servers: the SMTP sink, a silent TCP listener, a directory."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtplib.email import flatten_message

from api.mail.transports import (
    FileTransport,
    PermanentMailError,
    SmtpTransport,
    TemporaryMailError,
    envelope,
    transport_from_url,
)
from tests.support import smtp as smtp_support
from tests.support.smtp import SmtpSink

# The fixture, until the root conftest loads tests.support.smtp as a plugin.
smtp_sink = smtp_support.smtp_sink


def message(to: str = "Jane Doe <jane@example.test>", body: str = "hello") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Account recovery <no-reply@example.test>"
    msg["To"] = to
    msg["Subject"] = "test"
    msg.set_content(body)
    return msg


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung mail server)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


# -- SMTP -----------------------------------------------------------------------


async def test_smtp_delivers_to_exactly_the_to_address(smtp_sink: SmtpSink) -> None:
    """The envelope names the To header's one address and the From header's sender."""
    await SmtpTransport(smtp_sink.url).send(message(body="link inside"))
    (received,) = smtp_sink.wait_for(1)
    assert received.envelope_rcpts == ("jane@example.test",)
    assert received.envelope_from == "no-reply@example.test"
    assert received["Subject"] == "test"
    assert received.get_content().strip() == "link inside"


async def test_smtp_sends_the_bytes_and_options_send_message_would_send(
    smtp_sink: SmtpSink,
) -> None:
    """The transport writes the message itself (`api.mail.wire`): the server receives
    what aiosmtplib's `send_message` sends, with 8-bit bodies announced as such."""
    sent = message(body="Déjà vu: an 8-bit body\n")
    await SmtpTransport(smtp_sink.url).send(sent)
    (received,) = smtp_sink.wait_for(1)
    assert received.raw == flatten_message(sent, cte_type="8bit")
    assert "Déjà vu".encode() in received.raw
    assert "BODY=8BITMIME" in received.mail_options


async def test_a_server_without_8bitmime_gets_a_7bit_body_as_send_message_sends_it() -> None:
    sink = SmtpSink(eight_bit=False).start()
    try:
        sent = message(body="Déjà vu: an 8-bit body\n")
        await SmtpTransport(sink.url).send(sent)
        (received,) = sink.wait_for(1)
    finally:
        sink.stop()
    assert received.raw == flatten_message(sent, cte_type="7bit")
    assert received.raw.isascii()
    assert not [option for option in received.mail_options if option.startswith("BODY=")]
    assert received.get_content() == "Déjà vu: an 8-bit body\n"


async def test_smtp_down_is_a_temporary_error(smtp_sink: SmtpSink) -> None:
    """A refused connection is temporary: the mail may go through later."""
    smtp_sink.stop()
    with pytest.raises(TemporaryMailError):
        await SmtpTransport(smtp_sink.url, timeout=2).send(message())
    smtp_sink.start()
    await SmtpTransport(smtp_sink.url).send(message())
    assert len(smtp_sink.wait_for(1)) == 1


@pytest.mark.parametrize("stage", ["rcpt", "data"])
async def test_smtp_4xx_is_temporary(smtp_sink: SmtpSink, stage: str) -> None:
    """A 4xx answer (at RCPT or DATA) is a temporary error carrying the code."""
    smtp_sink.refuse(451, stage=stage)  # type: ignore[arg-type]
    with pytest.raises(TemporaryMailError, match="451"):
        await SmtpTransport(smtp_sink.url).send(message())
    assert smtp_sink.messages == []


@pytest.mark.parametrize("stage", ["rcpt", "data"])
async def test_smtp_5xx_is_permanent(smtp_sink: SmtpSink, stage: str) -> None:
    """A 5xx answer (at RCPT or DATA) is a permanent error carrying the code."""
    smtp_sink.refuse(550, stage=stage)  # type: ignore[arg-type]
    with pytest.raises(PermanentMailError, match="550"):
        await SmtpTransport(smtp_sink.url).send(message())
    assert smtp_sink.messages == []


async def test_smtp_hung_server_times_out_as_temporary(silent_server: int) -> None:
    """A server that never greets is given up at the timeout, as a temporary error."""
    with pytest.raises(TemporaryMailError, match="Timeout"):
        await SmtpTransport(f"smtp://127.0.0.1:{silent_server}", timeout=0.3).send(message())


# Plain-TCP AUTH is what the loopback sink offers; aiosmtpd warns about it.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_smtp_logs_in_with_the_url_credentials() -> None:
    """The URL's user and percent-encoded password log in; wrong ones are retried later."""
    with SmtpSink(credentials=("mailer", "p@ss:w/rd")) as sink:
        good = f"smtp://mailer:p%40ss%3Aw%2Frd@127.0.0.1:{sink.port}"
        await SmtpTransport(good).send(message())
        assert len(sink.wait_for(1)) == 1
        with pytest.raises(TemporaryMailError, match="login refused") as caught:
            await SmtpTransport(f"smtp://mailer:wrong@127.0.0.1:{sink.port}").send(message())
        assert "wrong" not in str(caught.value)
        assert len(sink.messages) == 1


async def test_starttls_required_but_not_offered_sends_nothing(smtp_sink: SmtpSink) -> None:
    """With ?starttls=1 a server without STARTTLS gets no mail in clear: a temporary error."""
    with pytest.raises(TemporaryMailError):
        await SmtpTransport(smtp_sink.url + "?starttls=1").send(message())
    assert smtp_sink.messages == []


@pytest.mark.parametrize(
    "to",
    [
        "jane@example.test, eve@evil.test",
        "jane@example.test; eve@evil.test",
        "",
    ],
)
async def test_smtp_refuses_anything_but_one_recipient(smtp_sink: SmtpSink, to: str) -> None:
    """A message naming several recipients (or none) is refused before any connection."""
    with pytest.raises(ValueError, match="exactly one"):
        await SmtpTransport(smtp_sink.url).send(message(to=to))
    assert smtp_sink.messages == []


async def test_cc_and_bcc_are_refused(smtp_sink: SmtpSink) -> None:
    """Cc or Bcc would add recipients the account never named, and a Resent-Bcc
    header would travel with the message: refused."""
    for header in ("Cc", "Bcc", "Resent-Bcc"):
        msg = message()
        msg[header] = "eve@evil.test"
        with pytest.raises(ValueError, match="Cc or Bcc"):
            await SmtpTransport(smtp_sink.url).send(msg)
    assert smtp_sink.messages == []


async def test_concurrent_smtp_sends_all_arrive(smtp_sink: SmtpSink) -> None:
    """Twenty sends at once reach the server, each to its own recipient."""
    transport = SmtpTransport(smtp_sink.url)
    await asyncio.gather(*(transport.send(message(to=f"user{i}@example.test")) for i in range(20)))
    received = smtp_sink.wait_for(20)
    assert sorted(r.envelope_rcpts[0] for r in received) == sorted(
        f"user{i}@example.test" for i in range(20)
    )


# -- URLs -------------------------------------------------------------------------


def test_smtp_url_parts_are_read() -> None:
    """Host, port, user, password and TLS mode come from the URL; the repr hides the password."""
    t = SmtpTransport("smtp://user%40corp:s3cret@mail.example.test:2525?starttls=1", timeout=3)
    assert (t.host, t.port, t.username, t.start_tls, t.use_tls, t.timeout) == (
        "mail.example.test",
        2525,
        "user@corp",
        True,
        False,
        3,
    )
    assert "s3cret" not in repr(t)


@pytest.mark.parametrize(
    ("url", "port", "use_tls", "start_tls"),
    [
        ("smtp://mail.example.test", 25, False, False),
        ("smtp://mail.example.test?starttls=1", 587, False, True),
        ("smtps://mail.example.test", 465, True, False),
        ("smtp://mail.example.test?tls=1", 465, True, False),
        ("smtp://mail.example.test?starttls=0", 25, False, False),
    ],
)
def test_default_ports_follow_the_tls_mode(
    url: str, port: int, use_tls: bool, start_tls: bool
) -> None:
    """Without a port: 25 plain, 587 with STARTTLS, 465 with implicit TLS."""
    t = SmtpTransport(url)
    assert (t.port, t.use_tls, t.start_tls) == (port, use_tls, start_tls)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("smtp://mail.example.test?starttls=1&tls=1", "not both"),
        ("smtp://mail.example.test?starttls=maybe", "starttls must be 0 or 1"),
        ("smtp://mail.example.test:99999", "port"),
        ("smtp://", "needs a host"),
        ("http://mail.example.test", "must start with"),
        ("file://", "needs a directory"),
    ],
)
def test_bad_mail_urls_are_refused_clearly(url: str, complaint: str) -> None:
    """Each malformed mail URL fails with a message saying what is wrong."""
    with pytest.raises(ValueError, match=complaint):
        transport_from_url(url)


def test_transport_from_url_picks_the_transport(tmp_path: Path) -> None:
    """file:// gives a FileTransport on that directory; smtp:// an SmtpTransport."""
    file_transport = transport_from_url(f"file://{tmp_path}/mail")
    assert isinstance(file_transport, FileTransport)
    assert file_transport.directory == tmp_path / "mail"
    relative = transport_from_url("file://./var/mail")
    assert isinstance(relative, FileTransport)
    assert relative.directory == Path("var/mail")
    smtp = transport_from_url("smtp://127.0.0.1:2525", timeout=4)
    assert isinstance(smtp, SmtpTransport)
    assert smtp.timeout == 4


# -- files ------------------------------------------------------------------------


async def test_file_transport_writes_one_parseable_eml_per_message(tmp_path: Path) -> None:
    """Each message becomes one .eml file that parses back to the same message."""
    transport = FileTransport(tmp_path / "mail")
    for i in range(3):
        await transport.send(message(to=f"user{i}@example.test", body=f"body {i}"))
    files = sorted((tmp_path / "mail").iterdir())
    assert [f.suffix for f in files] == [".eml"] * 3
    parsed = [email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in files]
    # Names sort by time of writing: the order of sending.
    assert [p["To"] for p in parsed] == [f"user{i}@example.test" for i in range(3)]
    assert [p.get_content().strip() for p in parsed] == ["body 0", "body 1", "body 2"]


async def test_file_transport_names_are_unique_under_concurrency(tmp_path: Path) -> None:
    """Fifty concurrent writes give fifty distinct complete files and no temporary leftovers."""
    transport = FileTransport(tmp_path)
    await asyncio.gather(*(transport.send(message(body=f"n{i}")) for i in range(50)))
    files = list(tmp_path.iterdir())
    assert len(files) == 50
    assert all(f.name.endswith(".eml") and not f.name.startswith(".") for f in files)
    bodies = {
        email.message_from_bytes(f.read_bytes(), policy=email.policy.default).get_content().strip()
        for f in files
    }
    assert bodies == {f"n{i}" for i in range(50)}


async def test_file_transport_refuses_several_recipients(tmp_path: Path) -> None:
    """The file transport applies the same one-recipient rule as SMTP."""
    with pytest.raises(ValueError, match="exactly one"):
        await FileTransport(tmp_path).send(message(to="a@example.test, b@example.test"))
    assert list(tmp_path.iterdir()) == []


async def test_unwritable_mail_directory_is_a_temporary_error(tmp_path: Path) -> None:
    """A directory that cannot be created (a file is in the way) is retried later."""
    blocker = tmp_path / "mail"
    blocker.write_text("not a directory")
    with pytest.raises(TemporaryMailError, match="cannot write mail file"):
        await FileTransport(blocker).send(message())


def test_envelope_reads_sender_and_single_recipient() -> None:
    """The envelope is (From address, the one To address), display names dropped."""
    assert envelope(message()) == ("no-reply@example.test", "jane@example.test")


# -- SMTP connections kept open ---------------------------------------------------


def _connections(sink: SmtpSink) -> set[object]:
    return {receipt.peer for receipt in sink.receipts}


async def test_smtp_sends_one_after_another_over_one_kept_connection(smtp_sink: SmtpSink) -> None:
    """Messages sent one at a time all travel over one connection."""
    transport = SmtpTransport(smtp_sink.url)
    for n in range(5):
        await transport.send(message(body=f"message {n}"))
    assert len(smtp_sink.wait_for(5)) == 5
    assert len(_connections(smtp_sink)) == 1


async def test_smtp_keeps_at_most_its_number_of_connections(smtp_sink: SmtpSink) -> None:
    """Sends at once open a connection each; afterwards only `kept` of them are reused."""
    transport = SmtpTransport(smtp_sink.url, kept=2)
    await asyncio.gather(*(transport.send(message(body=f"at once {n}")) for n in range(4)))
    smtp_sink.wait_for(4)
    first = _connections(smtp_sink)
    assert len(first) == 4
    smtp_sink.clear()
    await asyncio.gather(*(transport.send(message(body=f"then {n}")) for n in range(2)))
    smtp_sink.wait_for(2)
    assert _connections(smtp_sink) <= first and len(_connections(smtp_sink)) == 2


async def test_a_kept_connection_the_server_dropped_is_replaced_and_the_message_sent(
    smtp_sink: SmtpSink,
) -> None:
    """The server restarting between two sends (closing the kept connection): the second
    message goes out on a new connection, once."""
    transport = SmtpTransport(smtp_sink.url)
    await transport.send(message(body="before"))
    smtp_sink.wait_for(1)
    smtp_sink.stop()
    smtp_sink.start()
    smtp_sink.clear()
    await transport.send(message(body="after"))
    received = smtp_sink.wait_for(1)
    assert [m.get_content().strip() for m in received] == ["after"]


async def test_a_refused_message_closes_its_connection_and_the_next_one_goes_out(
    smtp_sink: SmtpSink,
) -> None:
    """After a 4xx the connection is not reused; the next send opens a new one."""
    transport = SmtpTransport(smtp_sink.url)
    await transport.send(message(body="one"))
    smtp_sink.wait_for(1)
    smtp_sink.refuse(451)
    with pytest.raises(TemporaryMailError):
        await transport.send(message(body="refused"))
    smtp_sink.accept()
    await transport.send(message(body="two"))
    smtp_sink.wait_for(2)
    assert len(_connections(smtp_sink)) == 2
