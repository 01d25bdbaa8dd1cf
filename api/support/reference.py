"""The short reference of an attempt that a person reads out to support, and back."""

from __future__ import annotations

import base64
import binascii
import uuid


def support_reference(attempt_id: uuid.UUID) -> str:
    """A short code a person can read out to support: 10 characters from the attempt id.

    The same for every attempt whatever its account; support searches by it
    (`reference_bounds` turns it back into a range of ids).
    """
    code = base64.b32encode(attempt_id.bytes[:5]).decode("ascii")  # 40 bits, 8 characters
    return f"{code[:4]}-{code[4:]}"


def reference_bounds(reference: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The range of attempt ids that carry `reference`, or None if it is malformed."""
    code = reference.strip().upper().replace("-", "").replace(" ", "")
    if len(code) != 8:
        return None
    try:
        prefix = base64.b32decode(code)
    except (ValueError, binascii.Error):
        return None
    low = uuid.UUID(bytes=prefix + b"\x00" * 11)
    high = uuid.UUID(bytes=prefix + b"\xff" * 11)
    return low, high
