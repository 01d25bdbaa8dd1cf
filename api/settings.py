"""The service's configuration: one frozen object read from `RECOVERY_*` variables.

`Settings` is composed of one section per room (the database, HTTP, mail,
the worker, accounts and sign-in) and one per flow; the variables keep their
flat names (`RECOVERY_LINK_TTL_MINUTES`, ...), each section only groups them
in the code and says where each is used. A new flow adds its section here.

Nothing reads the environment at import time: `Settings()` does, when the
command line or a test builds it, and a bad value fails there with a message
naming the variable (`settings_from_env`).

Defaults that hold the service up against abuse, each a variable:
- /metrics is not served (404) unless RECOVERY_METRICS_TOKEN (bearer, at least
  16 characters) or RECOVERY_METRICS_LISTEN (host:port, a second socket of
  `recovery serve` that serves /metrics alone) is set;
- rate limits per client IP and endpoint: POSTs 20/min, other public requests
  (pages, link checks, diagrams, /metrics, static files) 60/min, the support API
  600/min; /health and /ready are never limited;
- `recovery serve` gives a request 10 s for its headers and 30 s for its body
  (then 408 and the connection is closed), and answers 503 past 1,000 open
  connections;
- the service answers its public host and the loopback names only
  (RECOVERY_EXTRA_ALLOWED_HOSTS adds more);
- a browser that signed in on the login page is remembered for 180 days (its
  device cookie): others' failed sign-ins do not slow it down.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as EnvParseError

from engine.db import normalise_url

# The embedded default: a SQLite file under ./var/.
DEFAULT_DATABASE_URL = "sqlite:///var/recovery.db"
MIN_METRICS_TOKEN_CHARS = 16


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


# -- rooms -----------------------------------------------------------------------


class DatabaseSettings(BaseModel):
    """The store every process shares (engine, accounts, support)."""

    database_url: str = DEFAULT_DATABASE_URL
    db_pool_size: int = Field(default=8, ge=1)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        normalise_url(value)  # raises ValueError naming the scheme
        return value


class HttpSettings(BaseModel):
    """The HTTP application (`api/web`) and `recovery serve`."""

    public_base_url: str = "http://127.0.0.1:8000"
    # Comma-separated addresses or networks of proxies whose X-Forwarded-For is believed.
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()
    # Comma-separated host names answered besides the public one and the loopback names
    # (an internal name a load balancer uses, say). None by default.
    extra_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    redis_url: str | None = None
    public_rate_limit_per_minute: int = Field(default=20, ge=1)
    # GETs (and any other method but POST) per client IP and endpoint: pages, link
    # checks, diagrams, /metrics, static files. /health and /ready are never limited.
    public_get_rate_limit_per_minute: int = Field(default=60, ge=1)
    # Any request to the support API per client IP and endpoint (a request with a bad
    # key is audited, so it must not come free).
    support_rate_limit_per_minute: int = Field(default=600, ge=1)
    # Several API processes must share the CSRF secret of the forms.
    csrf_secret: SecretStr | None = None
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # `recovery serve`: a request's headers must arrive within the first timeout (of its
    # first byte, or of the connection), its body within the second (of the headers),
    # else 408 and the connection is closed; past `http_max_connections` open
    # connections new requests get 503. Handler time and idle keep-alive are not counted.
    http_header_timeout_seconds: float = Field(default=10.0, gt=0)
    http_body_timeout_seconds: float = Field(default=30.0, gt=0)
    http_max_connections: int = Field(default=1000, ge=1)
    # /metrics is never public (it would tell, read before and after a request,
    # whether an address has an account). With RECOVERY_METRICS_TOKEN it answers on
    # the service's own port to `Authorization: Bearer <token>` only; with
    # RECOVERY_METRICS_LISTEN (host:port) `recovery serve` opens a second socket there
    # that answers /metrics and nothing else, and the public port does not serve it
    # (both set: the listener wants the token too). With neither, /metrics is not
    # served at all (404): the safe default.
    metrics_token: SecretStr | None = None
    metrics_listen: str | None = None

    @field_validator("public_base_url")
    @classmethod
    def _public_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL such as https://example.com")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value.rstrip("/")

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _trusted_proxies(cls, value: object) -> object:
        value = _comma_list(value)
        if isinstance(value, (tuple, list)):
            for address in value:
                ipaddress.ip_network(address, strict=False)  # ValueError names it
        return value

    @field_validator("extra_allowed_hosts", mode="before")
    @classmethod
    def _extra_allowed_hosts(cls, value: object) -> object:
        value = _comma_list(value)
        if isinstance(value, (tuple, list)):
            value = tuple(str(name).lower() for name in value)
            for name in value:
                if not re.fullmatch(r"[a-z0-9.-]+|\[?[0-9a-f:]+\]?", name):
                    raise ValueError(f"not a host name: {name!r}")
        return value

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_METRICS_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_METRICS_TOKEN_CHARS} characters")
        return value

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_listen(cls, value: str | None) -> str | None:
        if value is not None:
            _host_port(value)  # ValueError says what is wrong
        return value

    @property
    def public_host(self) -> str:
        """The host name the service answers to (and builds links with)."""
        host = urlsplit(self.public_base_url).hostname
        assert host is not None
        return host

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Where the metrics listener binds (RECOVERY_METRICS_LISTEN), or None."""
        return _host_port(self.metrics_listen) if self.metrics_listen else None


