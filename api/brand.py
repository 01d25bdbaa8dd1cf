"""Who the pages and emails speak for, and where they send a person who needs help.

`Brand` is built once from the settings (`RECOVERY_BRAND_NAME`,
`RECOVERY_BRAND_LOGO`, `RECOVERY_SUPPORT_EMAIL`, `RECOVERY_SUPPORT_URL`): the
product's name (without one, the host name people reach the service at, which
is what their address bar shows, never a generic "Account recovery"), its logo
(a file the service serves itself, at `LOGO_PATH`), and the support contact,
an address, a page or both (without either, the pages and emails offer the
self-service way instead and never promise a support they cannot reach).

`Sender` is who the emails come from: the address of `RECOVERY_MAIL_FROM`
with a display name in the email's language (`RECOVERY_MAIL_SENDER_NAME_EN` /
`_FR`, else the display name written in `RECOVERY_MAIL_FROM`, else the brand
name), and the brand the messages are written for.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import urlsplit

from api.settings import Settings

__all__ = ["LOGO_PATH", "Brand", "Sender"]

# Where the service serves the configured logo (one file, read at start).
LOGO_PATH = "/brand/logo"


@dataclass(frozen=True)
class Brand:
    """The product's name and logo, and its support contact (any of which may be absent)."""

    name: str
    logo_file: Path | None = None
    support_email: str | None = None
    support_url: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Brand:
        host = urlsplit(settings.public_base_url).hostname or "localhost"
        return cls(
            name=settings.brand_name or host,
            logo_file=settings.brand_logo,
            support_email=settings.support_email,
            support_url=settings.support_url,
        )

    @property
    def logo_url(self) -> str | None:
        """The logo's path on this service, or None without a logo."""
        return LOGO_PATH if self.logo_file is not None else None

    @property
    def logo_type(self) -> str:
        """The logo file's media type, from its name (`image/png`, `image/svg+xml`, ...)."""
        guessed = mimetypes.guess_type(self.logo_file.name)[0] if self.logo_file else None
        return guessed or "application/octet-stream"

    @property
    def has_support(self) -> bool:
        """Whether a person can be told how to reach support."""
        return bool(self.support_email or self.support_url)


@dataclass(frozen=True)
class Sender:
    """Who the emails are from: one address, a display name per language, the brand."""

    address: str
    brand: Brand
    # Display names by language code; a language without one gets `default_name`.
    names: dict[str, str] = field(default_factory=dict)
    default_name: str = ""

    @classmethod
    def from_settings(cls, settings: Settings, brand: Brand | None = None) -> Sender:
        brand = brand or Brand.from_settings(settings)
        written, address = parseaddr(settings.mail_from)
        names = {
            code: name
            for code, name in (
                ("en", settings.mail_sender_name_en),
                ("fr", settings.mail_sender_name_fr),
            )
            if name
        }
        return cls(
            address=address or settings.mail_from,
            brand=brand,
            names=names,
            default_name=written or brand.name,
        )

    @classmethod
    def plain(cls, mail_from: str) -> Sender:
        """A sender from a bare `From` value: its domain as the brand, its display name
        (else the domain) as the sender's name."""
        written, address = parseaddr(mail_from)
        domain = address.rpartition("@")[2] or address or mail_from
        return cls(
            address=address or mail_from, brand=Brand(name=domain), default_name=written or domain
        )

    def name(self, locale: str) -> str:
        """The display name for an email in `locale`."""
        return self.names.get(locale, self.default_name)
