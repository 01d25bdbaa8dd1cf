"""The short reference of an attempt that a person reads out to support, and back.

A reference is 8 characters of RFC 4648 base32 (A-Z and 2-7) shown as
`ABCD-EFGH`. Read out on the phone or copied from a screen it comes back in
any case, with spaces, dots or hyphens anywhere, and with the digits people
put for the letters they look like: base32 has no 0, 1 or 8, so those can
only be O, I and B (`normalise_reference`).
"""

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


# What people type between the characters of a reference, and for the letters they mean.
SEPARATORS = str.maketrans("", "", " -._\t\u00a0\u2010\u2011\u2012\u2013\u2014")
LOOK_ALIKES = str.maketrans({"0": "O", "1": "I", "8": "B"})
REFERENCE_CHARS = 8


def normalise_reference(text: str) -> str | None:
    """`text` as the reference it stands for (`ABCD-EFGH`), or None if it cannot be one:
    case, spaces, hyphens and the look-alike digits 0, 1 and 8 forgiven."""
    code = text.strip().translate(SEPARATORS).upper().translate(LOOK_ALIKES)
    if len(code) != REFERENCE_CHARS:
        return None
    try:
        base64.b32decode(code)
    except (ValueError, binascii.Error):
        return None
    return f"{code[:4]}-{code[4:]}"


def reference_bounds(reference: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The range of attempt ids that carry `reference` (read as `normalise_reference`
    does), or None if it cannot be a reference."""
    normal = normalise_reference(reference)
    if normal is None:
        return None
    prefix = base64.b32decode(normal.replace("-", ""))
    low = uuid.UUID(bytes=prefix + b"\x00" * 11)
    high = uuid.UUID(bytes=prefix + b"\xff" * 11)
    return low, high