class MailSettings(BaseModel):
    """How mail leaves (`api/mail`): the transport, the sender, the retries."""

    mail_url: str = "file://./var/mail"
    # The address emails come from. A display name written here ("Acme <no-reply@...>")
    # is used in every language; without one the brand's name is (see BrandSettings).
    mail_from: str = "no-reply@localhost"
    mail_max_tries: int = Field(default=5, ge=1)
    mail_retry_base_seconds: float = Field(default=2.0, gt=0)
    mail_timeout_seconds: float = Field(default=10.0, gt=0)

    @field_validator("mail_url")
    @classmethod
    def _mail_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme == "file":
            if not (parts.netloc + parts.path):
                raise ValueError("file:// needs a directory, e.g. file://./var/mail")
        elif parts.scheme in ("smtp", "smtps"):
            if not parts.hostname:
                raise ValueError("smtp:// needs a host, e.g. smtp://user:pass@host:587?starttls=1")
            query = parse_qs(parts.query)
            for flag in ("starttls", "tls"):
                if flag in query and query[flag][-1] not in ("0", "1", "true", "false"):
                    raise ValueError(f"{flag} must be 0 or 1")
        else:
            raise ValueError("must start with smtp://, smtps:// or file://")
        return value

    @property
    def mail_dir(self) -> Path | None:
        """The directory of the file transport, or None for SMTP."""
        parts = urlsplit(self.mail_url)
        if parts.scheme != "file":
            return None
        return Path(parts.netloc + parts.path)


