"""Email addresses: normalising what people type, and masking what support sees."""

from __future__ import annotations

import re
import unicodedata

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


def mask_email(address: str) -> str:
    """`jane.doe@example.com` → `j***e@e***.com`: enough for support to confirm, not to read."""
    local, _, domain = address.partition("@")
    host, _, tld = domain.rpartition(".")

    def squeeze(part: str) -> str:
        if len(part) <= 2:
            return part[:1] + "***"
        return f"{part[0]}***{part[-1]}"

    return f"{squeeze(local)}@{squeeze(host or domain)}{'.' + tld if host else ''}"
