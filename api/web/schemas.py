"""The JSON bodies the API reads and writes, as strict msgspec structs.

Request bodies forbid unknown fields, and each field has exactly one type, so
a list or an object where a string belongs is a 400 before any handler runs.
Response structs double as the OpenAPI schema. Nothing here carries a
password hash, a link token's hash, or a support key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

# Bounds that keep a hostile body cheap; the real checks (email syntax, token
# shape, password policy) happen in the domain, which reports them clearly.
EmailField = Annotated[str, Meta(max_length=1024, description="one email address")]
TokenField = Annotated[str, Meta(max_length=1024, description="the token from the emailed link")]
PasswordField = Annotated[str, Meta(description="the new password (NFKC-normalised, 12-128 chars)")]


class _Strict(Struct, forbid_unknown_fields=True, frozen=True):
    """A request body: unknown fields are refused."""


# -- errors ---------------------------------------------------------------


class ErrorInfo(Struct, frozen=True):
    code: Annotated[str, Meta(description="stable, machine-readable error code")]
    message: Annotated[str, Meta(description="a sentence for people; never carries a secret")]
    details: list[dict[str, Any]] = msgspec.field(default_factory=list)


class ErrorBody(Struct, frozen=True):
    """The one shape of every JSON error."""

    error: ErrorInfo


# -- public API -----------------------------------------------------------


class RecoveryRequest(_Strict):
    email: EmailField


class TokenBody(_Strict):
    token: TokenField


CodeField = Annotated[
    str, Meta(max_length=64, description="the one-time code from the email (its digits)")
]


class CodeBody(_Strict):
    email: EmailField
    code: CodeField


class PasswordBody(_Strict):
    token: TokenField
    password: PasswordField
    password_confirm: PasswordField


class LoginBody(_Strict):
    email: EmailField
    password: Annotated[str, Meta(description="the account's password")]


class Accepted(Struct, frozen=True):
    status: str = "accepted"


class Verified(Struct, frozen=True):
    attempt_id: str
    state: Literal["link_opened"]
    expires_at: datetime | None


class CodeOpened(Struct, frozen=True):
    attempt_id: str
    state: Literal["link_opened"]
    expires_at: datetime | None
    token: Annotated[
        str,
        Meta(
            description="a fresh token for POST /api/recovery/password (and /verify, "
            "/cancel), bound to this attempt; shown only here, it dies with the link"
        ),
    ]


class StateAnswer(Struct, frozen=True):
    state: str


class SessionCreated(Struct, frozen=True):
    session_token: Annotated[str, Meta(description="bearer token for /api/session, /api/logout")]
    expires_at: datetime
    account_id: Annotated[str, Meta(description="the id of the account that signed in")]


class SessionNotice(Struct, frozen=True):
    """Something a flow tells every signed-in session of the account."""

    flow: Annotated[str, Meta(examples=["assisted_recovery"])]
    reference: Annotated[str, Meta(description="the case's support reference")]
    state: str
    requested_at: datetime
    effective_at: Annotated[
        datetime | None, Meta(description="when the change happens (null until approved)")
    ]
    message: Annotated[str, Meta(description="the notice, in the account's language")]


class SessionAnswer(Struct, frozen=True):
    email_masked: str
    expires_at: datetime
    account_id: Annotated[str, Meta(description="who signed in: the account's id")]
    locale: Annotated[str, Meta(description="the account's language (en or fr)")]
    notices: Annotated[
        list[SessionNotice],
        Meta(description="what the account's owner must know now (empty when nothing)"),
    ] = msgspec.field(default_factory=list)


# -- support API ----------------------------------------------------------


class CancelBody(_Strict):
    reason: Annotated[str, Meta(min_length=1, max_length=500)]


class ResendBody(_Strict):
    """The link goes to the address stored on the account: no address, token or password.

    `override_reason` resends inside the cooldown or past the hourly limit (audited);
    `expected_latest` is the attempt id of the newest email the caller saw ("" for none): if
    another email was queued since, the resend (overridden or not) is refused."""

    override_reason: Annotated[str, Meta(min_length=1, max_length=500)] | None = None
    expected_latest: Annotated[str, Meta(max_length=64)] | None = None


class AttemptItem(Struct, frozen=True):
    id: str
    reference: str
    flow: str
    state: str
    email_masked: str
    created_at: datetime
    updated_at: datetime
    deadline_at: datetime | None


class AttemptPage(Struct, frozen=True):
    items: list[AttemptItem]
    next_cursor: str | None


class Delivery(Struct, frozen=True):
    status: Annotated[str, Meta(description="queued | retrying | sent | failed | none")]
    tries: int
    last_error: str | None
    sent_at: str | None


class TimelineEntry(Struct, frozen=True):
    seq: int
    event: str
    from_: str | None = msgspec.field(name="from")
    to: str | None = None
    actor: str = ""
    at: datetime | None = None
    accepted: bool = True
    detail: dict[str, Any] = msgspec.field(default_factory=dict)


class SupportAttempt(Struct, frozen=True):
    id: str
    reference: Annotated[str, Meta(description="the short reference a person reads out")]
    flow: str
    flow_version: Annotated[int, Meta(description="the version of the flow it runs on")]
    state: str
    created_at: datetime
    updated_at: datetime
    deadline_at: datetime | None
    email_masked: str
    locale: str
    route: Annotated[
        str | None,
        Meta(description="how the person opened it: link or code (null until then)"),
    ]
    client_ip: str | None
    user_agent: str | None
    delivery: Delivery
    timeline: list[TimelineEntry]
    allowed_events: Annotated[list[str], Meta(description="every event its state allows now")]
    support_events: Annotated[
        list[str], Meta(description="the events support may fire now (POST .../events/{event})")
    ]
    flow_detail: Annotated[
        dict[str, Any],
        Meta(
            description=(
                "fields the attempt's flow adds to its detail ({} when none). "
                "assisted_recovery: the case (account found or not, the statement and "
                "details whole, a match signal per detail given: match | no_match | "
                "not_on_file, the contact address masked, the exchanges, the wait)"
            )
        ),
    ]


class ResendAnswer(Struct, frozen=True):
    attempt_id: str
    state: str
    reference: str
    resend_of: str


class FunnelStep(Struct, frozen=True):
    step: str
    count: int
    conversion: Annotated[
        float | None, Meta(description="share of the previous step that reached this one")
    ]
    median_seconds: Annotated[
        float | None, Meta(description="median time from the previous step to this one")
    ]


class Stats(Struct, frozen=True):
    flow: str
    since: datetime
    until: datetime
    total: int
    states: dict[str, int]
    funnel: list[FunnelStep]


class AuditItem(Struct, frozen=True):
    id: int
    key_name: str
    action: str
    target: str | None
    at: datetime
    detail: dict[str, Any]


class AuditPage(Struct, frozen=True):
    items: list[AuditItem]
    next_cursor: str | None


# -- flows and operations -------------------------------------------------


class FlowSummary(Struct, frozen=True):
    name: str
    version: int
    description: str


class FlowList(Struct, frozen=True):
    items: list[FlowSummary]


class Health(Struct, frozen=True):
    status: str


class Ready(Struct, frozen=True):
    status: str
    database: bool
    migrations: bool