MAX_BRAND_NAME_CHARS = 60
MAX_LOGO_BYTES = 256 * 1024
LOGO_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".webp", ".gif")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class BrandSettings(BaseModel):
    """Who the pages and emails speak for, and how a person reaches support (`api/brand.py`).

    Without a name the pages and emails use the public host name; without a
    support address or page they point to the self-service way and never
    promise a support they cannot reach.
    """

    brand_name: str | None = None
    # An image file (PNG, SVG, JPEG, WebP or GIF, at most 256 KiB) the service serves itself.
    brand_logo: Path | None = None
    support_email: str | None = None
    support_url: str | None = None
    # The product's own site: where the signed-in page's "Continue" leads (none: no button).
    brand_url: str | None = None
    # The emails' sender display name per language (else MAIL_FROM's own, else the brand).
    mail_sender_name_en: str | None = None
    mail_sender_name_fr: str | None = None

    @field_validator("brand_name", "mail_sender_name_en", "mail_sender_name_fr")
    @classmethod
    def _display_name(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if _CONTROL_CHARS.search(value):
            raise ValueError("must be one line of text")
        if len(value.strip()) > MAX_BRAND_NAME_CHARS:
            raise ValueError(f"must be at most {MAX_BRAND_NAME_CHARS} characters")
        return value.strip()

    @field_validator("brand_logo")
    @classmethod
    def _brand_logo(cls, value: Path | None) -> Path | None:
        if value is None or not str(value).strip():
            return None
        if value.suffix.lower() not in LOGO_SUFFIXES:
            raise ValueError(f"must be an image file ({', '.join(LOGO_SUFFIXES)})")
        if not value.is_file():
            raise ValueError(f"no such file: {value}")
        if value.stat().st_size > MAX_LOGO_BYTES:
            raise ValueError(f"must be at most {MAX_LOGO_BYTES // 1024} KiB")
        return value.resolve()

    @field_validator("support_email")
    @classmethod
    def _support_email(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        local, at, domain = value.rpartition("@")
        if (
            not at
            or not local
            or "." not in domain
            or _CONTROL_CHARS.search(value)
            or any(c in value for c in ' ,;<>"()[]')
        ):
            raise ValueError("must be one email address, e.g. help@example.com")
        return value

    @field_validator("support_url", "brand_url")
    @classmethod
    def _support_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL such as https://example.com/help")
        if _CONTROL_CHARS.search(value) or " " in value:
            raise ValueError("must be one URL without spaces")
        return value


class WorkerSettings(BaseModel):
    """The worker that runs every flow's automatic work (`engine/worker.py`)."""

    dispatch_lease_seconds: int = Field(default=60, ge=5)
    dispatch_poll_seconds: float = Field(default=0.5, gt=0)


class AccountSettings(BaseModel):
    """Accounts and sign-in (`api/accounts`): the policy, hashing, sessions, slow-down."""

    password_policy: Literal["classic", "nist"] = "classic"
    max_concurrent_hashes: int = Field(default=2, ge=1)
    session_ttl_minutes: int = Field(default=12 * 60, ge=1)
    login_free_failures: int = Field(default=5, ge=1)
    login_failure_window_minutes: int = Field(default=15, ge=1)
    # How long a browser that signed in on the login page is remembered (its device
    # cookie): failures typed elsewhere do not slow its sign-ins down.
    login_device_days: int = Field(default=180, ge=1)


class AdminSettings(BaseModel):
    """The admin API (`api/admin`, `api/web/admin.py`): bringing accounts in."""

    # One import request (or `recovery accounts import` file) is one all-or-nothing batch.
    admin_import_max_rows: int = Field(default=50_000, ge=1)
    admin_import_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)


class WebhookSettings(BaseModel):
    """Signed webhooks (`api/webhooks`): where they may go, how long a try may take, how
    long a delivery is retried before it is dead-lettered."""

    # A URL that resolves to a loopback, private or link-local address is refused unless
    # this is true (a test receiver on 127.0.0.1, an internal service on purpose).
    webhooks_allow_private: bool = False
    webhooks_timeout_seconds: float = Field(default=5.0, gt=0)
    # Retries wait this long, doubled at each try, at most `webhooks_retry_max_seconds`.
    webhooks_retry_base_seconds: float = Field(default=10.0, gt=0)
    webhooks_retry_max_seconds: float = Field(default=3600.0, gt=0)
    webhooks_give_up_hours: float = Field(default=24.0, gt=0)


class SupportConsoleSettings(BaseModel):
    """The support console (`api/web/console.py`, `api/support/agents.py`): agents' sessions."""

    # A console session ends after this long without a request, and in any case this
    # long after its sign-in.
    support_session_idle_minutes: int = Field(default=30, ge=1)
    support_session_max_hours: int = Field(default=12, ge=1)
    # Wrong second-factor codes a half-open session may take before it is ended.
    support_max_code_failures: int = Field(default=5, ge=1)


# -- flows -------------------------------------------------------------------------


class PasswordRecoverySettings(BaseModel):
    """The password-recovery flow (`flows/password_recovery.py`)."""

    link_ttl_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60)
    # Throttles (SPEC §4), keyed on the address whether or not it has an account.
    emails_per_hour: int = Field(default=3, ge=1)
    resend_cooldown_seconds: int = Field(default=60, ge=0)
    # The one-time code beside the link (version 2 of the flow): its length, and the
    # wrong codes judged per attempt and per address before the code stops working
    # (the second counts across attempts until a successful recovery). README,
    # "A code beside the link", states what these bound.
    code_digits: int = Field(default=6, ge=6, le=12)
    code_max_wrong_per_attempt: int = Field(default=5, ge=1)
    code_max_wrong_per_account: int = Field(default=10, ge=1)
    # A refused code is answered on the next multiple of this many milliseconds after
    # the try began, so its time does not tell an address with an account from one without.
    code_refusal_floor_ms: int = Field(default=50, ge=0, le=5000)


