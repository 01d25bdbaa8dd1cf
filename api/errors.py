"""Errors of the recovery domain, each carrying what the HTTP layer needs to answer.

`RecoveryError` is the base and never raised itself. Messages never contain a
token, password, hash or session token.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from engine.errors import EngineError


class RecoveryError(Exception):
    """Base of the domain's errors; never raised directly."""

    code = "recovery_error"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class InvalidInput(RecoveryError):
    """A field is not what it must be (wrong type, malformed, too long)."""

    code = "invalid_input"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, details=[{"field": field, "message": message}])
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

    def __init__(self, reference: str | None = None) -> None:
        super().__init__(f"this link can no longer be used ({self.reason})")
        # The attempt's support reference, so the page can show it.
        self.reference = reference


class LinkExpired(LinkDead):
    """The link ran past its deadline."""

    code = "link_expired"
    reason = "expired"


class LinkSuperseded(LinkDead):
    """A newer link was emailed for the same account (or the password changed since)."""

    code = "link_superseded"
    reason = "superseded"


class LinkCancelled(LinkDead):
    """The person ("this wasn't me") or support cancelled the attempt."""

    code = "link_cancelled"
    reason = "cancelled"


class LinkUsed(LinkDead):
    """The link already set a password."""

    code = "link_used"
    reason = "used"


class LinkRevoked(LinkDead):
    """The link was withdrawn while its email was on its way (the password changed meanwhile)."""

    code = "link_revoked"
    reason = "revoked"


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
        super().__init__(f"too many failed attempts; try again in {retry_after} seconds")
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
