"""Tables of support: API keys (stored as SHA-256 digests, never the key) and the audit log."""

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
    __table_args__ = (Index("ix_support_audit_at", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    key_name: str = Field(max_length=100)
    action: str = Field(max_length=64)
    target: str | None = Field(default=None, max_length=200)
    at: datetime
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
