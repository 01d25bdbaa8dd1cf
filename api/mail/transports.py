"""Mail transports: where a rendered `EmailMessage` goes.

Two real transports sit behind one small protocol:

- `SmtpTransport` hands the message to an SMTP server through aiosmtplib
  (plain, STARTTLS or implicit TLS, with login when the URL carries a user),
  over connections it keeps open, as the bytes `api.mail.wire` writes (those
  aiosmtplib's own `send_message` would send, without its generator);
- `FileTransport` writes one `.eml` file per message into a directory, which
  is what development, the demo command and the default configuration use.

Errors come in two kinds the dispatcher acts on: `TemporaryMailError` (the
server is down, slow, or answered 4xx: try again later) and
`PermanentMailError` (the server answered 5xx: never retry). Their messages
carry the SMTP code and the server's reply (addresses in it masked), never the
message body, because the body holds the recovery link.
"""

from __future__ import annotations

import asyncio
import email.message
import email.policy
import itertools
import os
import re
import secrets
import socket
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

from api.accounts.addresses import mask_email
from api.mail.wire import message_bytes
from engine.clock import Clock, SystemClock

MAX_ERROR_CHARS = 300
DEFAULT_MAIL_DIR = Path("var/mail")
_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")


class MailError(Exception):
    """Base of the transport errors; never raised itself."""

    safe_to_log = True  # our own messages: no credentials, no message content


class TemporaryMailError(MailError):
    """The message was not accepted yet (connection refused, timeout, 4xx): retry later."""


class PermanentMailError(MailError):
    """The server refused the message for good (5xx): retrying cannot help."""

    # What the attempt's bounce records as its reason.
    reason = "refused"


class AddressNotSupported(PermanentMailError):
    """The address has non-ASCII characters and the server does not offer SMTPUTF8."""

    reason = "address_not_supported"

    def __init__(self) -> None:
        super().__init__(
            "the mail server cannot deliver to an address with non-ASCII characters "
            "(it does not offer SMTPUTF8)"
        )


def needs_smtputf8(*addresses: str) -> bool:
    """Whether an envelope with these addresses needs SMTPUTF8 (RFC 6531)."""
    return not all(address.isascii() for address in addresses)


class MailTransport(Protocol):
    """Something that accepts a finished message for delivery, or raises a `MailError`."""

    async def send(self, message: email.message.EmailMessage) -> None: ...


def envelope(message: email.message.EmailMessage) -> tuple[str, str]:
    """The envelope sender and the single envelope recipient of a message.

    The recipient is exactly the To header's one address: a message naming
    several recipients, or Cc/Bcc ones, is refused rather than sent to more
    people than the one account it was built for.
    """
    to_headers = message.get_all("To") or []
    if len(to_headers) != 1:
        raise ValueError("a message must have exactly one To address")
    header = to_headers[0]
    if hasattr(header, "addresses"):
        # A parsed header (policy.default): a malformed list is refused, not guessed at.
        if header.defects:
            raise ValueError("a message must have exactly one To address")
        recipients = [a.addr_spec for a in header.addresses]
    else:
        recipients = [addr for _name, addr in getaddresses([str(header)])]
    if len(recipients) != 1 or "@" not in recipients[0] or any(c.isspace() for c in recipients[0]):
        raise ValueError("a message must have exactly one To address")
    if message.get_all("Cc") or message.get_all("Bcc") or message.get_all("Resent-Bcc"):
        raise ValueError("a message must not carry Cc or Bcc recipients")
    from_header = message.get("From", "")
    from_addresses = getattr(from_header, "addresses", ())
    if len(from_addresses) == 1 and not getattr(from_header, "defects", ()):
        sender = from_addresses[0].addr_spec
    else:
        sender = parseaddr(str(from_header))[1]
    if "@" not in sender:
        raise ValueError("a message must have a From address")
    return sender, recipients[0]


# An address as mail servers quote them in replies (`<jane@example.com>`, bare or in quotes).
_ADDRESS = re.compile(r"[^\s<>\"'(),;:@\[\]]+@[^\s<>\"'(),;:@\[\]]+")


def _clean(text: str) -> str:
    """A server reply made safe for logs and stored facts: one line, bounded, and every
    address in it masked as support sees addresses (the reply often quotes the
    recipient in full, and it is stored where support reads it)."""
    one_line = " ".join(str(text).split())
    return _ADDRESS.sub(lambda m: mask_email(m.group()), one_line)[:MAX_ERROR_CHARS]


