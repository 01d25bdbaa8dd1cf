"""Opaque keyset cursors for support's lists: the last item's time and id, encoded."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime

from api.errors import InvalidInput
from engine.clock import as_utc

NOT_OURS = "the cursor is not one this service gave out"


def encode_cursor(at: datetime, key: uuid.UUID | int) -> str:
    """The cursor after an item: its time and id (an attempt's UUID or a row number)."""
    ident = key.hex if isinstance(key, uuid.UUID) else str(int(key))
    raw = json.dumps([as_utc(at).isoformat(), ident], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _parts(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        at, ident = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        return as_utc(datetime.fromisoformat(at)), str(ident)
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        raise InvalidInput("cursor", NOT_OURS) from None


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, attempt id) inside a cursor of the attempt list, or `InvalidInput`."""
    at, ident = _parts(cursor)
    try:
        return at, uuid.UUID(hex=ident)
    except ValueError:
        raise InvalidInput("cursor", NOT_OURS) from None


def decode_row_cursor(cursor: str) -> tuple[datetime, int]:
    """The (time, row number) inside a cursor of a list of numbered rows, or `InvalidInput`."""
    at, ident = _parts(cursor)
    if not ident.isdecimal():
        raise InvalidInput("cursor", NOT_OURS)
    return at, int(ident)
