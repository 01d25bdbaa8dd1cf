"""Tables of support: API keys (stored as SHA-256 digests, never the key), the audit log, and
the console's agents and their sessions (a session token kept as its SHA-256 digest)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, text
from sqlmodel import Field, SQLModel


class SupportKey(SQLModel, table=True):
    """An API key for support agents, with its role; only the key's hash is kept.

    A name is unique among live keys: once its key is revoked, the name can be given
    to a new one (the audit log, which records names, keeps both histories).
    """

    __tablename__ = "support_key"
    __table_args__ = (
        Index(
            "uq_support_key_live_name",
            "name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=100)
    role: str = Field(max_length=16)
    key_hash: str = Field(max_length=64, unique=True, index=True)
    created_at: datetime
    revoked_at: datetime | None = Field(default=None)


class AuditEntry(SQLModel, table=True):
    """One support query or action, with the key's name."""

    __tablename__ = "support_audit"
    __table_args__ = (
        Index("ix_support_audit_at", "at"),
        # The console's audit page filters by who and by attempt, newest first.
        Index("ix_support_audit_key_name_at", "key_name", "at"),
        Index("ix_support_audit_target_at", "target", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    key_name: str = Field(max_length=100)
    action: str = Field(max_length=64)
    target: str | None = Field(default=None, max_length=200)
    at: datetime
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class SupportAgent(SQLModel, table=True):
    """A person who works in the support console: an Argon2 password, a role, and the seed
    of a TOTP second factor (required for `write`, shown once when the agent is made)."""

    __tablename__ = "support_agent"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    email: str = Field(max_length=320)
    # NFKC + case-folded in Python, as the accounts' addresses are.
    email_normalized: str = Field(max_length=320, unique=True, index=True)
    name: str = Field(max_length=200)
    role: str = Field(max_length=16)
    password_hash: str = Field(max_length=255)
    totp_secret: str | None = Field(default=None, max_length=64)
    # The last TOTP time step accepted: a code is never accepted twice.
    totp_last_step: int | None = Field(default=None)
    # IANA name the console shows this agent's times in.
    time_zone: str = Field(default="UTC", max_length=64)
    created_at: datetime
    disabled_at: datetime | None = Field(default=None)


class SupportAgentSession(SQLModel, table=True):
    """A console session; the cookie's token is kept as its SHA-256 digest.

    `verified` is False while the session waits for the agent's second factor: such a
    session opens nothing but the code form. A session ends at `expires_at`, when it was
    idle for longer than the idle timeout after `last_seen_at`, or when revoked.
    """

    __tablename__ = "support_agent_session"

    token_hash: str = Field(primary_key=True, max_length=64)
    agent_id: uuid.UUID = Field(index=True)
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    verified: bool = Field(default=False)
    code_failures: int = Field(default=0)
    revoked_at: datetime | None = Field(default=None)