class FileTransport:
    """Writes each message to `<directory>/<time>-<seq>-<random>.eml`, atomically.

    Names sort by the time they were written (then by a per-process counter),
    and the random part keeps several processes from colliding. The file is
    written under a hidden temporary name and renamed into place, so a reader
    globbing `*.eml` never sees half a message.
    """

    def __init__(self, directory: Path = DEFAULT_MAIL_DIR, clock: Clock | None = None) -> None:
        self.directory = Path(directory)
        self.clock = clock or SystemClock()
        self._counter = itertools.count()

    def _name(self) -> str:
        stamp = self.clock.now().strftime("%Y%m%dT%H%M%S%fZ")
        return f"{stamp}-{next(self._counter) % 1_000_000:06d}-{secrets.token_hex(4)}.eml"

    def _write(self, name: str, data: bytes) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    async def send(self, message: email.message.EmailMessage) -> None:
        sender, recipient = envelope(message)  # the same one-recipient rule as SMTP
        # An address with non-ASCII characters is written as UTF-8 (as SMTPUTF8 sends it);
        # the ASCII policy would turn it into an encoded word, which is no address.
        utf8 = needs_smtputf8(sender, recipient)
        data = message_bytes(message, _EIGHT_BIT[utf8])
        try:
            await asyncio.to_thread(self._write, self._name(), data)
        except OSError as exc:
            # A full disk or a missing permission may be fixed: retry later.
            raise TemporaryMailError(
                f"cannot write mail file: {_clean(exc.strerror or str(exc))}"
            ) from None

    def __repr__(self) -> str:
        return f"FileTransport({str(self.directory)!r})"


def _flag(query: dict[str, list[str]], name: str) -> bool:
    if name not in query:
        return False
    value = query[name][-1].lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"mail URL: {name} must be 0 or 1")


# Connections kept open between sends: as many as the worker sends at once
# (`engine.worker.MAX_CONCURRENT`). One connection carries about twice the messages
# per second of a connection per message (no TCP set-up, EHLO, login or QUIT each).
KEPT_CONNECTIONS = 4


