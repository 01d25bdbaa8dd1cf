"""The engine's error tree.

`EngineError` is the base and is never raised itself. Each error carries the
fields a caller needs to explain it (attempt id, event, state, ...), so the
HTTP layer can map it to a response without parsing messages.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any


class EngineError(Exception):
    """Base of every error the engine raises; never raised directly."""

    code = "engine_error"

    def __init__(self, message: str, **fields: Any) -> None:
        # `message` is a text whose {placeholders} name fields: kept as given (`template`),
        # so whoever shows the error can put it in another language.
        self.template = message
        self.fields = fields
        self.message = message.format(**fields) if fields else message
        super().__init__(self.message)


class UnknownFlow(EngineError):
    """A flow name that no registered flow carries."""

    code = "unknown_flow"

    def __init__(self, flow: str) -> None:
        super().__init__("unknown flow {flow!r}", flow=flow)
        self.flow = flow


class UnknownEvent(EngineError):
    """An event name the attempt's flow does not define."""

    code = "unknown_event"

    def __init__(self, flow: str, event: str) -> None:
        super().__init__("flow {flow!r} has no event {event!r}", flow=flow, event=event)
        self.flow = flow
        self.event = event


class InvalidAttemptId(EngineError):
    """A string that is not a well-formed attempt id."""

    code = "invalid_attempt_id"

    def __init__(self, value: str) -> None:
        super().__init__("malformed attempt id", value=value[:64])


class NotFound(EngineError):
    """No attempt has this id."""

    code = "not_found"

    def __init__(self, attempt_id: uuid.UUID) -> None:
        super().__init__("attempt {attempt_id} not found", attempt_id=str(attempt_id))
        self.attempt_id = attempt_id


class StoredStateInvalid(EngineError):
    """A stored attempt names a state its flow does not have (corrupt or stale row)."""

    code = "stored_state_invalid"

    def __init__(self, attempt_id: uuid.UUID, flow: str, state: str) -> None:
        super().__init__(
            "attempt {attempt_id} is in state {state!r}, which flow {flow!r} does not define",
            attempt_id=str(attempt_id),
            flow=flow,
            state=state,
        )
        self.attempt_id = attempt_id
        self.state = state


class EventRefused(EngineError):
    """The event is not allowed now (wrong state, failed guard); recorded, nothing else changed."""

    code = "event_refused"

    def __init__(
        self,
        attempt_id: uuid.UUID,
        event: str,
        state: str,
        reason: str,
        expired_at: datetime | None = None,
    ) -> None:
        super().__init__(
            "event {event!r} refused in state {state!r}: {reason}",
            attempt_id=str(attempt_id),
            event=event,
            state=state,
            reason=reason,
        )
        self.attempt_id = attempt_id
        self.event = event
        self.state = state
        self.reason = reason
        self.expired_at = expired_at


class ConflictError(EngineError):
    """Another writer changed the attempt first; this fire wrote nothing."""

    code = "conflict"

    def __init__(self, attempt_id: uuid.UUID, event: str) -> None:
        super().__init__(
            "attempt {attempt_id} was changed concurrently; {event!r} not applied",
            attempt_id=str(attempt_id),
            event=event,
        )
        self.attempt_id = attempt_id
        self.event = event


class GraphvizMissing(EngineError):
    """Rendering SVG or PNG needs Graphviz's `dot` program, and it is not on PATH."""

    code = "graphviz_missing"

    def __init__(self, program: str = "dot") -> None:
        super().__init__(
            "Graphviz's {program!r} program was not found on PATH; install Graphviz "
            "(Debian package 'graphviz') to render SVG or PNG, or ask for DOT or Mermaid",
            program=program,
        )
        self.program = program
