"""A generic persisted state-machine engine.

Flows (python-statemachine classes described by a `FlowSpec`) are registered
with an `Engine`, which stores each run of a flow as an attempt row plus an
append-only event log, applies per-state deadlines, and keeps concurrent
writers honest with optimistic locking. Nothing here knows what a flow is for.
"""

from engine.clock import Clock, SystemClock
from engine.core import Engine, Fired, NewAttempt, Transaction
from engine.db import Database
from engine.errors import (
    ConflictError,
    EngineError,
    EventRefused,
    GraphvizMissing,
    InvalidAttemptId,
    NotFound,
    StoredStateInvalid,
    UnknownEvent,
    UnknownFlow,
)
from engine.flow import Deadline, Exclusive, FlowRegistry, FlowSpec, Job, OutboxHandler
from engine.models import Attempt, AttemptEvent, Outbox
from engine.queries import FunnelStep, Page
from engine.records import AttemptRecord, EventRecord, parse_attempt_id

__all__ = [
    "Attempt",
    "AttemptEvent",
    "AttemptRecord",
    "Clock",
    "ConflictError",
    "Database",
    "Deadline",
    "Engine",
    "EngineError",
    "EventRecord",
    "EventRefused",
    "Exclusive",
    "Fired",
    "FlowRegistry",
    "FlowSpec",
    "FunnelStep",
    "GraphvizMissing",
    "InvalidAttemptId",
    "Job",
    "NewAttempt",
    "NotFound",
    "Outbox",
    "OutboxHandler",
    "Page",
    "StoredStateInvalid",
    "SystemClock",
    "Transaction",
    "UnknownEvent",
    "UnknownFlow",
    "parse_attempt_id",
]
