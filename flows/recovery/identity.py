"""Normalising what people type as their email, and the support reference of an attempt."""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
import uuid

MAX_EMAIL_CHARS = 254
# One address, no whitespace, no separators a mailer would split on.
_EMAIL = re.compile(
    r"^[^@\s,;<>()\[\]\\\"]{1,64}@[^@\s,;<>()\[\]\\\"]{1,253}\.[^@\s,;<>()\[\]\\\"]{2,63}$"
)


class InvalidEmail(ValueError):
    """What was typed is not exactly one email address."""


def normalise_email(value: object) -> str:
    """NFKC + case-fold one address; `InvalidEmail` for anything else (lists, CR/LF, commas...)."""
    if not isinstance(value, str):
        raise InvalidEmail("email must be a single string")
    # Checked before trimming: "a@example.com\r\n" is a header-injection attempt, not a typo.
    if any(c in value for c in "\r\n\t\x00"):
        raise InvalidEmail("email must not contain line breaks or control characters")
    stripped = value.strip(" ")
    if not stripped or len(stripped) > MAX_EMAIL_CHARS:
        raise InvalidEmail("email must be between 1 and 254 characters")
    normalised = unicodedata.normalize("NFKC", stripped).casefold()
    if not _EMAIL.match(normalised) or ".." in normalised:
        raise InvalidEmail("email must be one address of the form name@example.com")
    return normalised


def support_reference(attempt_id: uuid.UUID) -> str:
    """A short code a person can read out to support: 10 characters from the attempt id.

    The same for every attempt whatever its account; support searches by it
    (`reference_bounds` turns it back into a range of ids).
    """
    code = base64.b32encode(attempt_id.bytes[:5]).decode("ascii")  # 40 bits, 8 characters
    return f"{code[:4]}-{code[4:]}"


def reference_bounds(reference: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The range of attempt ids that carry `reference`, or None if it is malformed."""
    code = reference.strip().upper().replace("-", "").replace(" ", "")
    if len(code) != 8:
        return None
    try:
        prefix = base64.b32decode(code)
    except (ValueError, binascii.Error):
        return None
    low = uuid.UUID(bytes=prefix + b"\x00" * 11)
    high = uuid.UUID(bytes=prefix + b"\xff" * 11)
    return low, high


def mask_email(address: str) -> str:
    """`jane.doe@example.com` → `j***e@e***.com`: enough for support to confirm, not to read."""
    local, _, domain = address.partition("@")
    host, _, tld = domain.rpartition(".")

    def squeeze(part: str) -> str:
        if len(part) <= 2:
            return part[:1] + "***"
        return f"{part[0]}***{part[-1]}"

    return f"{squeeze(local)}@{squeeze(host or domain)}{'.' + tld if host else ''}"
