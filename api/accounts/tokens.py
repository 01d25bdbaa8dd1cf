"""Link tokens: 256 random bits, stored only as a SHA-256 digest.

The token travels in the link; the database keeps `token_hash(token)`, so a
leaked table opens no account. Lookups go by digest (an index), and the
digest comparison that decides is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_BYTES = 32  # 256 bits
# token_urlsafe(32) is 43 characters; anything far longer is not ours.
MAX_TOKEN_CHARS = 128


def new_token() -> str:
    """A fresh URL-safe token carrying 256 bits from `secrets`."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """The hex SHA-256 digest stored in place of the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    """Whether `token` hashes to `stored_hash`, compared in constant time."""
    return hmac.compare_digest(token_hash(token), stored_hash)


def plausible_token(value: object) -> bool:
    """Cheap shape check before any lookup: a short string of URL-safe characters."""
    return (
        isinstance(value, str)
        and 16 <= len(value) <= MAX_TOKEN_CHARS
        and all(c.isascii() and (c.isalnum() or c in "-_") for c in value)
    )
