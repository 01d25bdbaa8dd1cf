"""A message's bytes on the wire, written without the stdlib's generator where that is safe.

`message_bytes(message, policy)` gives exactly the bytes
`email.generator.BytesGenerator(out, policy=policy).flatten(message)` writes
(what `aiosmtplib` and `EmailMessage.as_bytes` send), for a message tree of
text and multipart parts: each header as the policy folds it, a blank line,
then the body with its line endings made the policy's, and multipart bodies
between their boundaries. The generator gets the same result through a
generator, a policy clone and a buffer per part, which cost the dispatcher
about a tenth of its time.

Anything else the generator handles its own way (a policy that mangles From
lines or re-encodes 8-bit bodies as 7-bit, a preamble or an epilogue, a
multipart without its boundary, an attached message, a part that writes its
own headers) goes to the generator itself, so the answer is always the
generator's (`tests/flows/test_wire.py` compares them).
"""

from __future__ import annotations

import io
import re
from email.generator import BytesGenerator
from email.message import Message
from email.policy import Policy

# The line endings the generator rewrites (`email.generator.NLCRE`).
_LINE_ENDING = re.compile(r"\r\n|\r|\n")


class _Unusual(Exception):
    """A part this module leaves to the generator."""


def message_bytes(message: Message, policy: Policy) -> bytes:
    """`message` as `BytesGenerator` with `policy` writes it, byte for byte."""
    if policy.mangle_from_ or policy.cte_type == "7bit":
        return _generated(message, policy)
    out: list[bytes] = []
    try:
        _write(message, policy, out)
    except _Unusual:
        return _generated(message, policy)
    return b"".join(out)


def _generated(message: Message, policy: Policy) -> bytes:
    out = io.BytesIO()
    BytesGenerator(out, policy=policy).flatten(message)
    return out.getvalue()


def _write(part: Message, policy: Policy, out: list[bytes]) -> None:
    if hasattr(part, "_write_headers"):
        raise _Unusual
    newline = policy.linesep
    for name, value in part.raw_items():
        out.append(policy.fold_binary(name, value))
    out.append(newline.encode("ascii"))
    # The payload as stored, as the generator reads it (`get_payload()` would decode
    # an 8-bit body held with surrogates, and look its charset up to do so).
    payload = part._payload  # type: ignore[attr-defined]
    maintype = part.get_content_maintype()
    if maintype == "multipart":
        boundary = part.get_boundary()
        if not isinstance(payload, list) or boundary is None:
            raise _Unusual
        if part.preamble is not None or part.epilogue is not None:
            raise _Unusual
        out.append(f"--{boundary}{newline}".encode("ascii"))
        between = f"{newline}--{boundary}{newline}".encode("ascii")
        for index, subpart in enumerate(payload):
            if index:
                out.append(between)
            _write(subpart, policy, out)
        out.append(f"{newline}--{boundary}--{newline}".encode("ascii"))
    elif maintype == "message" or not isinstance(payload, str | None):
        raise _Unusual
    elif payload:
        out.append(_with_line_endings(payload, newline).encode("ascii", "surrogateescape"))


def _with_line_endings(text: str, newline: str) -> str:
    """Every line ending in `text` made `newline`, as the generator writes lines."""
    if "\r" not in text:
        return text if newline == "\n" else text.replace("\n", newline)
    return _LINE_ENDING.sub(lambda _: newline, text)
