"""The password-recovery flow: "Forgot password?" from request to sign-in.

Reads like its diagram (diagrams/password_recovery.mmd): states, then
transitions, then the guards that choose between them. Guards decide only
from the facts the caller gathered and passed as event parameters; nothing
here touches the database, the mail or the clock.
"""

from __future__ import annotations

from datetime import timedelta

from statemachine import State, StateMachine

from engine import Deadline, FlowSpec

NAME = "password_recovery"
LIVE_STATES = ("emailed", "link_opened")


class PasswordRecovery(StateMachine):
    """One recovery attempt."""

    # -- states --------------------------------------------------------
    requested = State(initial=True)
    emailed = State()
    link_opened = State()
    password_set = State()
    logged_in = State(final=True)
    expired = State(final=True)
    cancelled = State(final=True)
    superseded = State(final=True)
    unknown_account = State(final=True)
    throttled = State(final=True)
    undeliverable = State(final=True)

    # -- transitions ---------------------------------------------------
    # Throttles come first: they key on the address, whether or not it has an account.
    dispatch = (
        requested.to(throttled, cond="over_limit")
        | requested.to(unknown_account, cond="account_unknown")
        | requested.to(emailed, cond="mail_accepted")
    )
    bounce = requested.to(undeliverable)
    open_link = emailed.to(link_opened, cond="token_valid") | link_opened.to.itself(
        cond="token_valid"
    )
    set_password = link_opened.to(password_set, cond=["token_valid", "password_accepted"])
    log_in = password_set.to(logged_in, cond="signed_in")
    expire = requested.to(expired) | emailed.to(expired) | link_opened.to(expired)
    cancel = requested.to(cancelled) | emailed.to(cancelled) | link_opened.to(cancelled)
    supersede = emailed.to(superseded) | link_opened.to(superseded)

    # -- guards --------------------------------------------------------
    def over_limit(self, throttled: bool = False) -> bool:
        return throttled

    def account_unknown(self, account_exists: bool = False) -> bool:
        return not account_exists

    def mail_accepted(self, mail_accepted: bool = False) -> bool:
        return mail_accepted

    def token_valid(self, token_valid: bool = False) -> bool:
        return token_valid

    def password_accepted(self, password_accepted: bool = False) -> bool:
        return password_accepted

    def signed_in(self, signed_in: bool = False) -> bool:
        return signed_in


def spec(
    link_ttl: timedelta = timedelta(minutes=60), request_ttl: timedelta = timedelta(hours=24)
) -> FlowSpec:
    """The flow with its deadlines: the link dies `link_ttl` after it is emailed."""
    return FlowSpec(
        name=NAME,
        machine=PasswordRecovery,
        version=1,
        description='"Forgot password?": request, email a link, set a new password, sign in.',
        deadlines={
            "requested": Deadline(request_ttl, "expire"),
            "emailed": Deadline(link_ttl, "expire"),
            # Opening the link does not extend its life.
            "link_opened": Deadline(link_ttl, "expire", restart=False),
        },
    )