class AssistedRecoverySettings(BaseModel):
    """Support-handled recovery, "I can't access this email" (`flows/assisted_recovery.py`).

    Its requests share the email route's throttles (`emails_per_hour`,
    `resend_cooldown_seconds`), keyed on the account's address and on the contact
    address alike.
    """

    # The waiting period between a support agent's approval and the grant link (72 h by
    # default). Each case records it when approved: no agent can shorten a running one.
    assisted_wait_minutes: int = Field(default=4320, ge=1)
    # A confirmed case nobody has reviewed after this many days is flagged overdue.
    assisted_review_days: int = Field(default=3, ge=1)


# -- the whole ---------------------------------------------------------------------


class Settings(
    DatabaseSettings,
    HttpSettings,
    MailSettings,
    BrandSettings,
    WorkerSettings,
    AccountSettings,
    AdminSettings,
    WebhookSettings,
    SupportConsoleSettings,
    PasswordRecoverySettings,
    AssistedRecoverySettings,
    BaseSettings,
):
    """Every knob of the service, with production defaults (see each section)."""

    model_config = SettingsConfigDict(env_prefix="RECOVERY_", frozen=True, extra="ignore")

    @model_validator(mode="after")
    def _lease_outlives_a_send(self) -> Settings:
        # A worker's claim must outlast one SMTP send, or a slow send is claimed
        # and sent again by another worker.
        if self.dispatch_lease_seconds < 2 * self.mail_timeout_seconds:
            raise ValueError(
                "RECOVERY_DISPATCH_LEASE_SECONDS must be at least twice "
                "RECOVERY_MAIL_TIMEOUT_SECONDS"
            )
        return self


def _host_port(value: str) -> tuple[str, int]:
    """`127.0.0.1:9100` → ("127.0.0.1", 9100); `[::1]:9100` → ("::1", 9100)."""
    parts = urlsplit(f"//{value.strip()}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or port == 0 or parts.path or parts.username:
        raise ValueError("must be host:port, e.g. 127.0.0.1:9100")
    return parts.hostname, port


class SettingsError(Exception):
    """Configuration that cannot start the service; the message names the variable."""


def settings_from_env(**overrides: object) -> Settings:
    """Read `RECOVERY_*` now; turn validation errors into one line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except EnvParseError as exc:
        # pydantic-settings fails before validation when a value cannot be decoded,
        # naming the field: name the variable instead.
        found = re.search(r'field "(\w+)"', str(exc))
        variable = f"RECOVERY_{found.group(1).upper()}" if found else "a RECOVERY_* variable"
        raise SettingsError(f"{variable}: cannot be parsed") from None
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["loc"]:
                lines.append(f"RECOVERY_{str(err['loc'][0]).upper()}: {message}")
            else:
                lines.append(message)  # a rule across variables names them itself
        raise SettingsError("; ".join(lines)) from None
