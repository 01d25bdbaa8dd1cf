"""Support's resend rules: one decision, one email, and never past the limits unknowingly.

A resend is refused, with the moment it becomes possible, while the address
got (or is about to get) an email less than the flow's cooldown ago, and while
the emails of the last hour reach the flow's hourly limit; an agent may
override either with a reason, which the audit log keeps with the rule
overridden.

The flow tells the facts, through its `resend_limits` hook: its cooldown, its
hourly limit, and each recent email of the address (sent, or queued and about
to be). The rules here decide, for every flow alike.

Two clicks a second apart send one email: resends of an address are
serialised (a lock in the process, and a PostgreSQL advisory lock across
processes; SQLite has one writer process), so the second click sees the
first's queued attempt inside the cooldown. An override can name the newest
email the agent saw (`expected_latest`): if another has been queued since, the
resend is refused too, so a double click sends one even with no cooldown, and a
double click on "resend anyway" also sends one.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, literal, select

from api.errors import RecoveryError
from engine import Database

# The window the hourly limit counts over.
HOURLY_WINDOW = timedelta(hours=1)
# First key of the PostgreSQL advisory locks taken per address resent ("rsnd").
RESEND_LOCK_CLASS = 0x72736E64
COOLDOWN = "resend_cooldown"
HOURLY_LIMIT = "hourly_limit"
# An override refused because another email was queued after the one the agent saw.
NEWER_EMAIL = "newer_email"


@dataclass(frozen=True)
class Sent:
    """One email of the address: when it went (or was queued), and for which attempt."""

    at: datetime
    attempt_id: uuid.UUID


@dataclass(frozen=True)
class ResendLimits:
    """What a flow's `resend_limits` hook tells: its limits and the address's recent emails."""

    cooldown: timedelta
    per_hour: int
    sent: Sequence[Sent]


@dataclass(frozen=True)
class Blocked:
    """Why a resend may not happen now, and when it may."""

    rule: str
    possible_at: datetime
    latest: uuid.UUID | None


class ResendRefused(RecoveryError):
    """A resend inside the cooldown or past the hourly limit, without an override; or an
    override whose agent had not seen the newest email."""

    code = "resend_refused"

    def __init__(self, blocked: Blocked, now: datetime) -> None:
        when = blocked.possible_at.isoformat()
        if blocked.rule == COOLDOWN:
            text = "an email went to this address moments ago; a resend is possible at {when}"
        elif blocked.rule == HOURLY_LIMIT:
            text = "this address had its emails for the hour; a resend is possible at {when}"
        else:
            text = "another email was queued for this address since; look again before resending"
        super().__init__(
            text,
            details=[
                {
                    "rule": blocked.rule,
                    "possible_at": when,
                    "latest_attempt_id": str(blocked.latest) if blocked.latest else None,
                }
            ],
            params={"when": when},
        )
        self.blocked = blocked
        self.retry_after = max(1, int((blocked.possible_at - now).total_seconds() + 0.999))


def blocked_at(limits: ResendLimits, now: datetime) -> Blocked | None:
    """What stops a resend at `now`, with the moment both rules let it through; None when
    nothing does."""
    sent = sorted(limits.sent, key=lambda s: s.at)
    latest = sent[-1].attempt_id if sent else None
    blocks: list[Blocked] = []
    if sent and limits.cooldown and now < sent[-1].at + limits.cooldown:
        blocks.append(Blocked(COOLDOWN, sent[-1].at + limits.cooldown, latest))
    recent = [s for s in sent if s.at > now - HOURLY_WINDOW]
    if len(recent) >= limits.per_hour:
        # Possible once enough of them have left the window.
        leaving = recent[len(recent) - limits.per_hour]
        blocks.append(Blocked(HOURLY_LIMIT, leaving.at + HOURLY_WINDOW, latest))
    return max(blocks, key=lambda b: b.possible_at) if blocks else None


def latest_email(limits: ResendLimits) -> uuid.UUID | None:
    """The attempt of the address's newest email, if any."""
    sent = sorted(limits.sent, key=lambda s: s.at)
    return sent[-1].attempt_id if sent else None


class ResendLock:
    """Resends of one address, one at a time (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._local = threading.Lock()

    @contextlib.contextmanager
    def held(self, subject: str) -> Iterator[None]:
        with self._local:
            if self.db.is_sqlite:
                yield
                return
            # A transaction-level lock, released when this transaction ends (after the
            # resend's own transaction has committed in another connection).
            with self.db.transaction() as conn:
                key = func.hashtext(literal(subject))
                conn.execute(select(func.pg_advisory_xact_lock(RESEND_LOCK_CLASS, key)))
                yield
