"""Errors of the recovery domain, each carrying what the HTTP layer needs to answer.

`RecoveryError` is the base and never raised itself. Messages never contain a
token, password, hash or session token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from api.i18n import DEFAULT, gettext, ngettext
from engine.errors import EngineError


class RecoveryError(Exception):
    """Base of the domain's errors; never raised directly.

    `message` is an English text whose `{placeholders}` are filled from `params`: the
    text is also the message id of its translations (`api/locale/*/errors.po`), so the
    HTTP layer answers in the request's language (`in_language`). With `plural`, the
    text is the singular and `plural` the plural form, picked by `params["count"]`.
    """

    code = "recovery_error"

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        params: Mapping[str, Any] | None = None,
        plural: str | None = None,
    ) -> None:
        self.template = message
        self.plural = plural
        self.params = dict(params or {})
        self.message = self.in_language(DEFAULT)
        super().__init__(self.message)
        self.details = details or []

    def in_language(self, locale: str) -> str:
        """The message in `locale` (English where no translation exists)."""
        if self.plural is not None:
            params = dict(self.params)
            count = int(params.pop("count", 0))
            return ngettext(locale, self.template, self.plural, count, **params)
        return gettext(locale, self.template, **self.params)

    def details_in(self, locale: str) -> list[dict[str, Any]]:
        """The details, each `message` in `locale` (the texts are message ids too)."""
        return [
            {**d, "message": gettext(locale, d["message"], **self.params)}
            if isinstance(d.get("message"), str)
            else dict(d)
            for d in self.details
        ]


class InvalidInput(RecoveryError):
    """A field is not what it must be (wrong type, malformed, too long).

    `message` may hold `{placeholders}` filled from `params` (write
    `InvalidInput("limit", "limit must be between 1 and {most}", most=200)`, never an
    f-string, so the text can be translated).
    """

    code = "invalid_input"

    def __init__(self, field: str, message: str, **params: Any) -> None:
        super().__init__(message, details=[{"field": field, "message": message}], params=params)
        self.field = field


class UnknownToken(RecoveryError):
    """No link carries this token (never issued, or malformed)."""

    code = "unknown_token"

    def __init__(self) -> None:
        super().__init__("this link is not valid")


class InvalidCode(RecoveryError):
    """A recovery code that opens nothing: wrong, past its limit of wrong codes, or typed
    for an address with no code (or no account) at all. One answer for all of them,
    so it tells nobody which addresses have an account."""

    code = "invalid_code"

    def __init__(self) -> None:
        super().__init__(
            "this code does not open a recovery for this address: check it, or use the "
            "link in the email (a code stops working after too many wrong tries)"
        )


class LinkDead(RecoveryError):
    """The link existed but can no longer be used; never raised itself.

    Each way a link dies has its own class and stable code, so a client can
    tell the person which it was (SPEC §3); `reason` names it for the pages.
    """

    code = "link_dead"
    reason = "dead"
    text = "this link can no longer be used"

    def __init__(self, reference: str | None = None) -> None:
        super().__init__(self.text)
        # The attempt's support reference, so the page can show it.
        self.reference = reference


class LinkExpired(LinkDead):
    """The link ran past its deadline."""

    code = "link_expired"
    reason = "expired"
    text = "this link can no longer be used: it has expired"


class LinkSuperseded(LinkDead):
    """A newer link was emailed for the same account (or the password changed since)."""

    code = "link_superseded"
    reason = "superseded"
    text = "this link can no longer be used: a newer one was sent"


class LinkCancelled(LinkDead):
    """The person ("this wasn't me") or support cancelled the attempt."""

    code = "link_cancelled"
    reason = "cancelled"
    text = "this link can no longer be used: the request was cancelled"


class LinkUsed(LinkDead):
    """The link already set a password."""

    code = "link_used"
    reason = "used"
    text = "this link can no longer be used: it was already used"


class LinkRevoked(LinkDead):
    """The link was withdrawn while its email was on its way (the password changed meanwhile)."""

    code = "link_revoked"
    reason = "revoked"
    text = "this link can no longer be used: it was withdrawn"


DEAD_LINKS: dict[str, type[LinkDead]] = {
    cls.reason: cls for cls in (LinkExpired, LinkSuperseded, LinkCancelled, LinkUsed, LinkRevoked)
}


class PolicyFailed(RecoveryError):
    """The new password breaks one or more rules; `violations` lists every one."""

    code = "password_policy"

    def __init__(self, violations: list[Any], locale: str) -> None:
        super().__init__(
            "the new password does not meet the password rules",
            details=[v.as_dict(locale) for v in violations],
        )
        self.violations = violations


class LoginFailed(RecoveryError):
    """Wrong address or password: one generic answer for both."""

    code = "invalid_credentials"

    def __init__(self) -> None:
        super().__init__("the email address or password is incorrect")


class LoginSlowedDown(RecoveryError):
    """Too many recent failures for this address: try again after `retry_after` seconds."""

    code = "login_slowed_down"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "too many failed attempts; try again in {count} second",
            plural="too many failed attempts; try again in {count} seconds",
            params={"count": retry_after},
        )
        self.retry_after = retry_after


class SessionInvalid(RecoveryError):
    """The session token is unknown, expired or revoked."""

    code = "invalid_session"

    def __init__(self) -> None:
        super().__init__("not signed in")


class AccountExists(RecoveryError):
    """An account already has this (normalised) address."""

    code = "account_exists"

    def __init__(self) -> None:
        super().__init__("an account with this email address already exists")


class ContactCodeInvalid(RecoveryError):
    """A support-handled recovery's confirmation code that opens nothing: wrong, dead, or
    for an address without a case waiting; one answer for all of them."""

    code = "invalid_code"

    def __init__(self) -> None:
        super().__init__("this code is not valid for this address")


class AddressTaken(RecoveryError):
    """Support-handled recovery cannot give an account an address another account has."""

    code = "address_taken"

    def __init__(self) -> None:
        super().__init__("the new address already belongs to another account; contact support")


def describe(exc: BaseException) -> str:
    """A loggable description of an error that cannot carry a secret.

    Database errors quote statement parameters (token hashes among them), so
    only their type is told; the messages of our own errors carry no secrets.
    """
    if isinstance(exc, SQLAlchemyError):
        orig = getattr(exc, "orig", None)
        return f"{type(exc).__name__}({type(orig).__name__ if orig else ''})"
    if isinstance(exc, EngineError | RecoveryError) or getattr(exc, "safe_to_log", False):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__
