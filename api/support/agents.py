"""Support agents: the people who sign in to the console, their second factor and sessions.

An agent has an address, a name, a role (`read` or `write`, as support keys),
an Argon2 password (through the application's hasher, so the same profile and
the same bound on concurrent hashes as the accounts'), and a TOTP seed: a
`write` agent always has one, a `read` agent when asked. The seed is shown
once, when the agent is made (`recovery support-agent create`), and is kept
only to check codes; a code is accepted at most once (its time step is
remembered).

Signing in is the public sign-in's way: one generic failure for an unknown
address and a wrong password (an unknown address still costs one Argon2
verification), and failures slow further tries down with the same growing
delays, counted under a key of the console's own (`support-agent:<address>`),
so an agent's and a customer's failures never mix. Wrong second-factor codes
count as failures too, and a half-open session that takes too many is ended.

A session is a random token in an HttpOnly, SameSite=Strict cookie; only its
SHA-256 digest is stored. A password that checks out opens a half-open session
when the agent has a second factor: it reaches only the code form, and the
right code replaces it with a new session (a new token: the one seen before
the second factor is never the one that works after it). A session ends after
`support_session_idle_minutes` without a request, `support_session_max_hours`
after its sign-in, or when the agent signs out.

What agents do is audited under `label(agent)` (`agent:<address>`), and the
events they fire carry the actor `support:agent:<address>`.
"""

from __future__ import annotations

import hmac
import uuid
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyotp
from sqlalchemy import insert, or_, select, update

from api.accounts.addresses import InvalidEmail, normalise_email
from api.accounts.passwords import PasswordHasher
from api.accounts.policy import PasswordPolicy, PersonalData
from api.accounts.signin import SignIn
from api.accounts.tokens import new_token, plausible_token, token_hash
from api.errors import InvalidInput, LoginFailed, LoginSlowedDown, PolicyFailed, RecoveryError
from api.settings import SupportConsoleSettings
from api.support.models import SupportAgent, SupportAgentSession
from engine import Database
from engine.clock import Clock, as_utc

agent_t = SupportAgent.__table__
agent_session_t = SupportAgentSession.__table__

ROLES = ("read", "write")
LABEL_PREFIX = "agent:"
# The key sign-in failures of agents are counted under (never an address of an account).
FAILURE_KEY_PREFIX = "support-agent:"
# How long a half-open session waits for the second factor.
PENDING_TTL = timedelta(minutes=5)
# TOTP codes of the time step before and after the current one are accepted (clock drift).
TOTP_DRIFT_STEPS = 1
TOTP_ISSUER = "Account recovery support"
# The audit log's column for who did something holds 100 characters: "agent:" + address.
MAX_AGENT_EMAIL_CHARS = 100 - len(LABEL_PREFIX)
MAX_PASSWORD_CHARS = 4096


class AgentExists(RecoveryError):
    """Another agent already has this address."""

    code = "agent_exists"

    def __init__(self) -> None:
        super().__init__("a support agent with this email address already exists")


class CodeRefused(RecoveryError):
    """The second-factor code is wrong, reused, or the half-open session is gone."""

    code = "invalid_code"

    def __init__(self) -> None:
        super().__init__("the code is not valid; enter the current code of your app")


@dataclass(frozen=True)
class Agent:
    """An agent as the console knows them (never the password hash or the seed)."""

    id: uuid.UUID
    email: str
    name: str
    role: str
    time_zone: str
    has_second_factor: bool

    @property
    def label(self) -> str:
        """Who the audit log records for this agent."""
        return label(self.email)

    @property
    def can_write(self) -> bool:
        return self.role == "write"


@dataclass(frozen=True)
class Created:
    """A new agent, and the seed of their second factor (shown this once), if any."""

    agent: Agent
    totp_secret: str | None
    provisioning_uri: str | None


@dataclass(frozen=True)
class Opened:
    """A session just opened: its token (for the cookie), and whether it still waits for
    the second factor."""

    token: str
    agent: Agent
    needs_code: bool
    expires_at: datetime


def label(email: str) -> str:
    """Who the audit log records for the agent with this (normalised) address."""
    return f"{LABEL_PREFIX}{email}"