class SmtpTransport:
    """Sends through an SMTP server described by a URL, over connections it keeps open.

    `smtp://user:pass@host:587?starttls=1` upgrades with STARTTLS (and fails
    if the server cannot); `smtps://host` or `?tls=1` speaks TLS from the
    first byte. Without either the connection stays plain: opportunistic
    upgrades against relays with self-signed certificates fail in ways an
    operator does not expect, so TLS is asked for explicitly.

    Each send takes an idle connection (or opens one) and, once the server has
    accepted the message, leaves it open for the next; up to `kept` stay open
    between sends. A send that fails in any way closes its connection (its
    state is unknown). A kept connection the server closed meanwhile (servers
    idle-close after a few minutes) is replaced and the message sent on a new
    one, only when the server hung up before taking it. Connections belong to
    the event loop that opened them: another loop starts afresh.
    """

    def __init__(self, url: str, timeout: float = 10.0, kept: int = KEPT_CONNECTIONS) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError("mail URL must start with smtp:// or smtps://")
        if not parts.hostname:
            raise ValueError("mail URL needs a host, e.g. smtp://user:pass@host:587?starttls=1")
        if timeout <= 0:
            raise ValueError("mail timeout must be positive")
        query = parse_qs(parts.query)
        self.use_tls = parts.scheme == "smtps" or _flag(query, "tls")
        self.start_tls = _flag(query, "starttls")
        if self.use_tls and self.start_tls:
            raise ValueError("mail URL: choose STARTTLS or implicit TLS, not both")
        self.host = parts.hostname
        try:
            port = parts.port
        except ValueError:
            raise ValueError("mail URL: the port must be a number from 1 to 65535") from None
        self.port = port or (465 if self.use_tls else 587 if self.start_tls else 25)
        self.username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self.timeout = timeout
        self.kept = kept
        self._local_hostname: str | None = None
        self._idle: list[aiosmtplib.SMTP] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _ehlo_name(self) -> str:
        """This host's name for EHLO, looked up once.

        aiosmtplib would resolve it on every send; where DNS is slow or broken
        that lookup can take seconds each time.
        """
        if self._local_hostname is None:
            name = await asyncio.to_thread(socket.getfqdn)
            # EHLO takes one ASCII word.
            usable = name.isascii() and name.isprintable() and " " not in name
            self._local_hostname = name if name and usable else "localhost"
        return self._local_hostname

    async def _client(self) -> aiosmtplib.SMTP:
        """A new client for the configured server, not connected yet."""
        return aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            local_hostname=await self._ehlo_name(),
            username=self.username,
            password=self._password,
            use_tls=self.use_tls,
            start_tls=self.start_tls,
            timeout=self.timeout,
        )

    def _kept_connection(self) -> aiosmtplib.SMTP | None:
        """An idle connection this event loop opened, or None."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Another loop's connections can be neither used nor closed from this one.
            self._idle, self._loop = [], loop
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client
        return None

    async def _deliver(self, message: email.message.EmailMessage, sender: str, to: str) -> None:
        client = self._kept_connection()
        try:
            if client is not None:
                try:
                    await _send_on(client, message, sender, to)
                except aiosmtplib.SMTPServerDisconnected:
                    # The server closed the idle connection before taking the message.
                    client.close()
                    client = None
            if client is None:
                client = await self._client()
                await client.connect()
                await _send_on(client, message, sender, to)
        except BaseException:
            if client is not None:
                client.close()
            raise
        if len(self._idle) < self.kept and asyncio.get_running_loop() is self._loop:
            self._idle.append(client)
        else:
            client.close()

    async def send(self, message: email.message.EmailMessage) -> None:
        """Send; aiosmtplib asks for SMTPUTF8 itself when an address needs it and the
        server offers it. A server that does not cannot ever take it: permanent."""
        sender, recipient = envelope(message)
        try:
            await self._deliver(message, sender, recipient)
        except aiosmtplib.SMTPNotSupported as exc:
            if needs_smtputf8(sender, recipient):
                raise AddressNotSupported() from None
            # STARTTLS asked for and not offered: our configuration, may be fixed.
            raise TemporaryMailError(f"SMTP {type(exc).__name__}: {_clean(str(exc))}") from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0] if exc.recipients else None
            code = refused.code if refused else 0
            raise _by_code(code, refused.message if refused else "recipient refused") from None
        except aiosmtplib.SMTPAuthenticationError as exc:
            # Wrong credentials are our configuration, not the recipient's
            # fault: keep the mail and retry once an operator fixes them.
            raise TemporaryMailError(f"SMTP login refused ({exc.code})") from None
        except aiosmtplib.SMTPResponseException as exc:
            raise _by_code(exc.code, exc.message) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Connection refused or reset, timeouts, TLS failures, a server
            # that hung up: all may pass.
            raise TemporaryMailError(
                f"SMTP {type(exc).__name__}: {_clean(str(exc))}".rstrip(": ")
            ) from None

    def __repr__(self) -> str:
        # Never the password.
        return f"SmtpTransport(host={self.host!r}, port={self.port}, user={self.username!r})"


# How a message is written for a server that takes 8-bit bodies, by whether the
# envelope needs SMTPUTF8, and for one that takes 7-bit ones only.
_EIGHT_BIT = {False: email.policy.SMTP, True: email.policy.SMTPUTF8}
_SEVEN_BIT = {utf8: policy.clone(cte_type="7bit") for utf8, policy in _EIGHT_BIT.items()}


async def _send_on(
    client: aiosmtplib.SMTP, message: email.message.EmailMessage, sender: str, to: str
) -> None:
    """What `client.send_message` does for one recipient (the same MAIL options, the same
    policy for the server's extensions), with the bytes written by `message_bytes`."""
    if client.is_ehlo_or_helo_needed:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            await client.helo()
    options: list[str] = []
    utf8 = needs_smtputf8(sender, to)
    if utf8:
        if not client.supports_extension("smtputf8"):
            raise aiosmtplib.SMTPNotSupported("the server does not offer SMTPUTF8")
        options.append("SMTPUTF8")
    if client.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")
        policy = _EIGHT_BIT[utf8]
    else:
        policy = _SEVEN_BIT[utf8]
    await client.sendmail(sender, [to], message_bytes(message, policy), mail_options=options)


def _by_code(code: int, reply: str) -> MailError:
    text = f"SMTP {code}: {_clean(reply)}"
    if 500 <= code <= 599:
        return PermanentMailError(text)
    return TemporaryMailError(text)


def transport_from_url(url: str, timeout: float = 10.0) -> MailTransport:
    """The transport a `RECOVERY_MAIL_URL` names: `file://DIR` or `smtp[s]://...`."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        directory = unquote(parts.netloc + parts.path)
        if not directory:
            raise ValueError("file:// needs a directory, e.g. file://./var/mail")
        return FileTransport(Path(directory))
    if parts.scheme in ("smtp", "smtps"):
        return SmtpTransport(url, timeout=timeout)
    raise ValueError("mail URL must start with smtp://, smtps:// or file://")
