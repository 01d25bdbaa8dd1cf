"""Support API keys: random 256-bit strings shown once, stored as SHA-256 digests.

Each key has a name (unique among live keys: a revoked key's name can be
reused) and a role, `read`, `write` or `admin` (the accounts admin API and the
webhooks, for the applications that use the service; it may do what `write`
may); `rank` orders them for the routes' role checks.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from api.errors import InvalidInput, RecoveryError
from api.support.models import SupportKey
from engine import Database
from engine.clock import Clock, as_utc

key_t = SupportKey.__table__

ROLES = ("read", "write", "admin")
KEY_PREFIX = "rsk_"
MAX_KEY_CHARS = 200


class KeyNameTaken(RecoveryError):
    """Another support key already has this name."""

    code = "key_name_taken"

    def __init__(self, name: str) -> None:
        super().__init__("a live support key named {name!r} already exists", params={"name": name})


class KeyNotFound(RecoveryError):
    """No live support key has this name."""

    code = "key_not_found"

    def __init__(self, name: str) -> None:
        super().__init__("no live support key is named {name!r}", params={"name": name})


def key_digest(key: str) -> str:
    """The SHA-256 hex digest stored in place of a support key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def rank(role: str) -> int:
    """How much a role may do: `read` < `write` < `admin`; -1 for no role of ours."""
    return ROLES.index(role) if role in ROLES else -1


class Keys:
    """Creating, listing, revoking and checking support keys."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def create_sync(self, name: str, role: str) -> str:
        """Create a key and return it; it is shown this once, only its digest is kept."""
        name = name.strip() if isinstance(name, str) else ""
        if not name or len(name) > 100 or any(not c.isprintable() for c in name):
            raise InvalidInput("name", "name must be 1 to 100 printable characters")
        if name.startswith("("):
            raise InvalidInput("name", "name must not start with '('")
        if role not in ROLES:
            raise InvalidInput("role", "role must be one of: {choices}", choices=", ".join(ROLES))
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    insert(key_t).values(
                        id=uuid.uuid4(),
                        name=name,
                        role=role,
                        key_hash=key_digest(key),
                        created_at=self.clock.now(),
                    )
                )
        except IntegrityError:
            raise KeyNameTaken(name) from None
        return key

    def list_sync(self) -> list[dict[str, Any]]:
        """Every key's name, role, creation and revocation (never the key or its digest),
        live ones first, then by name and age."""
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(
                select(key_t.c.name, key_t.c.role, key_t.c.created_at, key_t.c.revoked_at)
            ).all()
        keys = [
            {
                "name": r.name,
                "role": r.role,
                "created_at": as_utc(r.created_at),
                "revoked_at": as_utc(r.revoked_at) if r.revoked_at else None,
            }
            for r in rows
        ]
        return sorted(keys, key=lambda k: (k["revoked_at"] is not None, k["name"], k["created_at"]))

    def revoke_sync(self, name: str) -> None:
        """Revoke the live key called `name` (it stops working at once); `KeyNotFound` if
        there is none. The name may then be given to a new key."""
        with self.db.transaction() as conn:
            done = conn.execute(
                update(key_t)
                .where(key_t.c.name == name.strip(), key_t.c.revoked_at.is_(None))
                .values(revoked_at=self.clock.now())
            )
            if done.rowcount != 1:
                raise KeyNotFound(name)

    def authenticate_sync(self, key: object) -> tuple[str, str] | None:
        """The (name, role) of a live key, or None."""
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
            return None
        with self.db.transaction(write=False) as conn:
            row = conn.execute(
                select(key_t.c.name, key_t.c.role).where(
                    key_t.c.key_hash == key_digest(key), key_t.c.revoked_at.is_(None)
                )
            ).first()
        return (row.name, row.role) if row else None
