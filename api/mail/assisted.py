"""The emails of support-handled recovery ("I can't access this email"), in one language each.

To the contact address the person gave, in the language they asked in:
- `code_email`: the code that confirms the address is theirs;
- `info_email`: support's question, with a link to the form that answers it;
- `grant_email`: the link to choose a new password, once the waiting period is over;
- `closed_email`: "we could not verify your request" (a denial, a cancellation, or a case
  for an address without an account: the same words, so they tell nothing apart).

To the account's address, in the account's language:
- `notice_email`: someone asked to move the account to a new address (at confirmation,
  and again at approval with the moment it will happen), with a "this wasn't me" link;
- `moved_email`: the account's address and password were changed.

None greets the contact address by a name (it may not be the account's owner), none
carries a password, and the new address is always masked in what the old one receives.
Rendering, headers and languages are those of `api.mail.messages`.
"""

from __future__ import annotations

from datetime import datetime
from email.message import EmailMessage

from api.brand import Sender
from api.mail.messages import compose, format_time

CODE_SUBJECT = "Your confirmation code"
NOTICE_SUBJECT = "Someone asked to move your account to a new address"
APPROVED_SUBJECT = "Your account will move to a new address"
INFO_SUBJECT = "We need more information about your request"
GRANT_SUBJECT = "Choose a new password"
CLOSED_SUBJECT = "We could not verify your request"
MOVED_SUBJECT = "Your account's address was changed"
SUBJECTS = (
    CODE_SUBJECT,
    NOTICE_SUBJECT,
    APPROVED_SUBJECT,
    INFO_SUBJECT,
    GRANT_SUBJECT,
    CLOSED_SUBJECT,
    MOVED_SUBJECT,
)
# The notice's two moments.
SUBMITTED = "submitted"
APPROVED = "approved"


def code_email(
    *,
    locale: str,
    to: str,
    mail_from: str | Sender,
    code: str,
    expires_at: datetime,
    confirm_page: str,
    reference: str,
    sent_at: datetime | None = None,
) -> EmailMessage:
    """The confirmation code for the contact address, and where to type it."""
    return compose(
        "assisted_code",
        CODE_SUBJECT,
        locale=locale,
        to=to,
        name="",
        mail_from=mail_from,
        sent_at=sent_at,
        context={
            "code": code,
            "expires": format_time(expires_at, locale),
            "confirm_page": confirm_page,
            "reference": reference,
        },
    )


def notice_email(
    *,
    locale: str,
    to: str,
    mail_from: str | Sender,
    name: str,
    stage: str,
    new_address: str,
    requested_at: datetime,
    change_at: datetime | None,
    cancel_link: str,
    reference: str,
    sent_at: datetime | None = None,
) -> EmailMessage:
    """To the account's address: what was asked, when it would happen, "this wasn't me"."""
    if stage not in (SUBMITTED, APPROVED):
        raise ValueError(f"stage must be {SUBMITTED!r} or {APPROVED!r}")
    if stage == APPROVED and change_at is None:
        raise ValueError("an approved case has a moment of change")
    return compose(
        "assisted_notice",
        APPROVED_SUBJECT if stage == APPROVED else NOTICE_SUBJECT,
        locale=locale,
        to=to,
        name=name,
        mail_from=mail_from,
        sent_at=sent_at,
        context={
            "stage": stage,
            "new_address": new_address,
            "requested": format_time(requested_at, locale),
            "change": format_time(change_at, locale) if change_at else "",
            "cancel_link": cancel_link,
            "reference": reference,
        },
    )


def info_email(
    *,
    locale: str,
    to: str,
    mail_from: str | Sender,
    question: str,
    answer_link: str,
    reference: str,
    sent_at: datetime | None = None,
) -> EmailMessage:
    """Support's question, and the link to the form that answers it."""
    return compose(
        "assisted_info",
        INFO_SUBJECT,
        locale=locale,
        to=to,
        name="",
        mail_from=mail_from,
        sent_at=sent_at,
        context={"question": question, "answer_link": answer_link, "reference": reference},
    )


def grant_email(
    *,
    locale: str,
    to: str,
    mail_from: str | Sender,
    link: str,
    expires_at: datetime,
    reference: str,
    sent_at: datetime | None = None,
) -> EmailMessage:
    """The link to choose a new password; the address it goes to becomes the account's."""
    return compose(
        "assisted_grant",
        GRANT_SUBJECT,
        locale=locale,
        to=to,
        name="",
        mail_from=mail_from,
        sent_at=sent_at,
        context={
            "link": link,
            "expires": format_time(expires_at, locale),
            "reference": reference,
        },
    )


def closed_email(
    *,
    locale: str,
    to: str,
    mail_from: str | Sender,
    reference: str,
    recovery_page: str,
    sent_at: datetime | None = None,
) -> EmailMessage:
    """ "We could not verify your request": the same words whatever ended the case."""
    return compose(
        "assisted_closed",
        CLOSED_SUBJECT,
        locale=locale,
        to=to,
        name="",
        mail_from=mail_from,
        sent_at=sent_at,
        context={"reference": reference, "recovery_page": recovery_page},
    )


def moved_email(
    *,
    locale: str,
    to: str,
    mail_from: str | Sender,
    name: str,
    new_address: str,
    changed_at: datetime,
    reference: str,
    sent_at: datetime | None = None,
) -> EmailMessage:
    """To the old address: the account now uses a new address and a new password."""
    return compose(
        "assisted_moved",
        MOVED_SUBJECT,
        locale=locale,
        to=to,
        name=name,
        mail_from=mail_from,
        sent_at=sent_at,
        context={
            "new_address": new_address,
            "changed": format_time(changed_at, locale),
            "reference": reference,
        },
    )