def _agent(row: Any) -> Agent:
    return Agent(
        id=row.id,
        email=row.email_normalized,
        name=row.name,
        role=row.role,
        time_zone=row.time_zone,
        has_second_factor=row.totp_secret is not None,
    )


def check_time_zone(name: str) -> str:
    """`name` if it is an IANA time zone this machine knows, else `InvalidInput`."""
    if name not in zoneinfo.available_timezones() and name != "UTC":
        raise InvalidInput("time_zone", "time zone must be an IANA name such as Europe/Paris")
    return name


class Agents:
    """Making agents, signing them in (password, then code), and their sessions."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        hasher: PasswordHasher,
        policy: PasswordPolicy,
        signin: SignIn,
        settings: SupportConsoleSettings,
    ) -> None:
        self.db = db
        self.clock = clock
        self.hasher = hasher
        self.policy = policy
        self.signin = signin
        self.settings = settings

    # -- making agents ---------------------------------------------------------------

    def create_sync(
        self,
        *,
        email: str,
        name: str,
        role: str,
        password: str,
        second_factor: bool = False,
        time_zone: str = "UTC",
    ) -> Created:
        """A new agent; a `write` agent always gets a TOTP seed, a `read` agent when
        `second_factor` is asked. The password must pass the accounts' policy."""
        try:
            normalised = normalise_email(email)
        except InvalidEmail as exc:
            raise InvalidInput("email", str(exc)) from None
        if len(normalised) > MAX_AGENT_EMAIL_CHARS:
            raise InvalidInput(
                "email", "email must be at most {most} characters", most=MAX_AGENT_EMAIL_CHARS
            )
        name = name.strip()
        if not name or len(name) > 200 or any(not c.isprintable() for c in name):
            raise InvalidInput("name", "name must be 1 to 200 printable characters")
        if role not in ROLES:
            raise InvalidInput("role", "role must be one of: {choices}", choices=", ".join(ROLES))
        check_time_zone(time_zone)
        violations = self.policy.check(password, password, PersonalData(name, email))
        if violations:
            raise PolicyFailed(violations, "en")
        secret = pyotp.random_base32() if (role == "write" or second_factor) else None
        row = {
            "id": uuid.uuid4(),
            "email": email.strip(),
            "email_normalized": normalised,
            "name": name,
            "role": role,
            "password_hash": self.hasher.hash_sync(password),
            "totp_secret": secret,
            "totp_last_step": None,
            "time_zone": time_zone,
            "created_at": self.clock.now(),
            "disabled_at": None,
        }
        with self.db.transaction() as conn:
            taken = conn.execute(
                select(agent_t.c.id).where(agent_t.c.email_normalized == normalised)
            ).first()
            if taken:
                raise AgentExists()
            conn.execute(insert(agent_t).values(**row))
        uri = None
        if secret is not None:
            uri = pyotp.TOTP(secret).provisioning_uri(name=normalised, issuer_name=TOTP_ISSUER)
        return Created(_agent(_Row(row)), secret, uri)

    def by_email_sync(self, email: str) -> Agent | None:
        with self.db.transaction(write=False) as conn:
            row = conn.execute(
                select(agent_t).where(
                    agent_t.c.email_normalized == email, agent_t.c.disabled_at.is_(None)
                )
            ).first()
        return _agent(row) if row else None

    def list_sync(self) -> list[Agent]:
        """Every agent still allowed in, by address."""
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(
                select(agent_t)
                .where(agent_t.c.disabled_at.is_(None))
                .order_by(agent_t.c.email_normalized)
            ).all()
        return [_agent(r) for r in rows]

    def set_time_zone_sync(self, agent_id: uuid.UUID, time_zone: str) -> None:
        check_time_zone(time_zone)
        with self.db.transaction() as conn:
            conn.execute(
                update(agent_t).where(agent_t.c.id == agent_id).values(time_zone=time_zone)
            )

    # -- signing in -----------------------------------------------------------------------

    def failure_key(self, email: str) -> str:
        return f"{FAILURE_KEY_PREFIX}{email}"

    async def sign_in(self, email: object, password: object) -> Opened:
        """The password step: `LoginSlowedDown` while slowed down, `LoginFailed` (one
        generic failure) for an unknown address, a disabled agent or a wrong password."""
        if not isinstance(email, str) or not isinstance(password, str):
            raise InvalidInput("email", "must be a string")
        if len(password) > MAX_PASSWORD_CHARS:
            raise InvalidInput("password", "password is too long")
        try:
            key = normalise_email(email)
        except InvalidEmail:
            key = email.strip().casefold()[:MAX_AGENT_EMAIL_CHARS]
        failures = self.failure_key(key)
        retry_after = await self.db.run(self.signin.delay_sync, failures, write=False)
        if retry_after > 0:
            raise LoginSlowedDown(retry_after)
        row = await self.db.run(self._credentials, key, write=False)
        if row is None:
            await self.hasher.verify_dummy(password)
            await self.db.run(self.signin.record_failure_sync, failures)
            raise LoginFailed()
        if not await self.hasher.verify(row.password_hash, password):
            await self.db.run(self.signin.record_failure_sync, failures)
            raise LoginFailed()
        agent = _agent(row)
        needs_code = agent.has_second_factor
        return await self.db.run(self._open, agent, verified=not needs_code)

    def _credentials(self, key: str) -> Any:
        with self.db.transaction(write=False) as conn:
            return conn.execute(
                select(agent_t).where(
                    agent_t.c.email_normalized == key, agent_t.c.disabled_at.is_(None)
                )
            ).first()

    def _open(self, agent: Agent, *, verified: bool) -> Opened:
        now = self.clock.now()
        token = new_token()
        lifetime = (
            timedelta(hours=self.settings.support_session_max_hours) if verified else PENDING_TTL
        )
        with self.db.transaction() as conn:
            conn.execute(
                insert(agent_session_t).values(
                    token_hash=token_hash(token),
                    agent_id=agent.id,
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + lifetime,
                    verified=verified,
                    code_failures=0,
                    revoked_at=None,
                )
            )
        if verified:
            # The slow-down ends with a complete sign-in.
            self.signin.clear_failures_sync(self.failure_key(agent.email))
        return Opened(token, agent, not verified, now + lifetime)

    async def second_factor(self, pending_token: object, code: object) -> Opened:
        """The code step: the right code of the half-open session's agent replaces it with
        a session (a new token); `CodeRefused` otherwise (counted as a failed sign-in),
        `LoginSlowedDown` while slowed down."""
        return await self.db.run(self._second_factor, pending_token, code)

    def _second_factor(self, pending_token: object, code: object) -> Opened:
        if not plausible_token(pending_token):
            raise CodeRefused()
        assert isinstance(pending_token, str)
        digest = token_hash(pending_token)
        now = self.clock.now()
        with self.db.transaction(write=False) as conn:
            found = conn.execute(
                select(agent_session_t, agent_t)
                .join(agent_t, agent_t.c.id == agent_session_t.c.agent_id)
                .where(
                    agent_session_t.c.token_hash == digest,
                    agent_session_t.c.verified.is_(False),
                    agent_session_t.c.revoked_at.is_(None),
                    agent_session_t.c.expires_at >= now,
                    agent_t.c.disabled_at.is_(None),
                )
            ).first()
        if found is None or found.totp_secret is None:
            raise CodeRefused()
        failures = self.failure_key(found.email_normalized)
        retry_after = self.signin.delay_sync(failures)
        if retry_after > 0:
            raise LoginSlowedDown(retry_after)
        step = self._matching_step(found.totp_secret, code, now)
        if step is None or not self._use_step(found.agent_id, step):
            self.signin.record_failure_sync(failures)
            self._count_code_failure(digest)
            raise CodeRefused()
        with self.db.transaction() as conn:
            conn.execute(
                update(agent_session_t)
                .where(agent_session_t.c.token_hash == digest)
                .values(revoked_at=now)
            )
        return self._open(_agent(found), verified=True)

    @staticmethod
    def _matching_step(secret: str, code: object, now: datetime) -> int | None:
        """The TOTP time step whose code `code` is (the current one, or one either side)."""
        if not isinstance(code, str):
            return None
        code = code.strip().replace(" ", "")
        if not code.isdigit() or len(code) != pyotp.TOTP(secret).digits:
            return None
        totp = pyotp.TOTP(secret)
        current = totp.timecode(now)
        for step in range(current - TOTP_DRIFT_STEPS, current + TOTP_DRIFT_STEPS + 1):
            if hmac.compare_digest(totp.generate_otp(step), code):
                return step
        return None

    def _use_step(self, agent_id: uuid.UUID, step: int) -> bool:
        """Record `step` as used, if no later or equal one was: a code works once."""
        with self.db.transaction() as conn:
            done = conn.execute(
                update(agent_t)
                .where(
                    agent_t.c.id == agent_id,
                    or_(agent_t.c.totp_last_step.is_(None), agent_t.c.totp_last_step < step),
                )
                .values(totp_last_step=step)
            )
            return done.rowcount == 1

    def _count_code_failure(self, digest: str) -> None:
        now = self.clock.now()
        with self.db.transaction() as conn:
            conn.execute(
                update(agent_session_t)
                .where(agent_session_t.c.token_hash == digest)
                .values(code_failures=agent_session_t.c.code_failures + 1)
            )
            # Past the allowance the half-open session ends: sign in again.
            conn.execute(
                update(agent_session_t)
                .where(
                    agent_session_t.c.token_hash == digest,
                    agent_session_t.c.code_failures >= self.settings.support_max_code_failures,
                )
                .values(revoked_at=now)
            )

    # -- sessions ---------------------------------------------------------------------------

    def pending_sync(self, token: object) -> Agent | None:
        """The agent a half-open session (waiting for the code) belongs to, or None."""
        if not plausible_token(token):
            return None
        assert isinstance(token, str)
        with self.db.transaction(write=False) as conn:
            row = conn.execute(
                select(agent_t)
                .join(agent_session_t, agent_t.c.id == agent_session_t.c.agent_id)
                .where(
                    agent_session_t.c.token_hash == token_hash(token),
                    agent_session_t.c.verified.is_(False),
                    agent_session_t.c.revoked_at.is_(None),
                    agent_session_t.c.expires_at >= self.clock.now(),
                    agent_t.c.disabled_at.is_(None),
                )
            ).first()
        return _agent(row) if row else None

    def session_sync(self, token: object) -> Agent | None:
        """The agent of a live session, its idle clock restarted; None if the session is
        unknown, half-open, revoked, past its lifetime or idle too long."""
        if not plausible_token(token):
            return None
        assert isinstance(token, str)
        digest = token_hash(token)
        now = self.clock.now()
        idle = timedelta(minutes=self.settings.support_session_idle_minutes)
        with self.db.transaction() as conn:
            row = conn.execute(
                select(agent_session_t.c.last_seen_at, agent_t)
                .join(agent_t, agent_t.c.id == agent_session_t.c.agent_id)
                .where(
                    agent_session_t.c.token_hash == digest,
                    agent_session_t.c.verified.is_(True),
                    agent_session_t.c.revoked_at.is_(None),
                    agent_session_t.c.expires_at >= now,
                    agent_t.c.disabled_at.is_(None),
                )
            ).first()
            if row is None or as_utc(row.last_seen_at) + idle < now:
                return None
            conn.execute(
                update(agent_session_t)
                .where(agent_session_t.c.token_hash == digest)
                .values(last_seen_at=now)
            )
        return _agent(row)

    async def session(self, token: object) -> Agent | None:
        return await self.db.run(self.session_sync, token)

    def sign_out_sync(self, token: object) -> None:
        """End the session (half-open or not); nothing happens for an unknown token."""
        if not plausible_token(token):
            return
        assert isinstance(token, str)
        with self.db.transaction() as conn:
            conn.execute(
                update(agent_session_t)
                .where(
                    agent_session_t.c.token_hash == token_hash(token),
                    agent_session_t.c.revoked_at.is_(None),
                )
                .values(revoked_at=self.clock.now())
            )


class _Row:
    """A dict's values as attributes (an inserted row read back without a query)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
